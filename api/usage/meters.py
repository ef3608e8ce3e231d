"""The meter registry: every billed quantity declared once, as data.

A meter counts, per second a server spends in one of its ``accrues_while`` states, its
``source`` field of the ledger snapshot (or 1). Window totals (``rules``), the SQL sums
(``repository.segment_sums``), the cost (``reports``), the JSON and CSV fields, the rate-card
fields and their validation are all generated from ``METERS``; nothing else lists meters.

States: ``exists`` (created, not deleted), ``running`` (observed running) and ``paused``
(observed paused). The minimum-per-start extra of a finished run counts as ``running``
seconds, so it reaches exactly the meters that accrue while running.

Adding a meter: one ``Meter`` below, plus a migration that gives the rate cards already stored
a price for its ``price_key`` (see docs/billing.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

State = Literal["exists", "running", "paused"]
STATES: tuple[State, ...] = ("exists", "running", "paused")
Source = Literal["vcpus", "ram_mb", "disk_gb"]


@dataclass(frozen=True)
class Meter:
    """One billed quantity.

    ``name``: short id. ``unit``: what one counted second is (for people). ``accrues_while``:
    the states it counts in. ``source``: the snapshot field multiplied per second (None: 1).
    ``seconds_field`` / ``hours_field``: the report's exact integer and rounded hour fields
    (``hours_divisor`` turns e.g. MiB-seconds into GiB-hours). ``price_key``: the rate card's
    price per hour of ``source / hours_divisor`` (None: not priced). ``flavor_covered``: a
    flavor price (``flavor_hour``) replaces this meter's price while running.
    """

    name: str
    unit: str
    accrues_while: frozenset[State]
    source: Source | None
    seconds_field: str
    hours_field: str
    price_key: str | None = None
    hours_divisor: int = 1
    flavor_covered: bool = False


METERS: tuple[Meter, ...] = (
    Meter("server", "server-second", frozenset({"exists"}), None,
          "server_seconds", "server_hours"),
    # A flavor price (rate card ``flavor_hour``) is charged per second of this meter.
    Meter("running", "running server-second", frozenset({"running"}), None,
          "running_seconds", "running_hours"),
    Meter("vcpu", "vCPU-second", frozenset({"running"}), "vcpus",
          "vcpu_seconds", "vcpu_hours", "vcpu_hour", flavor_covered=True),
    # Paused guests keep their memory allocated: RAM accrues, vCPU does not.
    Meter("ram", "MiB-second", frozenset({"running", "paused"}), "ram_mb",
          "ram_mib_seconds", "ram_gib_hours", "ram_gib_hour", hours_divisor=1024,
          flavor_covered=True),
    Meter("disk", "GiB-second", frozenset({"exists"}), "disk_gb",
          "disk_gib_seconds", "disk_gib_hours", "disk_gib_hour"),
)
# The meter a flavor price is charged on (per running second of a server of that flavor).
FLAVOR_METER = "running"

SECONDS_FIELDS: tuple[str, ...] = tuple(m.seconds_field for m in METERS)
PRICE_KEYS: tuple[str, ...] = tuple(m.price_key for m in METERS if m.price_key)
# Every (meter, state) pair counted: the columns the SQL sums and the cost prices.
METER_STATES: tuple[tuple[Meter, State], ...] = tuple(
    (m, s) for m in METERS for s in STATES if s in m.accrues_while
)


def by_name(name: str) -> Meter:
    """The registered meter called ``name``; raises KeyError."""
    for m in METERS:
        if m.name == name:
            return m
    raise KeyError(name)
