"""Identity queries (flush only)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from api.models import ApplicationCredential, Project, RoleAssignment, User


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


def list_projects(session: Session) -> Sequence[Project]:
    """Every project, by name."""
    return session.scalars(select(Project).order_by(Project.name)).all()


def list_users(session: Session) -> Sequence[User]:
    """Every user, by name."""
    return session.scalars(select(User).order_by(User.name)).all()


def members(session: Session, project_id: str) -> Sequence[tuple[User, str]]:
    """Users with a role on the project, by name."""
    rows = session.execute(
        select(User, RoleAssignment.role)
        .join(RoleAssignment, RoleAssignment.user_id == User.id)
        .where(RoleAssignment.project_id == project_id)
        .order_by(User.name)
    ).all()
    return [(u, r) for u, r in rows]


def app_credentials(session: Session, user_id: str) -> Sequence[ApplicationCredential]:
    """A user's application credentials, by name."""
    return session.scalars(
        select(ApplicationCredential)
        .where(ApplicationCredential.user_id == user_id)
        .order_by(ApplicationCredential.name)
    ).all()
