"""Image queries (flush only)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Select,
    String,
    and_,
    bindparam,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from api.db import utcnow
from api.models import Image, Server
from api.servers.states import DELETED as SERVER_DELETED

# A tombstone: the image of soft-deleted servers, its bytes gone, hidden from everyone.
DELETED = "deleted"


def _visible_to(project_id: str | BindParameter[str] | None) -> ColumnElement[bool]:
    """Images the project may see (``None``: every image, for admins)."""
    live = Image.status != DELETED
    if project_id is None:
        return live
    return live & or_(Image.project_id == project_id, Image.visibility == "public")


def list_visible(session: Session, project_id: str | None, *,
                 after: tuple[datetime, str] | None = None,
                 limit: int | None = None) -> Sequence[Image]:
    """Visible images, oldest first (by (created_at, id)), starting after the ``after`` key."""
    query = select(Image).where(_visible_to(project_id))
    if after is not None:
        created, iid = after
        query = query.where(or_(Image.created_at > created,
                                and_(Image.created_at == created, Image.id > iid)))
    query = query.order_by(Image.created_at, Image.id)
    if limit is not None:
        query = query.limit(limit)
    return session.scalars(query).all()


def visible(session: Session, project_id: str | None, image_id: str) -> Image | None:
    """A visible image by id."""
    params = {"image_id": image_id} if project_id is None else {
        "image_id": image_id, "project_id": project_id}
    return session.scalar(_by_id_statement(project_id is None), params)


@lru_cache(maxsize=2)
def _by_id_statement(every_project: bool) -> Select[Image]:
    # Built once per scope (every server create resolves its image here).
    visible_to = _visible_to(None if every_project else bindparam("project_id", type_=String()))
    return select(Image).where(visible_to, Image.id == bindparam("image_id", type_=String()))


def images_of_host_servers(session: Session, host_id: str) -> Sequence[Image]:
    """The images of the host's servers that are not DELETED (one row per server)."""
    return session.scalars(
        select(Image).join(Server, Server.image_id == Image.id)
        .where(Server.host_id == host_id, Server.status != SERVER_DELETED)
    ).all()


def visible_by_name(session: Session, project_id: str | None, name: str) -> Sequence[Image]:
    """Visible images with that name (names are not unique)."""
    return session.scalars(
        select(Image).where(_visible_to(project_id), Image.name == name)
        .order_by(Image.created_at, Image.id)
    ).all()


def move_status(session: Session, image_id: str, seen: str, new: str,
                **values: object) -> bool:
    """``UPDATE images SET status = :new WHERE id = :id AND status = :seen``.

    Returns whether this call made the move: of two racing callers exactly one does.
    """
    result = session.execute(
        update(Image).where(Image.id == image_id, Image.status == seen)
        .values(status=new, updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    session.flush()
    return bool(getattr(result, "rowcount", 0) == 1)


def server_counts(session: Session, image_id: str) -> tuple[int, int]:
    """(live, soft-deleted) servers that boot from the image."""
    rows = session.execute(
        select(Server.deleted_at.is_(None), func.count())
        .where(Server.image_id == image_id).group_by(Server.deleted_at.is_(None))
    ).all()
    counts = {bool(live): int(n) for live, n in rows}
    return counts.get(True, 0), counts.get(False, 0)


def referencing(session: Session, image_id: str) -> list[str]:
    """Ids of live images whose properties name ``image_id`` as kernel or ramdisk.

    Filtered in Python: JSON path queries differ between SQLite and PostgreSQL, and only
    bootable disk images (raw/qcow2) carry such properties.
    """
    rows = session.execute(
        select(Image.id, Image.properties)
        .where(Image.status != DELETED, Image.disk_format.in_(("raw", "qcow2")))
    ).all()
    return [
        rid for rid, props in rows
        if image_id in ((props or {}).get("kernel_id"), (props or {}).get("ramdisk_id"))
    ]
