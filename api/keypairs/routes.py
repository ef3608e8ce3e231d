"""Key pair HTTP routes: /v1/keypairs (per user, addressed by name)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps import CurrentUser, SessionDep, Writer
from api.fields import PathRef
from api.keypairs import service
from api.keypairs.schemas import KeyPairCreate, KeyPairList, KeyPairOut
from api.models import KeyPair
from api.pagination import MAX_PAGE, NameMarker, PageLimit, link_next

router = APIRouter(prefix="/v1", tags=["keypairs"])


def _out(keypair: KeyPair, private_key: str | None = None) -> KeyPairOut:
    return KeyPairOut(name=keypair.name, type=keypair.type, fingerprint=keypair.fingerprint,
                      public_key=keypair.public_key, user_id=keypair.user_id,
                      created_at=keypair.created_at, private_key=private_key)


@router.post("/keypairs", status_code=201, response_model=KeyPairOut,
             response_model_exclude_none=True)
def create_keypair(body: KeyPairCreate, principal: Writer, session: SessionDep) -> KeyPairOut:
    """Import a public key, or generate an ed25519 pair: its `private_key` is in this answer
    only. 409 `keypair_exists` when the name is taken (key pairs are per user)."""
    created = service.create_keypair(session, principal, body.name, body.public_key)
    return _out(created.keypair, created.private_key)


@router.get("/keypairs", response_model=KeyPairList)
def list_keypairs(principal: CurrentUser, session: SessionDep, response: Response,
                  limit: PageLimit = MAX_PAGE, marker: NameMarker = None) -> KeyPairList:
    """The caller's key pairs, by name. Paginated (see "Pagination"; the page is the
    `keypairs` array and the marker is a key pair's name)."""
    page = service.list_keypair_page(session, principal, limit=limit, marker=marker)
    return KeyPairList(keypairs=[_out(k) for k in link_next(response, "/v1/keypairs", limit,
                                                            page)])


@router.get("/keypairs/{name}", response_model=KeyPairOut, response_model_exclude_none=True)
def show_keypair(name: PathRef, principal: CurrentUser, session: SessionDep) -> KeyPairOut:
    """One of the caller's key pairs (404 `keypair_not_found`)."""
    return _out(service.get_keypair(session, principal, name))


@router.delete("/keypairs/{name}", status_code=204)
def delete_keypair(name: PathRef, principal: Writer, session: SessionDep) -> Response:
    """Delete one of the caller's key pairs (servers booted with it keep their key)."""
    service.delete_keypair(session, principal, name)
    return Response(status_code=204)
