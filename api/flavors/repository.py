"""Flavor queries (flush only)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Select,
    String,
    bindparam,
    delete,
    func,
    or_,
    select,
)
from sqlalchemy.orm import Session

from api.db import after_key
from api.models import Flavor, FlavorAccess, Server


def _visible_to(project_id: str | BindParameter[str] | None) -> ColumnElement[bool]:
    """Live flavors the project may see (``None``: every live flavor, for admins)."""
    live = Flavor.deleted_at.is_(None)
    if project_id is None:
        return live
    shared = select(FlavorAccess.flavor_id).where(FlavorAccess.project_id == project_id)
    return live & or_(Flavor.is_public.is_(True), Flavor.id.in_(shared))


_ORDER = (Flavor.vcpus, Flavor.ram_mb, Flavor.disk_gb, Flavor.name, Flavor.id)


def list_visible(session: Session, project_id: str | None, *, after: Flavor | None = None,
                 limit: int | None = None) -> Sequence[Flavor]:
    """Visible flavors, smallest first, starting after the flavor ``after``."""
    query = select(Flavor).where(_visible_to(project_id))
    if after is not None:
        key = (after.vcpus, after.ram_mb, after.disk_gb, after.name, after.id)
        query = query.where(after_key(_ORDER, key))
    return session.scalars(query.order_by(*_ORDER).limit(limit)).all()


def visible(session: Session, project_id: str | None, flavor_id: str) -> Flavor | None:
    """A visible flavor by id."""
    return session.scalar(select(Flavor).where(_visible_to(project_id), Flavor.id == flavor_id))


def visible_by_ref(session: Session, project_id: str | None, ref: str) -> Flavor | None:
    """A visible flavor by id or name (an id wins over another flavor's equal name)."""
    params = {"ref": ref} if project_id is None else {"ref": ref, "project_id": project_id}
    return session.scalars(_by_ref_statement(project_id is None), params).first()


@lru_cache(maxsize=2)
def _by_ref_statement(every_project: bool) -> Select[Flavor]:
    # Built once per scope (every server create resolves its flavor here): building the
    # expression costs more than running it.
    ref = bindparam("ref", type_=String())
    visible_to = _visible_to(None if every_project else bindparam("project_id", type_=String()))
    return (select(Flavor).where(visible_to, or_(Flavor.id == ref, Flavor.name == ref))
            .order_by((Flavor.id == ref).desc(), Flavor.id).limit(1))


def by_name(session: Session, name: str) -> Flavor | None:
    """A flavor by name (live or tombstone: the name is unique across both)."""
    return session.scalar(select(Flavor).where(Flavor.name == name))


def server_counts(session: Session, flavor_id: str) -> tuple[int, int]:
    """(live, soft-deleted) servers that reference the flavor."""
    rows = session.execute(
        select(Server.deleted_at.is_(None), func.count())
        .where(Server.flavor_id == flavor_id).group_by(Server.deleted_at.is_(None))
    ).all()
    counts = {bool(live): int(n) for live, n in rows}
    return counts.get(True, 0), counts.get(False, 0)


def access_projects(session: Session, flavor_id: str) -> list[str]:
    """Project ids a flavor is shared with."""
    return list(session.scalars(
        select(FlavorAccess.project_id).where(FlavorAccess.flavor_id == flavor_id)
        .order_by(FlavorAccess.project_id)
    ).all())


def access(session: Session, flavor_id: str, project_id: str) -> FlavorAccess | None:
    """The share of a flavor with a project, if any."""
    return session.scalar(select(FlavorAccess).where(
        FlavorAccess.flavor_id == flavor_id, FlavorAccess.project_id == project_id))


def drop_access(session: Session, flavor_id: str) -> None:
    """Remove every share of a flavor."""
    session.execute(delete(FlavorAccess).where(FlavorAccess.flavor_id == flavor_id))
    session.flush()
