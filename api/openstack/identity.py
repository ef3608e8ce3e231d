"""Identity v3 subset at /identity: discovery, tokens (password, application credential,
token), projects and application credentials, over ``api.identity.service``."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, StringConstraints

from api.config import Settings
from api.db import session_scope, utcnow
from api.deps import Principal, SessionDep, SettingsDep, get_principal
from api.errors import NotFound, Unauthorized
from api.fields import TOKEN_PATTERN, ShortName
from api.identity import repository as identity_repo
from api.identity import service as identity
from api.openstack import repository
from api.openstack.auth import BaseUrl, OsUser, OsWriter, os_id
from api.security import verify_password_bounded

router = APIRouter(prefix="/identity", tags=["openstack identity"], include_in_schema=False)

DOMAIN = {"id": "default", "name": "Default"}
# The roles a minicloud role implies, as Keystone's default role hierarchy has them.
IMPLIED_ROLES = {"admin": ["admin", "member", "reader"], "member": ["member", "reader"],
                 "reader": ["reader"]}
_UPDATED = "2024-01-01T00:00:00Z"
# What a token body says of an application credential that never expires (Keystone needs a
# date): a year on, re-stated at every validation.
NO_EXPIRY = timedelta(days=365)


def stamp(at: datetime | None) -> str | None:
    """Keystone's timestamp format."""
    return at.strftime("%Y-%m-%dT%H:%M:%S.000000Z") if at is not None else None


def _v3(base: str) -> dict[str, Any]:
    return {"id": "v3.14", "status": "stable", "updated": _UPDATED,
            "links": [{"rel": "self", "href": f"{base}/identity/v3/"}],
            "media-types": [{"base": "application/json",
                             "type": "application/vnd.openstack.identity-v3+json"}]}


@router.get("")
@router.get("/")
def versions(base: BaseUrl) -> JSONResponse:
    """The identity versions (anonymous; 300 as Keystone answers)."""
    return JSONResponse({"versions": {"values": [_v3(base)]}}, status_code=300)


@router.get("/v3")
@router.get("/v3/")
def version(base: BaseUrl) -> dict[str, Any]:
    """Identity v3 (anonymous)."""
    return {"version": _v3(base)}


def catalog(settings: Settings) -> list[dict[str, Any]]:
    """The service catalog: identity, compute and image, each public/internal/admin."""
    base, region = settings.effective_public_url, settings.region_name
    services = [("identity", "keystone", f"{base}/identity"),
                ("compute", "nova", f"{base}/compute/v2.1"),
                ("image", "glance", f"{base}/image")]
    return [{"id": kind, "type": kind, "name": name,
             "endpoints": [{"id": f"{kind}-{interface}", "interface": interface,
                            "region_id": region, "region": region, "url": url}
                           for interface in ("public", "internal", "admin")]}
            for kind, name, url in services]


def _token_body(settings: Settings, principal: Principal, methods: list[str],
                issued_at: datetime, expires_at: datetime, *,
                app_cred: tuple[str, str] | None = None) -> dict[str, Any]:
    token: dict[str, Any] = {
        "methods": methods,
        "user": {"id": principal.user_id, "name": principal.user_name, "domain": DOMAIN,
                 "password_expires_at": None},
        "project": {"id": principal.project_id, "name": principal.project_name,
                    "domain": DOMAIN},
        "roles": [{"id": r, "name": r} for r in IMPLIED_ROLES.get(principal.role, [])],
        "is_domain": False,
        "audit_ids": [principal.credential_id],
        "issued_at": stamp(issued_at), "expires_at": stamp(expires_at),
        "catalog": catalog(settings),
    }
    if app_cred is not None:
        token["application_credential"] = {"id": app_cred[0], "name": app_cred[1],
                                           "restricted": True}
    return {"token": token}


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Domain(_Loose):
    id: str | None = None
    name: str | None = None


# Bounded like /v1's login: hashing an unbounded password would be a cheap denial of service.
_Text = Annotated[str, StringConstraints(max_length=1024)]


class _UserRef(_Loose):
    id: _Text | None = None
    name: _Text | None = None
    password: _Text | None = None
    domain: _Domain | None = None


class _Password(_Loose):
    user: _UserRef


class _AppCred(_Loose):
    id: str | None = None
    name: str | None = None
    secret: str
    user: _UserRef | None = None


class _TokenRef(_Loose):
    id: str


class _Identity(_Loose):
    methods: list[str]
    password: _Password | None = None
    application_credential: _AppCred | None = None
    token: _TokenRef | None = None


class _ProjectRef(_Loose):
    id: str | None = None
    name: str | None = None
    domain: _Domain | None = None


class _Scope(_Loose):
    project: _ProjectRef | None = None


class _Auth(_Loose):
    identity: _Identity
    scope: _Scope | dict[str, Any] | str | None = None


class AuthRequest(_Loose):
    """``POST /v3/auth/tokens``: Keystone's auth request (only the fields minicloud reads)."""

    auth: _Auth


def _check_domain(domain: _Domain | None) -> None:
    if domain is not None and (domain.id or domain.name or "default").lower() != "default":
        raise Unauthorized("The request you have made requires authentication.",
                           code="invalid_credentials")


def _principal(session: SessionDep, secret: str) -> Principal:
    return get_principal(session, f"Bearer {secret}")


def _password(session: SessionDep, settings: Settings, body: _Auth,
              request: Request) -> tuple[str, Principal, datetime, datetime]:
    assert body.identity.password is not None
    user = body.identity.password.user
    _check_domain(user.domain)
    name = user.name
    if user.id is not None:
        found = repository.user(session, user.id)
        name = found.name if found is not None else ""
    scope = body.scope if isinstance(body.scope, _Scope) else None
    if scope is None or scope.project is None or not (scope.project.id or scope.project.name):
        raise Unauthorized("minicloud issues project-scoped tokens only: give a project.",
                           code="project_scope_required")
    _check_domain(scope.project.domain)
    # The login throttle of /v1 applies here too: the attempt is counted in its own unit of
    # work (so a wrong password stays counted), the hash is checked in the bounded pool.
    address = request.client.host if request.client else "unknown"
    stored = ""
    for counting in session_scope(request.app.state.sessionmaker):
        stored = identity.begin_login(counting, settings, name or "", address)
    ok = verify_password_bounded(stored, user.password or "")
    issued = identity.finish_login(session, settings, name or "", ok,
                                   scope.project.id or scope.project.name or "", address)
    return (issued.secret, _principal(session, issued.secret), issued.token.created_at,
            issued.token.expires_at)


def _app_credential(session: SessionDep,
                    body: _Auth) -> tuple[str, Principal, tuple[str, str], datetime | None]:
    ref = body.identity.application_credential
    assert ref is not None
    cred = repository.app_credential_by_secret(session, ref.secret)
    matches = cred is not None and (
        cred.id == ref.id if ref.id is not None else
        ref.name == cred.name and ref.user is not None and (
            ref.user.id == cred.user_id if ref.user.id is not None else
            (found := repository.user(session, cred.user_id)) is not None
            and found.name == ref.user.name))
    if cred is None or not matches:
        raise Unauthorized("Invalid application credential.", code="invalid_credentials")
    # The secret itself is a minicloud bearer credential: it is the token.
    return ref.secret, _principal(session, ref.secret), (cred.id, cred.name), cred.expires_at


@router.post("/v3/auth/tokens", status_code=201)
def issue_token(body: AuthRequest, session: SessionDep, settings: SettingsDep,
                request: Request) -> JSONResponse:
    """Authenticate (password, application credential, or an existing token) and answer the
    token in ``X-Subject-Token`` with its body and catalog."""
    identity_ = body.auth.identity
    now = utcnow()
    app_cred = None
    if "application_credential" in identity_.methods and identity_.application_credential:
        secret, principal, app_cred, expires = _app_credential(session, body.auth)
        issued_at = now
        expires_at = expires or now + NO_EXPIRY
    elif "password" in identity_.methods and identity_.password is not None:
        secret, principal, issued_at, expires_at = _password(session, settings, body.auth, request)
    elif "token" in identity_.methods and identity_.token is not None:
        secret = identity_.token.id
        principal = _principal(session, secret)
        issued_at, expires_at, app_cred = _lifetime(session, principal)
    else:
        raise Unauthorized("Unsupported authentication method.", code="invalid_credentials")
    methods = ["application_credential"] if app_cred else ["password"]
    content = _token_body(settings, principal, methods, issued_at, expires_at,
                          app_cred=app_cred)
    return JSONResponse(content, status_code=201, headers={"X-Subject-Token": secret})


def _lifetime(session: SessionDep,
              principal: Principal) -> tuple[datetime, datetime, tuple[str, str] | None]:
    now = utcnow()
    if principal.credential == "token":
        token = repository.token_by_id(session, principal.credential_id)
        if token is not None:
            return token.created_at, token.expires_at, None
        return now, now, None
    cred = repository.app_credential(session, principal.credential_id)
    expires = cred.expires_at if cred is not None and cred.expires_at else now + NO_EXPIRY
    return (cred.created_at if cred else now), expires, (
        (cred.id, cred.name) if cred else None)


@router.get("/v3/auth/tokens")
def validate_token(_: OsUser, session: SessionDep, settings: SettingsDep,
                   x_subject_token: Annotated[str | None, Header()] = None) -> JSONResponse:
    """Validate ``X-Subject-Token`` (404 when it is not a valid token)."""
    try:
        subject = _principal(session, (x_subject_token or "").strip() or "-")
    except Unauthorized:
        raise NotFound("Could not find token.", code="token_not_found") from None
    issued_at, expires_at, app_cred = _lifetime(session, subject)
    methods = ["application_credential"] if app_cred else ["password"]
    return JSONResponse(_token_body(settings, subject, methods, issued_at, expires_at,
                                    app_cred=app_cred),
                        headers={"X-Subject-Token": x_subject_token or ""})


def _project(base: str, project_id: str, name: str, description: str) -> dict[str, Any]:
    return {"id": project_id, "name": name, "description": description,
            "domain_id": "default", "enabled": True, "is_domain": False,
            "parent_id": "default", "tags": [],
            "links": {"self": f"{base}/identity/v3/projects/{project_id}"}}


@router.get("/v3/projects")
@router.get("/v3/auth/projects")
def list_projects(principal: OsUser, session: SessionDep, base: BaseUrl) -> dict[str, Any]:
    """The caller's project (admins: every project)."""
    projects = (identity_repo.list_projects(session) if principal.is_admin
                else [identity.get_project(session, principal, principal.project_id)])
    return {"projects": [_project(base, p.id, p.name, p.description) for p in projects],
            "links": {"self": f"{base}/identity/v3/projects", "next": None,
                      "previous": None}}


@router.get("/v3/projects/{project_id}")
def show_project(project_id: str, principal: OsUser, session: SessionDep,
                 base: BaseUrl) -> dict[str, Any]:
    """A project the caller may see (404 otherwise)."""
    p = identity.get_project(session, principal, os_id(project_id))
    return {"project": _project(base, p.id, p.name, p.description)}


class _AppCredCreate(_Loose):
    name: ShortName
    secret: Annotated[str, StringConstraints(min_length=16, max_length=255,
                                             pattern=TOKEN_PATTERN)] | None = None
    expires_at: datetime | None = None
    description: str | None = None


class AppCredentialCreate(_Loose):
    """``POST /v3/users/{id}/application_credentials``."""

    application_credential: _AppCredCreate


def _own(principal: Principal, user_id: str) -> None:
    if os_id(user_id) != principal.user_id:
        raise NotFound(f"Could not find user: {user_id}.", code="user_not_found")


def _cred(base: str, principal: Principal, cred: Any, secret: str | None = None
          ) -> dict[str, Any]:
    out = {"id": cred.id, "name": cred.name, "description": None,
           "project_id": cred.project_id, "user_id": cred.user_id,
           "expires_at": stamp(cred.expires_at), "unrestricted": False,
           "roles": [{"id": r, "name": r} for r in IMPLIED_ROLES.get(principal.role, [])],
           "access_rules": [],
           "links": {"self": f"{base}/identity/v3/users/{cred.user_id}"
                             f"/application_credentials/{cred.id}"}}
    if secret is not None:
        out["secret"] = secret
    return out


@router.post("/v3/users/{user_id}/application_credentials", status_code=201)
def create_app_credential(user_id: str, body: AppCredentialCreate, principal: OsWriter,
                          session: SessionDep, base: BaseUrl) -> dict[str, Any]:
    """A new application credential of the caller for the current project (secret once)."""
    _own(principal, user_id)
    ref = body.application_credential
    cred, secret = identity.create_app_credential(session, principal, ref.name, ref.expires_at,
                                                  ref.secret)
    return {"application_credential": _cred(base, principal, cred, secret)}


@router.get("/v3/users/{user_id}/application_credentials")
def list_app_credentials(user_id: str, principal: OsUser, session: SessionDep,
                         base: BaseUrl, name: str | None = None) -> dict[str, Any]:
    """The caller's application credentials (``name`` filters)."""
    _own(principal, user_id)
    creds = [c for c in identity_repo.app_credentials(session, principal.user_id)
             if name is None or c.name == name]
    return {"application_credentials": [_cred(base, principal, c) for c in creds],
            "links": {"self": f"{base}/identity/v3/users/{user_id}/application_credentials",
                      "next": None, "previous": None}}


@router.get("/v3/users/{user_id}/application_credentials/{cred_id}")
def show_app_credential(user_id: str, cred_id: str, principal: OsUser, session: SessionDep,
                        base: BaseUrl) -> dict[str, Any]:
    """One of the caller's application credentials (404 otherwise)."""
    _own(principal, user_id)
    for cred in identity_repo.app_credentials(session, principal.user_id):
        if cred.id == cred_id:
            return {"application_credential": _cred(base, principal, cred)}
    raise NotFound(f"Could not find application credential: {cred_id}.",
                   code="credential_not_found")


@router.delete("/v3/users/{user_id}/application_credentials/{cred_id}", status_code=204)
def delete_app_credential(user_id: str, cred_id: str, principal: OsWriter,
                          session: SessionDep) -> Response:
    """Delete one of the caller's application credentials."""
    _own(principal, user_id)
    identity.delete_app_credential(session, principal, os_id(cred_id))
    return Response(status_code=204)
