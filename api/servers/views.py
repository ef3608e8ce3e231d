"""The names a server answer shows next to the ids it holds (flavor, image, host)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from api.models import Flavor, Host, Image, Server
from api.servers import repository


@dataclass(frozen=True)
class RelatedNames:
    """id -> name of the flavors, images and (admins only) hosts of some servers."""

    flavors: dict[str, str]
    images: dict[str, str]
    hosts: dict[str, str]


def related_names(session: Session, servers: Sequence[Server], *,
                  with_hosts: bool) -> RelatedNames:
    """One query per table for a whole page; hosts only when the caller may see them."""
    return RelatedNames(
        flavors=repository.names_by_id(session, Flavor, (s.flavor_id for s in servers)),
        images=repository.names_by_id(session, Image, (s.image_id for s in servers)),
        hosts=(repository.names_by_id(session, Host, (s.host_id for s in servers))
               if with_hosts else {}),
    )
