"""Identity HTTP routes: /v1/auth, /v1/projects, /v1/users, /v1/application-credentials."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from api.config import Settings
from api.db import SessionFactory, session_scope
from api.deps import AdminUser, CurrentUser, SessionDep, Writer
from api.errors import problem_doc
from api.fields import PathId
from api.identity import service
from api.identity.schemas import (
    AppCredentialCreate,
    AppCredentialOut,
    IdName,
    MemberOut,
    PasswordChange,
    ProjectCreate,
    ProjectOut,
    RoleSet,
    TokenCreate,
    TokenOut,
    UserCreate,
    UserOut,
    UserPatch,
)
from api.models import ApplicationCredential
from api.pagination import MAX_PAGE, Marker, PageLimit, link_next
from api.security import verify_password_async

router = APIRouter(prefix="/v1")


# Each helper is one unit of work that commits when its loop ends (a ``return`` inside the
# loop would close the generator and roll back).
def _begin_login(maker: SessionFactory, settings: Settings, body: TokenCreate,
                 address: str) -> str:
    stored = ""
    for session in session_scope(maker):
        stored = service.begin_login(session, settings, body.user, address)
    return stored


def _finish_login(maker: SessionFactory, settings: Settings, body: TokenCreate,
                  password_ok: bool, address: str) -> TokenOut:
    out: TokenOut | None = None
    for session in session_scope(maker):
        issued = service.finish_login(session, settings, body.user, password_ok, body.project,
                                      address)
        out = TokenOut(
            token=issued.secret, expires_at=issued.token.expires_at,
            user=IdName(id=issued.user.id, name=issued.user.name),
            project=IdName(id=issued.project.id, name=issued.project.name),
            role=issued.role,
            credential="token",
        )
    assert out is not None
    return out


@router.post("/auth/tokens", status_code=201, response_model=TokenOut, tags=["auth"],
             responses={429: problem_doc("Too many failed logins (`login_throttled`); "
                                         "see `Retry-After`.")})
async def create_token(body: TokenCreate, request: Request) -> TokenOut:
    """Log in: exchange user name, password and project for a bearer token.

    Three short steps so that no request thread waits on Argon2: count the attempt (its own
    unit of work, committed, so a failure counts in every API process), verify the password
    in the bounded hashing pool, then issue the token in a second unit of work.
    """
    settings: Settings = request.app.state.settings
    maker: SessionFactory = request.app.state.sessionmaker
    address = request.client.host if request.client else "unknown"
    stored = await run_in_threadpool(_begin_login, maker, settings, body, address)
    ok = await verify_password_async(stored, body.password)
    return await run_in_threadpool(_finish_login, maker, settings, body, ok, address)


@router.post("/auth/password", status_code=204, tags=["auth"],
             responses={429: problem_doc("Too many wrong passwords (`login_throttled`); "
                                         "see `Retry-After`.")})
def change_password(body: PasswordChange, principal: CurrentUser, session: SessionDep,
                    request: Request) -> Response:
    """Change the caller's password (needs the current one); every token of theirs ends.

    The check counts against the login throttle like a login does.
    """
    service.refuse_app_credential(principal)
    address = request.client.host if request.client else "unknown"
    # Its own unit of work: the count must stay committed when the password is wrong.
    for counting in session_scope(request.app.state.sessionmaker):
        service.count_password_attempt(counting, request.app.state.settings,
                                       principal.user_name, address)
    service.change_password(session, principal, body.old_password, body.new_password, address)
    return Response(status_code=204)


@router.get("/auth/tokens/current", response_model=TokenOut, tags=["auth"])
def whoami(principal: CurrentUser, session: SessionDep) -> TokenOut:
    """Who the presented credential stands for."""
    return TokenOut(
        expires_at=service.credential_expiry(session, principal),
        user=IdName(id=principal.user_id, name=principal.user_name),
        project=IdName(id=principal.project_id, name=principal.project_name),
        role=principal.role,
        credential=principal.credential,
    )


@router.delete("/auth/tokens/current", status_code=204, tags=["auth"])
def logout(principal: CurrentUser, session: SessionDep) -> Response:
    """Revoke the token in use."""
    service.revoke_current(session, principal)
    return Response(status_code=204)


@router.post("/projects", status_code=201, response_model=ProjectOut, tags=["projects"])
def create_project(body: ProjectCreate, _: AdminUser, session: SessionDep) -> ProjectOut:
    """Create a project (admin)."""
    return ProjectOut.model_validate(service.create_project(session, body.name, body.description))


@router.get("/projects", response_model=list[ProjectOut], tags=["projects"])
def list_projects(principal: CurrentUser, session: SessionDep, response: Response,
                  limit: PageLimit = MAX_PAGE, marker: Marker = None) -> list[ProjectOut]:
    """Admins see every project; others see their own. Paginated (see "Pagination")."""
    page = service.list_projects(session, principal, limit=limit, marker=marker)
    return [ProjectOut.model_validate(p) for p in link_next(response, "/v1/projects", limit, page)]


@router.get("/projects/{project_id}", response_model=ProjectOut, tags=["projects"])
def show_project(project_id: PathId, principal: CurrentUser, session: SessionDep) -> ProjectOut:
    """One project (admins: any; others: their own, else 404)."""
    return ProjectOut.model_validate(service.get_project(session, principal, project_id))


@router.delete("/projects/{project_id}", status_code=204, tags=["projects"])
def delete_project(project_id: PathId, principal: AdminUser, session: SessionDep) -> Response:
    """Delete a project that holds no servers (admin)."""
    service.delete_project(session, principal, project_id)
    return Response(status_code=204)


@router.get("/projects/{project_id}/members", response_model=list[MemberOut], tags=["projects"])
def list_members(project_id: PathId, principal: CurrentUser,
                 session: SessionDep) -> list[MemberOut]:
    """Users with a role on the project."""
    project, members = service.list_members(session, principal, project_id)
    return [MemberOut(user_id=u.id, user_name=u.name, project_id=project.id, role=r)
            for u, r in members]


@router.put("/projects/{project_id}/members/{user_id}", response_model=MemberOut,
            tags=["projects"])
def set_member(project_id: PathId, user_id: PathId, body: RoleSet, _: AdminUser,
               session: SessionDep) -> MemberOut:
    """Give a user a role on a project (admin)."""
    a = service.set_role(session, project_id, user_id, body.role)
    user = service.get_user(session, user_id)
    return MemberOut(user_id=user.id, user_name=user.name, project_id=a.project_id,
                     role=body.role)


@router.delete("/projects/{project_id}/members/{user_id}", status_code=204, tags=["projects"])
def remove_member(project_id: PathId, user_id: PathId, _: AdminUser,
                  session: SessionDep) -> Response:
    """Take a user's role on a project away (admin)."""
    service.remove_role(session, project_id, user_id)
    return Response(status_code=204)


@router.post("/users", status_code=201, response_model=UserOut, tags=["users"])
def create_user(body: UserCreate, _: AdminUser, session: SessionDep) -> UserOut:
    """Create a user, optionally with a role on a project (admin)."""
    user = service.create_user(session, body.name, body.password, body.project_id, body.role)
    return UserOut.model_validate(user)


@router.get("/users", response_model=list[UserOut], tags=["users"])
def list_users(_: AdminUser, session: SessionDep, response: Response,
               limit: PageLimit = MAX_PAGE, marker: Marker = None) -> list[UserOut]:
    """Every user (admin). Paginated (see "Pagination")."""
    page = service.list_users(session, limit=limit, marker=marker)
    return [UserOut.model_validate(u) for u in link_next(response, "/v1/users", limit, page)]


@router.get("/users/{user_id}", response_model=UserOut, tags=["users"])
def show_user(user_id: PathId, _: AdminUser, session: SessionDep) -> UserOut:
    """One user (admin)."""
    return UserOut.model_validate(service.get_user(session, user_id))


@router.patch("/users/{user_id}", response_model=UserOut, tags=["users"])
def update_user(user_id: PathId, body: UserPatch, principal: AdminUser,
                session: SessionDep) -> UserOut:
    """Enable or disable a user (admin); disabling ends their tokens and credentials."""
    return UserOut.model_validate(service.set_user_enabled(session, principal, user_id,
                                                           body.enabled))


@router.delete("/users/{user_id}", status_code=204, tags=["users"])
def delete_user(user_id: PathId, principal: AdminUser, session: SessionDep) -> Response:
    """Delete a user and their credentials (admin)."""
    service.delete_user(session, principal, user_id)
    return Response(status_code=204)


def _cred_out(cred: ApplicationCredential, secret: str | None = None) -> AppCredentialOut:
    return AppCredentialOut(id=cred.id, name=cred.name, project_id=cred.project_id,
                            expires_at=cred.expires_at, created_at=cred.created_at, secret=secret)


@router.post("/application-credentials", status_code=201, response_model=AppCredentialOut,
             tags=["auth"])
def create_app_credential(body: AppCredentialCreate, principal: Writer,
                          session: SessionDep) -> AppCredentialOut:
    """A long-lived credential for automation; the secret is shown only in this answer."""
    cred, secret = service.create_app_credential(session, principal, body.name, body.expires_at)
    return _cred_out(cred, secret)


@router.get("/application-credentials", response_model=list[AppCredentialOut], tags=["auth"])
def list_app_credentials(principal: CurrentUser, session: SessionDep, response: Response,
                         limit: PageLimit = MAX_PAGE,
                         marker: Marker = None) -> list[AppCredentialOut]:
    """The caller's application credentials (never their secrets). Paginated."""
    page = service.list_app_credentials(session, principal, limit=limit, marker=marker)
    return [_cred_out(c)
            for c in link_next(response, "/v1/application-credentials", limit, page)]


@router.delete("/application-credentials/{cred_id}", status_code=204, tags=["auth"])
def delete_app_credential(cred_id: PathId, principal: CurrentUser, session: SessionDep) -> Response:
    """Delete one of the caller's application credentials."""
    service.delete_app_credential(session, principal, cred_id)
    return Response(status_code=204)
