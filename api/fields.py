"""Reusable, validated request field types."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path
from pydantic import AfterValidator, ConfigDict, Field, StringConstraints

# Printable text only: no control characters (C0, DEL, C1), no leading/trailing blanks.
_PRINTABLE = r"^[^\x00-\x1f\x7f-\x9f]+$"
PRINTABLE_PATTERN = _PRINTABLE


def _no_outer_space(value: str) -> str:
    if value != value.strip():
        raise ValueError("must not start or end with white space")
    return value


Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=255, pattern=_PRINTABLE),
    AfterValidator(_no_outer_space),
]
"""A display name: 1-255 printable characters."""

ShortName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$"),
]
"""An identifier-like name (projects, users, flavors): letters, digits, ``._-``."""

Description = Annotated[str, StringConstraints(max_length=255, pattern=r"^[^\x00-\x1f\x7f-\x9f]*$")]

Count = Annotated[int, Field(ge=0, le=1_000_000)]
"""A non-negative count with a sane upper bound."""

STRICT = ConfigDict(extra="forbid", strict=False)
"""Request models reject unknown fields so typos do not pass silently."""

# Ids in paths are checked before they reach SQL: PostgreSQL rejects NUL bytes in text
# parameters, and nothing legitimate is longer than a UUID.
ID_PATTERN = r"^[A-Za-z0-9._-]+$"
PathId = Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN)]
"""An object id in a URL path (malformed: 422 ``invalid_input``)."""

PathRef = Annotated[str, Path(min_length=1, max_length=255, pattern=_PRINTABLE)]
"""An id or a display name in a URL path (malformed: 422 ``invalid_input``)."""

# Free text (messages, reasons): line breaks and tabs are content, but NUL (which PostgreSQL
# cannot store) and the other C0 controls and DEL (terminal escapes) are not.
TEXT_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
TOKEN_PATTERN = r"^[!-~]+$"
"""A printable ASCII token without blanks (idempotency keys, echoed ids)."""
