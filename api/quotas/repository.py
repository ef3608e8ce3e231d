"""Quota queries: the project lock, live usage and stored limits (flush only)."""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from api.models import Image, Project, Quota, Server
from scheduler.resources import RESOURCE_CLASSES


def lock_project(session: Session, project_id: str) -> bool:
    """Serialize quota-checked writes of one project; False when the project does not exist.

    ``UPDATE projects SET generation = generation + 1 WHERE id = :id`` is the first write of the
    unit of work: on SQLite it begins the transaction and takes the database write lock, on
    PostgreSQL it takes the project's row lock. Either way a second create of the same project
    waits here until the first commits, then counts usage that includes the first's server.
    """
    result = session.execute(
        update(Project).where(Project.id == project_id)
        .values(generation=Project.generation + 1)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def usage(session: Session, project_id: str) -> dict[str, int]:
    """What the project holds now: its servers not yet deleted (DELETING still holds); per
    resource class, the sum of the server column that requests it, under its quota key; its
    images not deleted and their uploaded bytes."""
    row = session.execute(
        select(
            func.count(Server.id),
            *(func.coalesce(func.sum(getattr(Server, rc.request_field)), 0)
              for rc in RESOURCE_CLASSES),
        ).where(Server.project_id == project_id, Server.deleted_at.is_(None))
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
