"""The console's pages. Each handler asks the ``/v1`` API (``Api``) and renders a template.

Pages are full HTML documents; the ``*/rows``, ``*/live`` and ``*/console`` routes return the
fragments htmx swaps in to keep a page current without reloading it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from api.ui.session import (
    CSRF_FIELD,
    CSRF_HEADER,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    Api,
    ApiAnswer,
    clear_session,
    csrf_for,
    new_login_csrf,
    same,
    set_login_csrf,
    set_session,
)

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
PAGE_SIZE = 25
# Hosts per page of the operator's hosts page (the API's largest page): a pool of that size
# is one page; beyond it, pages.
HOSTS_PAGE_SIZE = 1000

# No inline script or style anywhere: scripts and styles come from /ui/static only.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                         autoescape=True)
env.filters["urlquote"] = lambda value: quote(str(value), safe="")

router = APIRouter(prefix="/ui", include_in_schema=False)


class LoginRequired(Exception):
    """No session, or the API no longer accepts its secret."""


class UiError(Exception):
    """A page that cannot be shown: rendered as the error page with this status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Session:
    """The signed-in caller, the API client and the CSRF token of this request."""

    api: Api
    who: dict[str, Any]
    csrf: str

    @property
    def is_admin(self) -> bool:
        return bool(self.who.get("role") == "admin")

    @property
    def project_id(self) -> str:
        return str(self.who["project"]["id"])


@dataclass
class Flash:
    """A message shown at the top of a page."""

    kind: str  # "ok" | "error"
    text: str
    details: list[str] = field(default_factory=list)


def render(request: Request, template: str, status_code: int = 200,
           session: Session | None = None, **context: Any) -> HTMLResponse:
    """Render ``template`` with the security headers."""
    context.setdefault("flash", None)
    html = env.get_template(template).render(request=request, session=session,
                                             path=request.url.path, **context)
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


def _is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


async def open_session(request: Request) -> AsyncIterator[Session]:
    """The session dependency: refuses (LoginRequired) without a valid secret."""
    secret = request.cookies.get(SESSION_COOKIE)
    if not secret:
        raise LoginRequired
    api = Api(request, secret)
    try:
        who = await api.get("/v1/auth/tokens/current")
        if who.status in (401, 403):
            raise LoginRequired
        if not who.ok:
            raise UiError(who.status, who.problem)
        yield Session(api, who.body, csrf_for(secret))
    finally:
        await api.close()


async def checked_session(request: Request,
                          session: Session = Depends(open_session)) -> Session:
    """The session of a state-changing request whose CSRF token matches."""
    given = request.headers.get(CSRF_HEADER)
    if given is None:
        form = await request.form()
        value = form.get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    if not same(given, session.csrf):
        raise UiError(403, "The form is stale or came from another site (CSRF check failed). "
                           "Reload the page and try again.")
    return session


def expect(answer: ApiAnswer) -> Any:
    """The body of a successful answer; otherwise the error page with the API's status."""
    if answer.status == 401:
        raise LoginRequired
    if not answer.ok:
        raise UiError(answer.status, answer.problem)
    return answer.body


def _redirect(url: str, request: Request) -> Response:
    if _is_htmx(request):
        return Response(status_code=204, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)


# --------------------------------------------------------------------------- login, logout

@router.get("", response_class=HTMLResponse)
@router.get("/", response_class=HTMLResponse)
async def home(request: Request) -> Response:
    return RedirectResponse("/ui/servers", status_code=303)


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str = "/ui/servers") -> Response:
    token = new_login_csrf()
    response = render(request, "login.html", login_csrf=token, next=_safe_next(next),
                      flash=None, form={})
    set_login_csrf(response, request, token)
    return response


def _safe_next(target: str) -> str:
    """Only same-site console paths (no open redirect)."""
    if target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/servers"


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    form = await request.form()
    values = {k: v for k, v in form.items() if isinstance(v, str)}
    target = _safe_next(values.get("next", "/ui/servers"))
    if not same(values.get(CSRF_FIELD), request.cookies.get(LOGIN_CSRF_COOKIE)):
        return _login_again(request, values, target, "The login form expired. Try again.")
    api = Api(request, None)
    try:
        secret, expires_at = None, None
        if values.get("method") == "credential":
            secret = values.get("secret", "").strip()
            if secret:
                who = await Api(request, secret).get("/v1/auth/tokens/current")
                if not who.ok:
                    return _login_again(request, values, target,
                                        "That application credential is not valid.")
                expires_at = who.body.get("expires_at")
        else:
            answer = await api.call("POST", "/v1/auth/tokens", json={
                "user": values.get("user", ""), "password": values.get("password", ""),
                "project": values.get("project", "")})
            if answer.status == 429:
                return _login_again(request, values, target, answer.problem)
            if not answer.ok:
                return _login_again(request, values, target,
                                    "Wrong user, password or project."
                                    if answer.status in (401, 404, 422) else answer.problem)
            secret, expires_at = answer.body["token"], answer.body.get("expires_at")
        if not secret:
            return _login_again(request, values, target, "Enter a user and password, or an "
                                                         "application credential.")
    finally:
        await api.close()
    max_age = None
    if expires_at:
        ends = datetime.fromisoformat(str(expires_at).replace("Z", "+00:00"))
        max_age = max(0, int((ends - datetime.now(UTC)).total_seconds()))
    response = RedirectResponse(target, status_code=303)
    set_session(response, request, secret, max_age)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/ui")
    return response


def _login_again(request: Request, values: dict[str, str], target: str,
                 message: str) -> Response:
    token = new_login_csrf()
    safe_values = {k: values.get(k, "") for k in ("user", "project", "method")}
    response = render(request, "login.html", status_code=400, login_csrf=token, next=target,
                      flash=Flash("error", message), form=safe_values)
    set_login_csrf(response, request, token)
    return response


@router.post("/logout")
async def logout(request: Request, session: Session = Depends(checked_session)) -> Response:
    # Revokes a token; an application credential is only forgotten by the browser (delete it
    # under its owner's credentials to revoke it).
    if session.who.get("credential") == "token":
        await session.api.call("DELETE", "/v1/auth/tokens/current")
    response = _redirect("/ui/login", request)
    clear_session(response)
    return response


# ------------------------------------------------------------------------------- servers

STATUSES = ["ACTIVE", "BUILD", "SHUTOFF", "PAUSED", "REBOOT", "RESIZE", "DELETING", "ERROR"]


async def _servers_page(session: Session, status: str, name: str,
                        marker: str) -> dict[str, Any]:
    body = expect(await session.api.get("/v1/servers", status=status, name=name,
                                        marker=marker, limit=PAGE_SIZE))
    query = {"status": status, "name": name}
    next_url = None
    if body.get("next_marker"):
        next_url = "/ui/servers?" + urlencode({**query, "marker": body["next_marker"]})
    return {"servers": body["servers"], "next_url": next_url, "status": status, "name": name,
            "marker": marker, "statuses": STATUSES,
            "rows_url": "/ui/servers/rows?" + urlencode({**query, "marker": marker})}


@router.get("/servers", response_class=HTMLResponse)
async def servers(request: Request, status: str = "", name: str = "", marker: str = "",
                  session: Session = Depends(open_session)) -> Response:
    return render(request, "servers.html", session=session,
                  **await _servers_page(session, status, name, marker))


@router.get("/servers/rows", response_class=HTMLResponse)
async def server_rows(request: Request, status: str = "", name: str = "", marker: str = "",
                      session: Session = Depends(open_session)) -> Response:
    return render(request, "_server_rows.html", session=session,
                  **await _servers_page(session, status, name, marker))


async def _create_choices(session: Session) -> dict[str, Any]:
    api = session.api
    flavors, images, keys, groups, zones, quota = await asyncio.gather(
        api.get("/v1/flavors"), api.get("/v1/images"), api.get("/v1/keypairs"),
        api.get("/v1/server-groups"), api.get("/v1/availability-zones"),
        api.get(f"/v1/quotas/{session.project_id}"))
    return {"flavors": _items(expect(flavors), "flavors"),
            "images": [i for i in _items(expect(images), "images")
                       if i.get("status") == "active"],
            "keys": _items(expect(keys), "keypairs"),
            "groups": _items(expect(groups), "server_groups"),
            "zones": _items(expect(zones), "availability_zones"),
            "quota_rows": _quota_rows(expect(quota))}


def _items(body: Any, key: str) -> list[dict[str, Any]]:
    """A list answer's items, whether the API wraps them or not."""
    if isinstance(body, list):
        return body
    items = body.get(key, []) if isinstance(body, dict) else []
    return list(items)


def _quota_rows(quota: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for resource, limit in quota["limits"].items():
        used = quota["usage"].get(resource, 0)
        unlimited = limit is None or limit < 0
        rows.append({"resource": resource, "used": used, "limit": limit,
                     "unlimited": unlimited,
                     "left": None if unlimited else max(0, limit - used)})
    return rows


@router.get("/servers/new", response_class=HTMLResponse)
async def server_new(request: Request, session: Session = Depends(open_session)) -> Response:
    return render(request, "server_new.html", session=session, form={}, flash=None,
                  **await _create_choices(session))


def _create_body(values: dict[str, str]) -> dict[str, Any]:
    body: dict[str, Any] = {k: values.get(k, "").strip() for k in ("name", "flavor", "image")}
    for key in ("key_name", "server_group", "availability_zone"):
        if values.get(key):
            body[key] = values[key]
    if values.get("user_data", "").strip():
        body["user_data"] = values["user_data"]
    return body


@router.post("/servers/simulate", response_class=HTMLResponse)
async def server_simulate(request: Request,
                          session: Session = Depends(checked_session)) -> Response:
    values = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    spec = {k: v for k, v in _create_body(values).items()
            if k in ("flavor", "image", "server_group", "availability_zone") and v}
    answer = await session.api.call("POST", "/v1/scheduler/simulate", json=spec)
    if answer.status == 401:
        raise LoginRequired
    return render(request, "_simulate.html", session=session, answer=answer)


@router.post("/servers", response_class=HTMLResponse)
async def server_create(request: Request,
                        session: Session = Depends(checked_session)) -> Response:
    values = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    answer = await session.api.call("POST", "/v1/servers", json=_create_body(values))
    if answer.status == 401:
        raise LoginRequired
    if answer.ok:
        return _redirect(f"/ui/servers/{quote(answer.body['id'], safe='')}", request)
    flash = Flash("error", answer.problem, _problem_lines(answer))
    return render(request, "server_new.html", status_code=answer.status, session=session,
                  form=values, flash=flash, **await _create_choices(session))


def _problem_lines(answer: ApiAnswer) -> list[str]:
    """The explained parts of a problem: refusals per filter, validation errors."""
    body = answer.body if isinstance(answer.body, dict) else {}
    lines = [f"{name}: {count} host(s)"
             for name, count in (body.get("refusals_by_filter") or {}).items()]
    for error in body.get("errors") or []:
        if isinstance(error, dict):
            where = ".".join(str(p) for p in error.get("loc", []) if p != "body")
            lines.append(f"{where}: {error.get('msg', '')}".strip(": "))
    return lines


async def _server_detail(session: Session, server_id: str) -> dict[str, Any]:
    server, events, flavors = await asyncio.gather(
        session.api.get(f"/v1/servers/{quote(server_id, safe='')}"),
        session.api.get(f"/v1/servers/{quote(server_id, safe='')}/events", limit=50),
        session.api.get("/v1/flavors"))
    body = expect(server)
    items = _items(expect(events), "events")
    return {"server": body, "events": list(reversed(items)), "actions": _actions_for(body),
            "flavors": _items(expect(flavors), "flavors")}


def _actions_for(server: dict[str, Any]) -> list[str]:
    """The actions the API would accept now (it still decides: a refusal is shown)."""
    status = server["status"]
    if server.get("task_state") or status in ("DELETING", "BUILD"):
        return ["delete"]
    actions = {"ACTIVE": ["stop", "reboot", "pause", "resize", "delete"],
               "SHUTOFF": ["start", "resize", "delete"],
               "PAUSED": ["unpause", "delete"]}.get(status, ["delete"])
    return actions


@router.get("/servers/{server_id}", response_class=HTMLResponse)
async def server_detail(request: Request, server_id: str,
                        session: Session = Depends(open_session)) -> Response:
    detail = await _server_detail(session, server_id)
    return render(request, "server_detail.html", session=session, graphs=GRAPHS, **detail)


@router.get("/servers/{server_id}/live", response_class=HTMLResponse)
async def server_live(request: Request, server_id: str,
                      session: Session = Depends(open_session)) -> Response:
    answer = await session.api.get(f"/v1/servers/{quote(server_id, safe='')}")
    if answer.status == 404:
        return render(request, "_server_gone.html", session=session)
    detail = await _server_detail(session, server_id)
    return render(request, "_server_live.html", session=session, **detail)


@router.get("/servers/{server_id}/console", response_class=HTMLResponse)
async def server_console(request: Request, server_id: str,
                         session: Session = Depends(open_session)) -> Response:
    answer = await session.api.get(f"/v1/servers/{quote(server_id, safe='')}/console",
                                   lines=200)
    output = answer.body.get("output", "") if answer.ok else ""
    return render(request, "_console.html", session=session, output=output,
                  unavailable=None if answer.ok else answer.problem)


GRAPHS = {"cpu_util": "CPU %", "memory_used_mb": "Memory used (MiB)",
          "disk_write_bps": "Disk writes (bytes/s)", "net_rx_bps": "Network in (bytes/s)"}


@router.get("/servers/{server_id}/metrics.json")
async def server_metrics(request: Request, server_id: str, name: str = "cpu_util",
                         session: Session = Depends(open_session)) -> Response:
    """One metric of the last hour, for the detail page's graphs (the API's own series)."""
    if name not in GRAPHS:
        return JSONResponse({"error": "unknown metric"}, status_code=404)
    answer = await session.api.get(f"/v1/servers/{quote(server_id, safe='')}/metrics",
                                   name=name, step=60)
    if answer.status == 401:
        raise LoginRequired
    if not answer.ok:
        return JSONResponse({"error": answer.problem}, status_code=answer.status)
    return JSONResponse({"name": name, "label": GRAPHS[name], "unit": answer.body["unit"],
                         "points": [[p["at"], p["value"]] for p in answer.body["points"]]},
                        headers={"Cache-Control": "no-store"})


@router.post("/servers/{server_id}/action", response_class=HTMLResponse)
async def server_action(request: Request, server_id: str,
                        session: Session = Depends(checked_session)) -> Response:
    values = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    action = values.get("action", "")
    path = f"/v1/servers/{quote(server_id, safe='')}"
    if action == "delete":
        answer = await session.api.call("DELETE", path)
    else:
        body: dict[str, Any] = {"action": action}
        if action == "reboot":
            body["type"] = "HARD" if values.get("hard") else "SOFT"
        if action == "resize":
            body["flavor"] = values.get("flavor", "")
        answer = await session.api.call("POST", f"{path}/actions", json=body)
    if answer.status == 401:
        raise LoginRequired
    if answer.status == 404:
        raise UiError(404, answer.problem)
    if action == "delete" and answer.ok:
        return _redirect("/ui/servers", request)
    detail = await _server_detail(session, server_id)
    flash = (Flash("ok", f"{action} requested") if answer.ok
             else Flash("error", answer.problem, _problem_lines(answer)))
    return render(request, "server_detail.html", session=session, flash=flash, graphs=GRAPHS,
                  status_code=200 if answer.ok else answer.status, **detail)


# -------------------------------------------------------------------- images, groups, quota

@router.get("/images", response_class=HTMLResponse)
async def images(request: Request, session: Session = Depends(open_session)) -> Response:
    body = expect(await session.api.get("/v1/images"))
    return render(request, "images.html", session=session, images=_items(body, "images"))


@router.post("/images")
async def image_create(request: Request,
                       session: Session = Depends(checked_session)) -> Response:
    """Create the image record; the page then uploads the bytes with a progress bar."""
    values = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    body = {"name": values.get("name", ""), "disk_format": values.get("disk_format", "")}
    answer = await session.api.call("POST", "/v1/images", json=body)
    if answer.status == 401:
        raise LoginRequired
    if not answer.ok:
        return JSONResponse({"error": answer.problem}, status_code=answer.status)
    image_id = answer.body["id"]
    return JSONResponse({"id": image_id,
                         "upload": f"/ui/images/{quote(image_id, safe='')}/file"})


@router.put("/images/{image_id}/file")
async def image_upload(request: Request, image_id: str,
                       session: Session = Depends(checked_session)) -> Response:
    """Stream the browser's upload to the images API (never held in memory)."""
    answer = await session.api.call(
        "PUT", f"/v1/images/{quote(image_id, safe='')}/file", content=request.stream(),
        headers={"Content-Type": "application/octet-stream"})
    if answer.status == 401:
        raise LoginRequired
    if not answer.ok:
        return JSONResponse({"error": answer.problem}, status_code=answer.status)
    return JSONResponse({"status": answer.body.get("status")})


@router.get("/server-groups", response_class=HTMLResponse)
async def server_groups(request: Request, session: Session = Depends(open_session)) -> Response:
    body = expect(await session.api.get("/v1/server-groups"))
    return render(request, "server_groups.html", session=session,
                  groups=_items(body, "server_groups"), flash=None)


@router.post("/server-groups", response_class=HTMLResponse)
async def server_group_create(request: Request,
                              session: Session = Depends(checked_session)) -> Response:
    values = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    answer = await session.api.call("POST", "/v1/server-groups", json={
        "name": values.get("name", ""), "policy": values.get("policy", "")})
    if answer.status == 401:
        raise LoginRequired
    body = expect(await session.api.get("/v1/server-groups"))
    flash = (Flash("ok", "Server group created") if answer.ok
             else Flash("error", answer.problem, _problem_lines(answer)))
    return render(request, "server_groups.html", session=session,
                  groups=_items(body, "server_groups"), flash=flash,
                  status_code=200 if answer.ok else answer.status)


@router.get("/scaling-groups", response_class=HTMLResponse)
async def scaling_groups(request: Request,
                         session: Session = Depends(open_session)) -> Response:
    body = expect(await session.api.get("/v1/scaling-groups"))
    return render(request, "scaling_groups.html", session=session,
                  groups=_items(body, "scaling_groups"))


async def _scaling_group(session: Session, group_id: str) -> dict[str, Any]:
    path = f"/v1/scaling-groups/{quote(group_id, safe='')}"
    group, activities = await asyncio.gather(session.api.get(path),
                                             session.api.get(f"{path}/activities", limit=50))
    return {"group": expect(group), "activities": _items(expect(activities), "activities")}


@router.get("/scaling-groups/{group_id}", response_class=HTMLResponse)
async def scaling_group(request: Request, group_id: str,
                        session: Session = Depends(open_session)) -> Response:
    return render(request, "scaling_group.html", session=session,
                  **await _scaling_group(session, group_id))


@router.get("/scaling-groups/{group_id}/live", response_class=HTMLResponse)
async def scaling_group_live(request: Request, group_id: str,
                             session: Session = Depends(open_session)) -> Response:
    return render(request, "_scaling_live.html", session=session,
                  **await _scaling_group(session, group_id))


@router.post("/scaling-groups/{group_id}/desired", response_class=HTMLResponse)
async def scaling_group_desired(request: Request, group_id: str,
                                session: Session = Depends(checked_session)) -> Response:
    values = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    try:
        desired: Any = int(values.get("desired", ""))
    except ValueError:
        desired = values.get("desired", "")
    answer = await session.api.call("PATCH", f"/v1/scaling-groups/{quote(group_id, safe='')}",
                                    json={"desired": desired})
    if answer.status == 401:
        raise LoginRequired
    if answer.status == 404:
        raise UiError(404, answer.problem)
    flash = (Flash("ok", f"Desired size set to {desired}") if answer.ok
             else Flash("error", answer.problem, _problem_lines(answer)))
    return render(request, "scaling_group.html", session=session, flash=flash,
                  status_code=200 if answer.ok else answer.status,
                  **await _scaling_group(session, group_id))


@router.get("/quotas", response_class=HTMLResponse)
async def quotas(request: Request, session: Session = Depends(open_session)) -> Response:
    quota = expect(await session.api.get(f"/v1/quotas/{session.project_id}"))
    return render(request, "quotas.html", session=session, quota_rows=_quota_rows(quota))


# -------------------------------------------------------------------------------- usage

def _month_window(month: str) -> tuple[datetime, datetime, str]:
    now = datetime.now(UTC)
    try:
        start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC) if month else None
    except ValueError:
        raise UiError(400, "The month must look like 2026-11.") from None
    start = start or now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, min(end, max(now, start + timedelta(seconds=1))), start.strftime("%Y-%m")


@router.get("/usage", response_class=HTMLResponse)
async def usage(request: Request, month: str = "",
                session: Session = Depends(open_session)) -> Response:
    start, end, label = _month_window(month)
    window = {"start": start.isoformat(), "end": end.isoformat(),
              "project_id": session.project_id}
    by_server, by_day = await asyncio.gather(
        session.api.get("/v1/usage", group_by="server", **window),
        session.api.get("/v1/usage", group_by="day", **window))
    server_report, day_report = expect(by_server), expect(by_day)
    project = _project_of(server_report, session.project_id)
    days = []
    for period in day_report.get("periods", []):
        entry = _project_of(period, session.project_id)
        days.append({"day": str(period.get("start", ""))[:10],
                     "cost": float(entry.get("cost", 0) or 0),
                     "vcpu_hours": float(entry.get("vcpu_hours", 0) or 0)})
    prev_month = (start - timedelta(days=1)).strftime("%Y-%m")
    return render(request, "usage.html", session=session, month=label, project=project,
                  servers=project.get("servers", []), days=days, prev_month=prev_month,
                  csv_url="/ui/usage.csv?" + urlencode({"month": label}))


def _project_of(report: dict[str, Any], project_id: str) -> dict[str, Any]:
    for project in report.get("projects", []):
        if project.get("project_id") == project_id or project.get("id") == project_id:
            return dict(project)
    return {}


@router.get("/usage.csv")
async def usage_csv(request: Request, month: str = "",
                    session: Session = Depends(open_session)) -> Response:
    start, end, label = _month_window(month)
    answer = await session.api.call("GET", "/v1/usage", params={
        "start": start.isoformat(), "end": end.isoformat(),
        "project_id": session.project_id, "group_by": "server"},
        headers={"Accept": "text/csv"})
    if not answer.ok:
        raise UiError(answer.status, answer.problem)
    return Response(answer.text, media_type="text/csv", headers={
        "Content-Disposition": f'attachment; filename="usage-{label}.csv"',
        **SECURITY_HEADERS})


# ------------------------------------------------------------------------------ operators

def _admin(session: Session) -> None:
    if not session.is_admin:
        raise UiError(403, "This page is for operators (the admin role).")


def _host_rows(hosts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for host in hosts:
        bars = []
        for rc, res in sorted(host.get("resources", {}).items()):
            capacity = int(res.get("capacity", 0))
            allocated = int(res.get("allocated", 0))
            bars.append({"rc": rc, "allocated": allocated, "capacity": capacity,
                         "percent": 0 if capacity <= 0 else
                         min(100, math.floor(100 * allocated / capacity))})
        rows.append({**host, "bars": bars})
    return rows


async def _hosts(session: Session, marker: str) -> dict[str, Any]:
    answer = await session.api.get("/v1/hosts", limit=HOSTS_PAGE_SIZE, marker=marker)
    body = expect(answer)
    hosts = _items(body, "hosts")
    next_url = None
    link = answer.headers.get("link", "")
    if 'rel="next"' in link:
        after = link.split("marker=", 1)[1].split(">", 1)[0].split("&", 1)[0]
        next_url = "/ui/admin/hosts?" + urlencode({"marker": after})
    return {"hosts": _host_rows(hosts), "next_url": next_url,
            "rows_url": "/ui/admin/hosts/rows?" + urlencode({"marker": marker})}


@router.get("/admin/hosts", response_class=HTMLResponse)
async def admin_hosts(request: Request, marker: str = "",
                      session: Session = Depends(open_session)) -> Response:
    _admin(session)
    return render(request, "admin_hosts.html", session=session, flash=None, enroll=None,
                  **await _hosts(session, marker))


@router.get("/admin/hosts/rows", response_class=HTMLResponse)
async def admin_host_rows(request: Request, marker: str = "",
                          session: Session = Depends(open_session)) -> Response:
    _admin(session)
    return render(request, "_host_rows.html", session=session,
                  **await _hosts(session, marker))


@router.post("/admin/hosts/{host_id}/state", response_class=HTMLResponse)
async def admin_host_state(request: Request, host_id: str,
                           session: Session = Depends(checked_session)) -> Response:
    _admin(session)
    values = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    enabled = values.get("enabled") == "true"
    patch: dict[str, Any] = {"enabled": enabled}
    if not enabled and values.get("reason"):
        patch["disabled_reason"] = values["reason"]
    answer = await session.api.call("PATCH", f"/v1/hosts/{quote(host_id, safe='')}",
                                    json=patch)
    if answer.status == 401:
        raise LoginRequired
    flash = (Flash("ok", f"Host {'enabled' if enabled else 'disabled'}") if answer.ok
             else Flash("error", answer.problem))
    return render(request, "admin_hosts.html", session=session, flash=flash, enroll=None,
                  **await _hosts(session, ""))


@router.post("/admin/hosts/{host_id}/evacuate", response_class=HTMLResponse)
async def admin_host_evacuate(request: Request, host_id: str,
                              session: Session = Depends(checked_session)) -> Response:
    """Rebuild every server of a down host elsewhere (the API refuses a host that is up)."""
    _admin(session)
    answer = await session.api.call("POST", f"/v1/hosts/{quote(host_id, safe='')}/evacuate")
    if answer.status == 401:
        raise LoginRequired
    if answer.ok:
        servers = answer.body.get("servers", [])
        flash = Flash("ok", f"Evacuating {answer.body.get('host', '')}: "
                            f"{len(servers)} server(s)",
                      [f"{s.get('name', '')}: {s.get('result', '')}"
                       + (f" on {s['target_host']}" if s.get("target_host") else "")
                       + (f" ({s['detail']})" if s.get("detail") else "")
                       for s in servers if isinstance(s, dict)])
    else:
        flash = Flash("error", answer.problem, _problem_lines(answer))
    return render(request, "admin_hosts.html", session=session, flash=flash, enroll=None,
                  status_code=200 if answer.ok else answer.status, **await _hosts(session, ""))


@router.post("/admin/hosts/{host_id}/drain", response_class=HTMLResponse)
async def admin_host_drain(request: Request, host_id: str,
                           session: Session = Depends(checked_session)) -> Response:
    """Start (or, with ``cancel``, end) moving every server off a host."""
    _admin(session)
    values = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    method = "DELETE" if values.get("cancel") else "POST"
    answer = await session.api.call(method, f"/v1/hosts/{quote(host_id, safe='')}/drain")
    if answer.status == 401:
        raise LoginRequired
    if answer.ok:
        body = answer.body
        flash = Flash("ok", "Drain cancelled" if method == "DELETE" else
                      f"Draining: {body.get('servers_left', 0)} server(s) left, "
                      f"{len(body.get('moving', []))} moving",
                      [f"{r.get('server_id', '')}: {r.get('reason', '')}"
                       for r in body.get("refused", []) if isinstance(r, dict)])
    else:
        flash = Flash("error", answer.problem, _problem_lines(answer))
    return render(request, "admin_hosts.html", session=session, flash=flash, enroll=None,
                  status_code=200 if answer.ok else answer.status,
                  **await _hosts(session, ""))


@router.post("/admin/enrollment-token", response_class=HTMLResponse)
async def admin_enrollment_token(request: Request,
                                 session: Session = Depends(checked_session)) -> Response:
    _admin(session)
    answer = await session.api.call("POST", "/v1/hosts/enrollment-tokens")
    body = expect(answer)
    api_url = str(request.base_url).rstrip("/")
    enroll = {"token": body["token"], "expires_at": body.get("expires_at"),
              "command": ("sudo bash deploy/install-compute.sh --api "
                          f"{api_url} --token {body['token']} --name NODE --az nova")}
    return render(request, "admin_hosts.html", session=session, flash=None, enroll=enroll,
                  **await _hosts(session, ""))


@router.get("/admin/capacity", response_class=HTMLResponse)
async def admin_capacity(request: Request, flavor: str = "",
                         session: Session = Depends(open_session)) -> Response:
    _admin(session)
    flavors = _items(expect(await session.api.get("/v1/flavors")), "flavors")
    zones = _items(expect(await session.api.get("/v1/availability-zones")),
                   "availability_zones")
    results = []
    if flavor:
        names = [z.get("name") for z in zones] or [None]
        answers = await asyncio.gather(*[
            session.api.call("POST", "/v1/scheduler/simulate",
                             json={"flavor": flavor, **({"availability_zone": z} if z else {})})
            for z in names])
        for zone, answer in zip(names, answers, strict=True):
            results.append({"zone": zone or "all", "ok": answer.ok,
                            "additional": answer.body["capacity"]["additional"]
                            if answer.ok else None,
                            "error": None if answer.ok else answer.problem})
    return render(request, "admin_capacity.html", session=session, flavors=flavors,
                  flavor=flavor, results=results)


@router.get("/admin/projects", response_class=HTMLResponse)
async def admin_projects(request: Request, session: Session = Depends(open_session)) -> Response:
    _admin(session)
    projects = _items(expect(await session.api.get("/v1/projects")), "projects")
    users = _items(expect(await session.api.get("/v1/users")), "users")
    quotas = await asyncio.gather(*[session.api.get(f"/v1/quotas/{quote(p['id'], safe='')}")
                                    for p in projects[:50]])
    rows = []
    for project, quota in zip(projects[:50], quotas, strict=True):
        rows.append({**project, "quota": _quota_rows(quota.body) if quota.ok else []})
    return render(request, "admin_projects.html", session=session, projects=rows,
                  users=users, more=len(projects) > 50)


@router.get("/admin/billing", response_class=HTMLResponse)
async def admin_billing(request: Request, session: Session = Depends(open_session)) -> Response:
    _admin(session)
    rates, periods = await asyncio.gather(session.api.get("/v1/rates"),
                                          session.api.get("/v1/usage/periods"))
    return render(request, "admin_billing.html", session=session,
                  rates=_items(expect(rates), "rate_cards"),
                  periods=_items(expect(periods), "periods"), flash=None)


@router.post("/admin/billing/close", response_class=HTMLResponse)
async def admin_close_period(request: Request,
                             session: Session = Depends(checked_session)) -> Response:
    _admin(session)
    values = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    period = values.get("period", "")
    answer = await session.api.call("POST", f"/v1/usage/periods/{quote(period, safe='')}/close")
    if answer.status == 401:
        raise LoginRequired
    rates, periods = await asyncio.gather(session.api.get("/v1/rates"),
                                          session.api.get("/v1/usage/periods"))
    flash = (Flash("ok", f"Period {period} closed") if answer.ok
             else Flash("error", answer.problem))
    return render(request, "admin_billing.html", session=session,
                  rates=_items(expect(rates), "rate_cards"),
                  periods=_items(expect(periods), "periods"), flash=flash,
                  status_code=200 if answer.ok else answer.status)


# ----------------------------------------------------------------------------- app wiring

def install(app: FastAPI) -> None:
    """Serve the console at /ui: pages, static assets and its error pages."""
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        target = "/ui/login?" + urlencode({"next": request.url.path})
        response = _redirect(target, request)
        if request.cookies.get(SESSION_COOKIE):
            clear_session(response)
        return response

    @app.exception_handler(UiError)
    async def ui_error(request: Request, exc: UiError) -> Response:
        titles = {403: "Forbidden", 404: "Not found"}
        return render(request, "error.html", status_code=exc.status,
                      title=titles.get(exc.status, "Something went wrong"),
                      message=exc.message)
