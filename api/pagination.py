"""The list pagination convention: `limit` + `marker` query parameters, a plain JSON array
body, and a `Link: <...>; rel="next"` header while more pages follow."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Generic, TypeVar
from urllib.parse import quote

from fastapi import Query, Response

from api.errors import DomainError
from api.fields import ID_PATTERN, PRINTABLE_PATTERN

MAX_PAGE = 1000
"""Default and largest page size: clients that never ask for a page get up to this many."""

PageLimit = Annotated[int, Query(ge=1, le=MAX_PAGE)]
"""The page size (malformed or out of range: 422 ``invalid_input``)."""

Marker = Annotated[str | None, Query(min_length=1, max_length=64, pattern=ID_PATTERN)]
"""The id of the last object of the previous page."""

NameMarker = Annotated[str | None, Query(min_length=1, max_length=255, pattern=PRINTABLE_PATTERN)]
"""The name of the last object of the previous page, for lists keyed by name (key pairs)."""

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing and the marker of the next page (None: last page)."""

    items: Sequence[T]
    next_marker: str | None


def page_of(rows: Sequence[T], limit: int, key: Callable[[T], str]) -> Page[T]:
    """Cut ``rows`` (fetched with ``limit + 1``) to a page; the extra row says more follow."""
    if len(rows) > limit:
        return Page(rows[:limit], key(rows[limit - 1]))
    return Page(rows, None)


def invalid_marker() -> DomainError:
    """The 400 ``invalid_marker`` error for a marker that names nothing in the listing."""
    return DomainError("The marker is not an object of this listing.", code="invalid_marker")


def link_next(response: Response, path: str, limit: int, page: Page[T]) -> Sequence[T]:
    """Set the `Link: <path?limit=..&marker=..>; rel="next"` header when more follow; return
    the page's items."""
    if page.next_marker is not None:
        response.headers["Link"] = (
            f'<{path}?limit={limit}&marker={quote(page.next_marker, safe="")}>; rel="next"')
    return page.items
