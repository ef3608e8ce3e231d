"""Scaling group request and response models."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints, field_validator, model_validator

from api.fields import STRICT, Name, ShortName
from api.scaling import decision
from api.servers.schemas import Ref, SshPublicKey, UserData

GroupName = Annotated[
    str, StringConstraints(min_length=1, max_length=50, pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")]
"""A scaling group's name: lower-case letters, digits and inner dashes (members are named
``<group>-<n>``, a valid host name)."""

Size = Annotated[int, Field(ge=0, le=1000)]
Seconds = Annotated[int, Field(ge=0, le=86400)]
ScaleInPolicy = Literal["oldest_first", "newest_first"]


class TargetTrackingIn(BaseModel):
    """Keep the average ``metric`` of the ready members near ``target`` (docs/scaling.md)."""

    model_config = STRICT
    metric: Literal["cpu_util"] = "cpu_util"
    target: float = Field(gt=0, le=100, description="e.g. 50 (% CPU)")
    tolerance: float = Field(default=decision.DEFAULT_TOLERANCE, ge=0, lt=1)
    scale_out_cooldown_s: Seconds = decision.DEFAULT_SCALE_OUT_COOLDOWN_S
    scale_in_stabilization_s: Seconds = decision.DEFAULT_SCALE_IN_STABILIZATION_S
    warmup_s: Seconds = decision.DEFAULT_WARMUP_S
    window_s: Annotated[int, Field(ge=1, le=3600)] = decision.DEFAULT_METRIC_WINDOW_S


class ScheduledActionIn(BaseModel):
    """At every fire time of ``cron`` (five fields, UTC) set min, max and/or desired."""

    model_config = STRICT
    name: ShortName
    cron: Annotated[str, StringConstraints(
        min_length=9, max_length=100, pattern=r"^[0-9A-Za-z*/,-]+( [0-9A-Za-z*/,-]+){4}$")]
    min_size: Size | None = None
    max_size: Size | None = None
    desired: Size | None = None

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        if not decision.valid_cron(value):
            raise ValueError("not a five-field cron expression (minute hour day month weekday)")
        return value

    @model_validator(mode="after")
    def _sizes(self) -> ScheduledActionIn:
        if self.min_size is None and self.max_size is None and self.desired is None:
            raise ValueError("set at least one of min_size, max_size, desired")
        if (self.min_size is not None and self.max_size is not None
                and self.min_size > self.max_size):
            raise ValueError("min_size exceeds max_size")
        return self


class LaunchTemplateIn(BaseModel):
    """What every member is created from (like a server create)."""

    model_config = STRICT
    flavor: Ref
    image: Ref
    user_data: UserData | None = None
    key_data: SshPublicKey | None = None
    key_name: Name | None = Field(default=None, description="one of the caller's key pairs")
    availability_zone: ShortName | None = None
    anti_affinity: bool = Field(default=True, description="spread members over hosts "
                                "(a soft anti-affinity server group)")


class ScalingGroupCreate(BaseModel):
    """A new scaling group; ``desired`` defaults to ``min_size``."""

    model_config = STRICT
    name: GroupName
    launch: LaunchTemplateIn
    min_size: Size = 0
    max_size: Size
    desired: Size | None = None
    scale_in_policy: ScaleInPolicy = "oldest_first"
    policy: TargetTrackingIn | None = None
    scheduled_actions: Annotated[list[ScheduledActionIn], Field(max_length=20)] = []


class ScalingGroupUpdate(BaseModel):
    """Fields to change; ``policy: null`` removes the target tracking policy."""

    model_config = STRICT
    min_size: Size | None = None
    max_size: Size | None = None
    desired: Size | None = None
    scale_in_policy: ScaleInPolicy | None = None
    policy: TargetTrackingIn | None = None
    scheduled_actions: Annotated[list[ScheduledActionIn], Field(max_length=20)] | None = None


class MemberUpdate(BaseModel):
    """Scale-in protection of one member."""

    model_config = STRICT
    protected: bool


class LaunchTemplateOut(BaseModel):
    """The launch template (the key and user data are not echoed)."""

    flavor_id: str
    image_id: str
    availability_zone: str | None
    has_user_data: bool
    has_key: bool
    server_group_id: str | None


class MemberOut(BaseModel):
    """A live member: its server, sequence number and protection."""

    server_id: str
    name: str
    seq: int
    status: str
    protected: bool
    created_at: datetime


class ScalingGroupOut(BaseModel):
    """A scaling group with its live members."""

    id: str
    name: str
    project_id: str
    status: str
    launch: LaunchTemplateOut
    min_size: int
    max_size: int
    desired: int
    scale_in_policy: str
    policy: dict[str, Any] | None
    scheduled_actions: list[dict[str, Any]]
    members: list[MemberOut]
    retry_at: datetime | None
    created_at: datetime
    updated_at: datetime


class ScalingGroupList(BaseModel):
    """The project's scaling groups."""

    scaling_groups: list[ScalingGroupOut]


class ActivityOut(BaseModel):
    """One decision of the reconciler: why, what and how it ended."""

    id: str
    kind: str
    result: str
    rule: str
    cause: str
    from_desired: int
    to_desired: int
    created: list[Any]
    deleted: list[Any]
    details: dict[str, Any]
    error: dict[str, Any] | None
    created_at: datetime


class ActivityList(BaseModel):
    """A group's activities, newest first."""

    activities: list[ActivityOut]
