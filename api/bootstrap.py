"""First-start bootstrap: the admin project and user, default flavors, an admin credential."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy.orm import Session

from api.deps import Principal
from api.errors import Conflict, InvalidInput
from api.flavors.service import ensure_default_flavors
from api.identity import repository, service

ADMIN_PROJECT = "admin"
ADMIN_USER = "admin"
# Set by the first bootstrap and never unset: the environment's bootstrap token works once.
BOOTSTRAPPED = "bootstrapped"


@dataclass
class BootstrapResult:
    """What bootstrap created; the secrets are only known here."""

    project_id: str
    user_id: str
    password: str
    credential_id: str
    credential_secret: str


def bootstrap_admin(session: Session, *, password: str | None = None,
                    credential_secret: str | None = None) -> BootstrapResult:
    """Create the admin project, user and an application credential.

    Raises Conflict when an admin user already exists, InvalidInput for a weak given secret.
    """
    if repository.user_by_name(session, ADMIN_USER) is not None:
        raise Conflict("minicloud is already bootstrapped.", code="already_bootstrapped")
    if credential_secret is not None and len(credential_secret) < 24:
        raise InvalidInput("The bootstrap token needs at least 24 characters.",
                           code="weak_bootstrap_token")
    password = password or secrets.token_urlsafe(18)
    project = repository.project_by_ref(session, ADMIN_PROJECT) or service.create_project(
        session, ADMIN_PROJECT, "Cloud administrators"
    )
    user = service.create_user(session, ADMIN_USER, password, project.id, "admin")
    principal = Principal(user.id, user.name, project.id, project.name, "admin", "bootstrap", "")
    cred, secret = service.create_app_credential(
        session, principal, "bootstrap", None, secret=credential_secret
    )
    ensure_default_flavors(session)
    repository.set_flag(session, BOOTSTRAPPED)
    return BootstrapResult(project.id, user.id, password, cred.id, secret)


def bootstrap_from_env(session: Session, token: str) -> bool:
    """Bootstrap with the given token as the admin credential, once ever; True if it ran.

    Once the cloud was bootstrapped the token is ignored, even after the admin user is
    deleted: a token left in a unit file or an environment must not recreate an admin (and
    a known credential) on the next restart. ``minicloud-api bootstrap`` is the explicit,
    operator-run way back.
    """
    if (repository.flag_is_set(session, BOOTSTRAPPED)
            or repository.user_by_name(session, ADMIN_USER) is not None):
        return False
    bootstrap_admin(session, credential_secret=token)
    return True
