"""Rate cards: effective-dated prices; a card in force is never changed."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from api.errors import Conflict, InvalidInput, NotFound
from api.models import Flavor, RateCard
from api.usage import repository
from api.usage.meters import PRICE_KEYS
from api.usage.rules import epoch

_CURRENCY = re.compile(r"^[A-Z]{3}$")


def create_rate_card(
    session: Session,
    *,
    valid_from: datetime,
    currency: str,
    flavor_hour: dict[str, Decimal] | None = None,
    created_by: str | None,
    now: datetime,
    allow_past: bool = False,
    **prices: Decimal,
) -> RateCard:
    """Add a card in force from ``valid_from``.

    ``prices``: one hourly price per priced meter, keyed by the meter's ``price_key``
    (``vcpu_hour``, ``ram_gib_hour``, ``disk_gib_hour``, see ``api.usage.meters``).
    ``flavor_hour`` maps flavor ids or names to an hourly price that replaces the prices of the
    flavor-covered meters (vCPU, RAM) while servers of that flavor run. Past ``valid_from``
    would rewrite history, so it is refused unless ``allow_past`` (data imports and tests), and
    never inside a closed period.
    Raises InvalidInput (invalid_rate_card, valid_from_in_past, unknown_flavor) and Conflict
    (rate_card_exists, currency_mismatch, period_closed).
    """
    if valid_from.tzinfo is None:
        raise InvalidInput("valid_from must carry a time zone", code="invalid_rate_card")
    if not _CURRENCY.match(currency):
        raise InvalidInput("currency must be a 3-letter ISO 4217 code", code="invalid_rate_card")
    if set(prices) != set(PRICE_KEYS):
        raise InvalidInput(f"a rate card prices exactly {', '.join(PRICE_KEYS)}",
                           code="invalid_rate_card")
    values = [*prices.values(), *(flavor_hour or {}).values()]
    if any(not p.is_finite() or p < 0 for p in values):
        raise InvalidInput("prices must be finite and not negative", code="invalid_rate_card")
    if valid_from < now and not allow_past:
        raise InvalidInput("valid_from is in the past; a price change never rewrites history",
                           code="valid_from_in_past")
    closed_end = repository.latest_closed_end(session)
    if closed_end is not None and epoch(valid_from) < closed_end:
        raise Conflict("valid_from falls inside a closed period", code="period_closed")
    cards = repository.rate_cards(session)
    if any(c.valid_from == valid_from for c in cards):
        raise Conflict("a rate card already starts at that time", code="rate_card_exists")
    if cards and cards[0].currency != currency:
        raise Conflict(f"every rate card uses {cards[0].currency}", code="currency_mismatch")
    resolved: dict[str, str] = {}
    for key, price in (flavor_hour or {}).items():
        flavor = session.scalar(select(Flavor).where(or_(Flavor.id == key, Flavor.name == key)))
        if flavor is None:
            raise InvalidInput(f"unknown flavor {key!r}", code="unknown_flavor")
        resolved[flavor.id] = str(price)
    card = RateCard(valid_from=valid_from, currency=currency,
                    prices={k: str(prices[k]) for k in PRICE_KEYS}, flavor_hour=resolved,
                    created_by=created_by)
    session.add(card)
    session.flush()
    return card


def get_rate_card(session: Session, card_id: str) -> RateCard:
    """One card; raises NotFound."""
    card = session.get(RateCard, card_id)
    if card is None:
        raise NotFound("no such rate card", code="rate_card_not_found")
    return card


def delete_rate_card(session: Session, card_id: str, now: datetime) -> None:
    """Withdraw a card not yet in force; raises NotFound, Conflict (rate_card_in_force)."""
    card = get_rate_card(session, card_id)
    if card.valid_from <= now:
        raise Conflict("the card is (or was) in force; add a new card instead",
                       code="rate_card_in_force")
    session.delete(card)
    session.flush()


@dataclass(frozen=True)
class Prices:
    """A card's prices as decimals: per meter price key, and per flavor id."""

    currency: str
    hour: dict[str, Decimal]
    flavor_hour: dict[str, Decimal]


def prices_of(card: RateCard) -> Prices:
    """Decimal view of a card (a price key the card lacks costs 0)."""
    return Prices(card.currency,
                  {k: Decimal(str(card.prices.get(k, "0"))) for k in PRICE_KEYS},
                  {k: Decimal(str(v)) for k, v in card.flavor_hour.items()})


def segments(cards: list[RateCard], start: int, end: int) -> list[tuple[int, int, Prices | None]]:
    """Split [start, end) where the card in force changes; None where no card is in force."""
    out: list[tuple[int, int, Prices | None]] = []
    cuts = sorted((epoch(c.valid_from), c) for c in cards)
    current: Prices | None = None
    s = start
    for at, card in cuts:
        if at <= start:
            current = prices_of(card)
            continue
        if at >= end:
            break
        out.append((s, at, current))
        s, current = at, prices_of(card)
    out.append((s, end, current))
    return out
