"""Usage request and response models."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, Field

from api.fields import ID_PATTERN, STRICT, TEXT_PATTERN, TOKEN_PATTERN, ShortName

Price = Decimal
FlavorPrice = Annotated[Price, Field(ge=0, max_digits=30, decimal_places=12)]


class RateCardCreate(BaseModel):
    """Prices in force from ``valid_from`` (which must not be in the past)."""

    model_config = STRICT
    valid_from: datetime
    currency: str = Field(min_length=3, max_length=3)
    vcpu_hour: Price = Field(ge=0, max_digits=30, decimal_places=12)
    ram_gib_hour: Price = Field(ge=0, max_digits=30, decimal_places=12)
    disk_gib_hour: Price = Field(ge=0, max_digits=30, decimal_places=12)
    flavor_hour: dict[ShortName, FlavorPrice] = Field(default_factory=dict, max_length=1000)


class RateCardOut(BaseModel):
    """A rate card; prices are decimal strings."""

    id: str
    valid_from: datetime
    currency: str
    vcpu_hour: str
    ram_gib_hour: str
    disk_gib_hour: str
    flavor_hour: dict[str, str]
    created_at: datetime


class AdjustmentCreate(BaseModel):
    """A correction: a signed amount of money with a reason, in the current open period."""

    model_config = STRICT
    project_id: str = Field(min_length=1, max_length=36, pattern=ID_PATTERN)
    server_id: str | None = Field(default=None, min_length=1, max_length=36, pattern=ID_PATTERN)
    amount: Decimal = Field(max_digits=30, decimal_places=12)
    reason: str = Field(min_length=1, max_length=1024, pattern=TEXT_PATTERN)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200,
                                        pattern=TOKEN_PATTERN)


class LedgerEntryOut(BaseModel):
    """One ledger entry as stored."""

    seq: int
    kind: str
    project_id: str
    server_id: str | None
    flavor_id: str | None
    vcpus: int
    ram_mb: int
    disk_gb: int
    at: datetime
    reported_at: datetime | None
    clamped: bool
    source: str
    reason: str | None
    admin_id: str | None
    amount: str | None
    recorded_at: datetime


class PeriodOut(BaseModel):
    """A closed month."""

    period: str
    start: datetime
    end: datetime
    closed_at: datetime
    closed_by: str | None
