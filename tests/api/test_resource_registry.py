"""The resource-class registry is the one list: models, settings, quotas and the agent's
inventory schema follow it; weigher multipliers are validated when settings are built."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from api.agent.schemas import InventoryIn
from api.config import Settings
from api.models import Flavor, Server
from api.models.compute import RESOURCE_CLASSES
from api.models.servers import QUOTA_RESOURCES
from api.quotas.schemas import QuotaValues
from scheduler.resources import NAMES
from scheduler.resources import RESOURCE_CLASSES as REGISTRY


def test_every_table_and_schema_follows_the_registry() -> None:
    assert RESOURCE_CLASSES == NAMES == ("VCPU", "MEMORY_MB", "DISK_GB")
    # The inventory reports one amount per class, and the host's migration endpoint (no class).
    assert set(InventoryIn.model_fields) == set(NAMES) | {"migration"}
    defaults = Settings()
    for rc in REGISTRY:
        # The pool-wide ratio setting exists and defaults to the registry's ratio.
        assert getattr(defaults, rc.ratio_setting) == rc.default_allocation_ratio, rc.name
        # Servers hold, and flavors request, the amount in the registry's request field.
        assert rc.request_field in Server.__table__.columns, rc.name
        assert rc.request_field in Flavor.__table__.columns, rc.name
        assert rc.quota_key in QUOTA_RESOURCES and rc.quota_key in QuotaValues.model_fields
        assert hasattr(defaults, f"default_quota_{rc.quota_key}"), rc.name


# (case, settings fields, what the error must say)
BAD_SETTINGS = [
    ("a typo in a weigher name", {"scheduler_weight_multipliers": {"rma": 2.0}},
     "unknown weigher(s) rma"),
    ("no default and a weigher left out",
     {"scheduler_weight_multipliers": {"ram": 1.0, "cpu": 1.0, "soft_affinity": 1.0},
      "scheduler_default_weight_multiplier": None},
     "no multiplier for weigher(s) soft_anti_affinity"),
]


@pytest.mark.parametrize(("case", "fields", "message"), BAD_SETTINGS,
                         ids=[c[0] for c in BAD_SETTINGS])
def test_weigher_multipliers_are_validated_when_settings_are_built(
        case: str, fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings(**fields)  # type: ignore[arg-type]


def test_weigher_multipliers_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINICLOUD_SCHEDULER_WEIGHT_MULTIPLIERS", '{"ram": -1.0}')
    assert Settings().multipliers().as_dict() == {"ram": -1.0, "cpu": 1.0,
                                                  "soft_affinity": 1.0,
                                                  "soft_anti_affinity": 1.0}
    monkeypatch.setenv("MINICLOUD_SCHEDULER_WEIGHT_MULTIPLIERS", '{"spread": 1.0}')
    with pytest.raises(ValidationError, match=r"unknown weigher\(s\) spread"):
        Settings()
