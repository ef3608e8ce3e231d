"""Who is asking, OpenStack style: the ``X-Auth-Token`` header carries a minicloud token or
application credential secret (exactly what ``Authorization: Bearer`` carries on /v1)."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Header, Request

from api.deps import Principal, SessionDep, get_principal
from api.errors import Forbidden, NotFound, Unauthorized

# What ``api.fields.PathId`` accepts: an id never needs more.
_ID = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")


def os_principal(session: SessionDep,
                 x_auth_token: Annotated[str | None, Header()] = None) -> Principal:
    """The caller; raises Unauthorized for a missing, unknown or expired token."""
    if not x_auth_token or not x_auth_token.strip():
        raise Unauthorized("The request you have made requires authentication.",
                           code="missing_token")
    return get_principal(session, f"Bearer {x_auth_token.strip()}")


def os_writer(principal: Annotated[Principal, Depends(os_principal)]) -> Principal:
    """A member or admin; raises Forbidden for readers (same rule as /v1's ``Writer``)."""
    if not principal.can_write:
        raise Forbidden("The reader role cannot change anything.", code="read_only_role")
    return principal


def os_admin(principal: Annotated[Principal, Depends(os_principal)]) -> Principal:
    """A cloud admin; raises Forbidden for everyone else (Nova's policy message)."""
    if not principal.is_admin:
        raise Forbidden("Policy doesn't allow this operation to be performed.",
                        code="admin_required")
    return principal


def os_id(value: str) -> str:
    """An id from an OpenStack path; anything that cannot be an id is 404, never 422 (clients
    try a name as an id first and fall back to a filtered list only after a 404)."""
    if not _ID.match(value):
        raise NotFound("The resource could not be found.", code="not_found")
    return value


def public_url(request: Request) -> str:
    """The base URL absolute links start with (``MINICLOUD_PUBLIC_URL``)."""
    return str(request.app.state.settings.effective_public_url)


OsUser = Annotated[Principal, Depends(os_principal)]
OsWriter = Annotated[Principal, Depends(os_writer)]
OsAdmin = Annotated[Principal, Depends(os_admin)]
BaseUrl = Annotated[str, Depends(public_url)]
