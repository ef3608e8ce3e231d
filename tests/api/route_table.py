"""Every HTTP operation of the app, found by introspection, with the guard it depends on.

Tests that must cover the whole API enumerate operations from here, so an endpoint added
later is covered without touching those tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel

from api import deps
from api.images.routes import get_image_reader
from api.openstack import auth as os_auth
from api.openstack.errors import PREFIXES as OPENSTACK_PREFIXES

# What authenticates a request, strongest first: an operation's guard is the first of these
# found anywhere in its dependency tree.
GUARDS: list[tuple[str, Callable[..., Any]]] = [
    ("admin", deps.admin_principal),
    ("writer", deps.require_writer),
    ("reader_or_host", get_image_reader),  # image download: any user, or an enrolled host
    ("user", deps.current_principal),
    ("host", deps.get_host_principal),
    # The OpenStack surface's guards (X-Auth-Token) apply the same roles.
    ("admin", os_auth.os_admin),
    ("writer", os_auth.os_writer),
    ("user", os_auth.os_principal),
]

# Operations without an authentication dependency, each with the reason.
PUBLIC = {
    ("GET", "/healthz"),  # liveness probe
    ("GET", "/readyz"),  # readiness probe
    ("POST", "/v1/auth/tokens"),  # login: the password is the credential
    ("POST", "/v1/agent/enroll"),  # the single-use enrollment token in the body is the credential
}
# Authenticated inside the handler rather than by a dependency, with the reason.
SELF_AUTHENTICATED = {
    # The long poll must not hold a database session while it waits, so it checks the host
    # credential in a short unit of work of its own (api/agent/routes.py::_authenticate).
    ("GET", "/v1/agent/servers"): "host",
    # Every host calls it each interval: the credential check and the heartbeat share one
    # worker-thread call instead of a thread hop per dependency (api/agent/routes.py).
    ("POST", "/v1/agent/heartbeat"): "host",
}

WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")


@dataclass(frozen=True)
class Operation:
    """One method on one path, and what guards it."""

    method: str
    path: str
    guard: str | None
    route: APIRoute

    @property
    def params(self) -> list[str]:
        """Names of the path parameters, in order."""
        return _PARAM.findall(self.path)

    @property
    def body_model(self) -> type[BaseModel] | None:
        """The pydantic model of the JSON body, if the operation takes one."""
        field = self.route.body_field
        if field is None:
            return None
        model = getattr(field, "type_", None) or field.field_info.annotation
        return model if isinstance(model, type) and issubclass(model, BaseModel) else None

    @property
    def body_annotation(self) -> Any:
        """The type of the JSON body (a model or a union of models), or None."""
        field = self.route.body_field
        return None if field is None else field.field_info.annotation

    def url(self, values: dict[str, str]) -> str:
        """The path with each parameter replaced by ``values[name]``."""
        return _PARAM.sub(lambda m: values[m.group(1)], self.path)

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _calls(sub)


def _api_routes(routes: list[Any], extra_deps: tuple[Any, ...] = ()) -> Iterator[
        tuple[APIRoute, tuple[Any, ...]]]:
    # FastAPI >= 0.16x keeps included routers as lazy branches; walk into them, carrying the
    # dependencies an include_router(..., dependencies=...) adds.
    for route in routes:
        if isinstance(route, APIRoute):
            yield route, extra_deps
        elif hasattr(route, "original_router"):
            ctx = route.include_context
            assert not ctx.prefix, "route_table assumes routers carry their own prefix"
            yield from _api_routes(route.original_router.routes,
                                   extra_deps + tuple(d.dependency for d in ctx.dependencies))


def operations(app: FastAPI, *, openstack: bool = False) -> list[Operation]:
    """Every (method, path) the app serves through an APIRoute, with its guard.

    The OpenStack surface (/identity, /compute, /image) is left out unless ``openstack``: its
    errors take the OpenStack services' shapes, not problem+json, and it is not in
    /openapi.json, so the problem+json tables cannot hold for it. With ``openstack`` only its
    operations are listed (tests/api/test_openstack_api.py checks them the same way).
    """
    found = []
    for route, extra in _api_routes(list(app.routes)):
        # The web console (/ui) is HTML over the API, not part of it (tests/ui).
        if route.path.startswith("/ui"):
            continue
        if route.path.startswith(OPENSTACK_PREFIXES) != openstack:
            continue
        calls = set(_calls(route.dependant)) | set(extra)
        calls |= {d.dependency for d in route.dependencies}
        guard = next((name for name, fn in GUARDS if fn in calls), None)
        for method in sorted((route.methods or set()) - {"HEAD", "OPTIONS"}):
            if guard is None:
                guard = SELF_AUTHENTICATED.get((method, route.path))
            found.append(Operation(method, route.path, guard, route))
    return found
