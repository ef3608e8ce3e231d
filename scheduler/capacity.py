"""The fit rule, written once.

    used + requested <= (total - reserved) * allocation_ratio
    AND requested >= min_unit AND requested <= max_unit

``fit_rule`` builds it from whatever operands it is given: plain numbers or SQLAlchemy column
expressions (the claim's re-check, ``api.scheduler.claim``). Python's operators build the same
tree on both, so the two cannot drift apart. The in-memory resources filter uses
``fit_bounds``, the same rule solved for a whole ``requested`` once per host and class, so a
decision over thousands of hosts is two comparisons per class. Property tests check that the
three agree (tests/scheduler/test_capacity.py, and the real claim against the real filter on
SQLite and PostgreSQL in tests/api/test_fit_rule_agreement.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


def capacity_rule(total: Any, reserved: Any, allocation_ratio: Any) -> Any:
    """``(total - reserved) * allocation_ratio`` for numbers or SQL expressions."""
    return (total - reserved) * allocation_ratio


def fit_rule(used: Any, requested: Any, total: Any, reserved: Any, allocation_ratio: Any,
             min_unit: Any, max_unit: Any, all_of: Callable[..., Any]) -> Any:
    """The three conditions of a fit, combined with ``all_of`` (``and_`` in SQL)."""
    return all_of(
        used + requested <= capacity_rule(total, reserved, allocation_ratio),
        requested >= min_unit,
        requested <= max_unit,
    )


def _all(*conditions: bool) -> bool:
    return all(conditions)


def capacity(total: int, reserved: int, allocation_ratio: float) -> float:
    """How much of a resource class a host can hand out in total."""
    return float(capacity_rule(total, reserved, allocation_ratio))


def fits(used: int, requested: int, total: int, reserved: int, allocation_ratio: float,
         min_unit: int, max_unit: int) -> bool:
    """The fit rule on numbers."""
    return bool(fit_rule(used, requested, total, reserved, allocation_ratio, min_unit, max_unit,
                         _all))


def fit_bounds(used: int, total: int, reserved: int, allocation_ratio: float, min_unit: int,
               max_unit: int) -> tuple[int, int]:
    """The fit rule solved for a whole ``requested``: it fits iff ``low <= requested <= high``.

    ``used + requested <= capacity`` holds for integers exactly when
    ``requested <= floor(capacity) - used``; the unit limits bound it on both sides.
    """
    return min_unit, min(math.floor(capacity(total, reserved, allocation_ratio)) - used, max_unit)


def how_many(free: float, requested: int, min_unit: int, max_unit: int) -> int:
    """How many more requests of ``requested`` fit into ``free`` (0 if outside the unit limits).

    Follows from the fit rule: k more fit while ``used + k * requested <= capacity``.
    """
    if requested <= 0:
        raise ValueError("requested must be positive")
    if requested < min_unit or requested > max_unit or free < requested:
        return 0
    return int(free // requested)
