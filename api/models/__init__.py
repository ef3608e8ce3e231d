"""SQLAlchemy models: the one owner of the schema (Alembic migrations mirror them)."""

from api.models.catalog import Flavor, FlavorAccess, Image
from api.models.compute import AgentObservation, Allocation, EnrollmentToken, Host, Inventory
from api.models.evacuations import Evacuation
from api.models.guest_metrics import GuestMetricCounters, GuestMetricRollup
from api.models.identity import (
    ApplicationCredential,
    LoginFailure,
    Project,
    RoleAssignment,
    SystemFlag,
    Token,
    User,
)
from api.models.keypairs import KeyPair
from api.models.mobility import Migration
from api.models.scaling import Lease, ScalingActivity, ScalingGroup, ScalingMember
from api.models.servers import Quota, Server, ServerEvent, ServerGroup
from api.models.usage import (
    ClosedPeriod,
    LedgerEntry,
    PeriodReport,
    RateCard,
    UsagePiece,
    UsageServer,
)

__all__ = [  # noqa: RUF022  (appended per domain, so branches merge cleanly)
    "AgentObservation",
    "Allocation",
    "ApplicationCredential",
    "EnrollmentToken",
    "Flavor",
    "FlavorAccess",
    "Host",
    "Image",
    "Inventory",
    "Project",
    "Quota",
    "RoleAssignment",
    "Server",
    "ServerEvent",
    "ServerGroup",
    "Token",
    "User",
    "ClosedPeriod",
    "LedgerEntry",
    "PeriodReport",
    "RateCard",
    "UsagePiece",
    "UsageServer",
    "KeyPair",
    "LoginFailure",
    "SystemFlag",
    "Migration",
    "Evacuation",
    "Lease",
    "ScalingActivity",
    "ScalingGroup",
    "ScalingMember",
    "GuestMetricCounters",
    "GuestMetricRollup",
]
