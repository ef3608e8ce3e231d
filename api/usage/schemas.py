"""Usage request and response models."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, Field, create_model

from api.fields import ID_PATTERN, STRICT, TEXT_PATTERN, TOKEN_PATTERN, ShortName
from api.usage.meters import PRICE_KEYS

Price = Decimal
FlavorPrice = Annotated[Price, Field(ge=0, max_digits=30, decimal_places=12)]


class RateCardFields(BaseModel):
    """Prices in force from ``valid_from`` (which must not be in the past).

    Plus one hourly price per priced meter (``vcpu_hour``, ``ram_gib_hour``, ``disk_gib_hour``:
    the price keys of ``api.usage.meters``), added from the registry below.
    """

    model_config = STRICT
    valid_from: datetime
    currency: str = Field(min_length=3, max_length=3)
    flavor_hour: dict[ShortName, FlavorPrice] = Field(default_factory=dict, max_length=1000)


class RateCardView(BaseModel):
    """A rate card; prices are decimal strings (one per meter price key, added below)."""

    id: str
    valid_from: datetime
    currency: str


# The price fields come from the meter registry, so a new meter needs no schema change. mypy
# sees the base classes (a model built at run time is not a static type); FastAPI and the
# OpenAPI document see the generated ones.
if TYPE_CHECKING:
    RateCardCreate = RateCardFields
    RateCardOut = RateCardView
else:
    RateCardCreate = create_model(
        "RateCardCreate", __base__=RateCardFields, __doc__=RateCardFields.__doc__,
        **{k: (Price, Field(ge=0, max_digits=30, decimal_places=12)) for k in PRICE_KEYS},
    )
    RateCardOut = create_model(
        "RateCardOut", __base__=RateCardView, __doc__=RateCardView.__doc__,
        **{k: (str, ...) for k in PRICE_KEYS},
        flavor_hour=(dict[str, str], ...), created_at=(datetime, ...),
    )


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
