"""Quota queries: the project lock, live usage and stored limits (flush only)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Select,
    String,
    Table,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.orm import Session

from api.models import Image, Project, Quota, Server
from api.models.servers import IMAGE_QUOTA_RESOURCES
from scheduler.resources import RESOURCE_CLASSES


def lock_project(session: Session, project_id: str) -> bool:
    """Serialize quota-checked writes of one project; False when the project does not exist.

    ``UPDATE projects SET generation = generation + 1 WHERE id = :id`` is the first write of the
    unit of work: on SQLite it begins the transaction and takes the database write lock, on
    PostgreSQL it takes the project's row lock. Either way a second create of the same project
    waits here until the first commits, then counts usage that includes the first's server.
    """
    return lock_project_generation(session, project_id) is not None


def lock_project_generation(session: Session, project_id: str) -> int | None:
    """``lock_project``, answering the project's generation after the bump (None when the
    project does not exist): every quota-checked write bumps it, so an unchanged generation
    means no such write committed in between."""
    return session.execute(_LOCK_PROJECT, {"project_id": project_id}).scalar()


# Built once (only the parameters change): building statements costs more than running them.
# Core tables: through a session they skip the ORM's statement layer (nothing is loaded).
_PROJECTS = cast(Table, Project.__table__)
_SERVERS = cast(Table, Server.__table__)
_IMAGES = cast(Table, Image.__table__)
_QUOTAS = cast(Table, Quota.__table__)
_LOCK_PROJECT = (update(_PROJECTS).where(_PROJECTS.c.id == bindparam("project_id"))
                 .values(generation=_PROJECTS.c.generation + 1)
                 .returning(_PROJECTS.c.generation))


def _server_usage_columns() -> list[ColumnElement[Any]]:
    return [func.count(_SERVERS.c.id),
            *(func.coalesce(func.sum(_SERVERS.c[rc.request_field]), 0)
              for rc in RESOURCE_CLASSES)]


@lru_cache(maxsize=32)
def _usage_and_limits(resources: tuple[str, ...], images: bool) -> Select[Any]:
    """The statement of ``usage_and_limits`` for these resources, built once."""
    project_id: BindParameter[str] = bindparam("project_id", type_=String())
    columns = _server_usage_columns()
    image, quota, server = _IMAGES.c, _QUOTAS.c, _SERVERS.c
    live_images = (image.project_id == project_id, image.status != "deleted")
    if images:
        columns += [select(func.count(image.id)).where(*live_images).scalar_subquery(),
                    select(func.coalesce(func.sum(image.size), 0)).where(*live_images)
                    .scalar_subquery()]
    columns += [select(quota.limit).where(quota.project_id == project_id,
                                          quota.resource == resource).scalar_subquery()
                for resource in resources]
    return select(*columns).where(server.project_id == project_id,
                                  server.deleted_at.is_(None))


def usage_and_limits(session: Session, project_id: str, resources: Sequence[str]
                     ) -> tuple[dict[str, int], dict[str, int | None]]:
    """What the project uses of ``resources`` and its stored limit of each (None: the
    default applies), in one statement::

        SELECT count(s.id), coalesce(sum(s.vcpus), 0), ...,          -- server resources
               (SELECT count(i.id) ... FROM images i WHERE ...),      -- only if asked
               (SELECT q."limit" FROM quotas q
                 WHERE q.project_id = :p AND q.resource = 'instances'), ...
          FROM servers s WHERE s.project_id = :p AND s.deleted_at IS NULL

    Server usage is always counted (one aggregate over the project's servers); image usage
    only when an image resource is asked for.
    """
    image_keys = [r for r in IMAGE_QUOTA_RESOURCES if r in resources]
    row = session.execute(_usage_and_limits(tuple(resources), bool(image_keys)),
                          {"project_id": project_id}).one()
    n_server = 1 + len(RESOURCE_CLASSES)
    used = {"instances": int(row[0]),
            **{rc.quota_key: int(value) for rc, value in zip(RESOURCE_CLASSES, row[1:n_server],
                                                               strict=True)}}
    rest = list(row[n_server:])
    if image_keys:
        used.update(images=int(rest[0]), image_bytes=int(rest[1] or 0))
        rest = rest[2:]
    stored = {resource: None if value is None else int(value)
              for resource, value in zip(resources, rest, strict=True)}
    return used, stored


def usage(session: Session, project_id: str) -> dict[str, int]:
    """What the project holds now: its servers not yet deleted (DELETING still holds); per
    resource class, the sum of the server column that requests it, under its quota key; its
    images not deleted and their uploaded bytes."""
    row = session.execute(
        select(*_server_usage_columns())
        .where(_SERVERS.c.project_id == project_id, _SERVERS.c.deleted_at.is_(None))
    ).one()
    # Images not deleted (a tombstone's bytes are gone); only uploaded bytes have a size.
    images = session.execute(
        select(func.count(Image.id), func.coalesce(func.sum(Image.size), 0))
        .where(Image.project_id == project_id, Image.status != "deleted")
    ).one()
    return {"instances": int(row[0]),
            **{rc.quota_key: int(value) for rc, value in zip(RESOURCE_CLASSES, row[1:],
                                                               strict=True)},
            "images": int(images[0]), "image_bytes": int(images[1] or 0)}


def stored_limits(session: Session, project_id: str) -> dict[str, Quota]:
    """The project's quota rows by resource (absent resources use the defaults)."""
    rows = session.scalars(select(Quota).where(Quota.project_id == project_id)).all()
    return {q.resource: q for q in rows}
