"""Identity queries (flush only)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import bindparam, case, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from api.db import UTCDateTime, after_key
from api.models import (
    ApplicationCredential,
    LoginFailure,
    Project,
    RoleAssignment,
    SystemFlag,
    Token,
    User,
)


def project_by_ref(session: Session, ref: str) -> Project | None:
    """A project by id or name."""
    return session.scalar(select(Project).where(or_(Project.id == ref, Project.name == ref)))


def user_by_name(session: Session, name: str) -> User | None:
    """A user by name."""
    return session.scalar(select(User).where(User.name == name))


def role_of(session: Session, user_id: str, project_id: str) -> RoleAssignment | None:
    """The user's role assignment on the project, if any."""
    return session.scalar(
        select(RoleAssignment).where(
            RoleAssignment.user_id == user_id, RoleAssignment.project_id == project_id
        )
    )


def list_projects(session: Session, *, after: tuple[str, str] | None = None,
                  limit: int | None = None) -> Sequence[Project]:
    """Every project, by (name, id), starting after the ``after`` key."""
    query = select(Project)
    if after is not None:
        query = query.where(after_key((Project.name, Project.id), after))
    return session.scalars(query.order_by(Project.name, Project.id).limit(limit)).all()


def list_users(session: Session, *, after: tuple[str, str] | None = None,
               limit: int | None = None) -> Sequence[User]:
    """Every user, by (name, id), starting after the ``after`` key."""
    query = select(User)
    if after is not None:
        query = query.where(after_key((User.name, User.id), after))
    return session.scalars(query.order_by(User.name, User.id).limit(limit)).all()


def members(session: Session, project_id: str) -> Sequence[tuple[User, str]]:
    """Users with a role on the project, by name."""
    rows = session.execute(
        select(User, RoleAssignment.role)
        .join(RoleAssignment, RoleAssignment.user_id == User.id)
        .where(RoleAssignment.project_id == project_id)
        .order_by(User.name)
    ).all()
    return [(u, r) for u, r in rows]


def app_credentials(session: Session, user_id: str, *, after: tuple[str, str] | None = None,
                    limit: int | None = None) -> Sequence[ApplicationCredential]:
    """A user's application credentials, by (name, id), starting after the ``after`` key."""
    query = select(ApplicationCredential).where(ApplicationCredential.user_id == user_id)
    if after is not None:
        query = query.where(after_key(
            (ApplicationCredential.name, ApplicationCredential.id), after))
    return session.scalars(
        query.order_by(ApplicationCredential.name, ApplicationCredential.id).limit(limit)).all()


def count_login_attempt(session: Session, key: str, now: datetime,
                        window_start: datetime) -> tuple[int, datetime]:
    """Count one attempt for ``key``; returns (attempts in its window, window start).

    One atomic upsert, so concurrent attempts in any number of API processes all count::

        INSERT INTO login_failures (key, failures, window_started_at) VALUES (:k, 1, :now)
        ON CONFLICT (key) DO UPDATE SET
          failures = CASE WHEN window_started_at <= :window_start THEN 1 ELSE failures + 1 END,
          window_started_at = CASE WHEN window_started_at <= :window_start
                                   THEN :now ELSE window_started_at END
        RETURNING failures, window_started_at
    """
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    now_param = bindparam("now_", now, type_=UTCDateTime())
    expired = LoginFailure.window_started_at <= bindparam("window_start", window_start,
                                                          type_=UTCDateTime())
    upsert = insert(LoginFailure).values(key=key, failures=1, window_started_at=now)
    stmt = upsert.on_conflict_do_update(
        index_elements=[LoginFailure.key],
        set_={"failures": case((expired, 1), else_=LoginFailure.failures + 1),
              "window_started_at": case((expired, now_param),
                                        else_=LoginFailure.window_started_at)},
    ).returning(LoginFailure.failures, LoginFailure.window_started_at)
    failures, started = session.execute(stmt).one()
    return int(failures), started


def forget_login_attempt(session: Session, key: str) -> None:
    """Take back one counted attempt of ``key`` (it turned out to be a good login)."""
    session.execute(
        update(LoginFailure).where(LoginFailure.key == key, LoginFailure.failures > 0)
        .values(failures=LoginFailure.failures - 1)
    )


def clear_login_failures(session: Session, key: str) -> None:
    """Forget every counted attempt of ``key``."""
    session.execute(delete(LoginFailure).where(LoginFailure.key == key))


def delete_tokens(session: Session, user_id: str) -> None:
    """Revoke every token of the user."""
    session.execute(delete(Token).where(Token.user_id == user_id))


def delete_app_credentials(session: Session, user_id: str) -> None:
    """Delete every application credential of the user."""
    session.execute(delete(ApplicationCredential).where(ApplicationCredential.user_id == user_id))


def flag_is_set(session: Session, name: str) -> bool:
    """Whether the one-way system flag ``name`` is set."""
    return session.get(SystemFlag, name) is not None


def set_flag(session: Session, name: str) -> None:
    """Set the one-way system flag ``name`` (idempotent)."""
    if session.get(SystemFlag, name) is None:
        session.add(SystemFlag(name=name))
        session.flush()
