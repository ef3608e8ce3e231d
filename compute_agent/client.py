"""The agent's typed HTTP client for the API's agent endpoints (never imports ``api``).

Every call except enrollment is safe to repeat, so transport errors and 5xx answers are
retried with bounded exponential backoff (a 503 or 429 after its ``Retry-After`` instead):
inventory and console are PUTs, heartbeats re-apply level-triggered observations, and
``observe`` sends one idempotency key for all its attempts.
4xx answers raise ``AgentApiError`` at once, with the API's stable ``code``.
"""

from __future__ import annotations

import random
import ssl
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import httpx
from pydantic import BaseModel, ConfigDict

ObservedState = Literal["running", "shutoff", "paused", "absent", "error"]
DesiredPower = Literal["running", "shutoff", "paused", "absent"]


class _Model(BaseModel):
    # Ignore fields a newer API adds, so an older agent keeps working.
    model_config = ConfigDict(extra="ignore")


class Enrollment(_Model):
    """The result of enrolling: keep ``credential`` secret (mode 0600)."""

    host_id: str
    credential: str


class InventoryItem(_Model):
    """One resource class; ``reserved`` None leaves the API's value (admin-set) alone."""

    total: int
    reserved: int | None = None
    min_unit: int = 1
    max_unit: int | None = None


class Resource(_Model):
    """A resource class as the API stores it."""

    total: int
    reserved: int
    allocation_ratio: float
    capacity: int
    allocated: int
    min_unit: int
    max_unit: int | None


class InventoryResult(_Model):
    """The stored inventory; ``overcommitted`` lists classes allocated beyond capacity."""

    resources: dict[str, Resource]
    overcommitted: list[str]


class MigrationEndpointOut(_Model):
    """How other hosts reach this host as a live-migration destination (registered with the
    inventory): its libvirtd URI, QEMU's migration address and port range, and where this
    agent keeps instances and cached images."""

    libvirt_uri: str
    migrate_uri: str
    port_min: int
    port_max: int
    instances_dir: str
    image_cache_dir: str


class MigrationProgressResult(_Model):
    """The API's answer to a progress report; ``abort``: abort the copy."""

    migration_id: str
    progress: int
    abort: bool


class Observation(_Model):
    """A server state the agent saw, for heartbeats."""

    server_id: str
    state: ObservedState
    seen_at: datetime


class GuestSample(_Model):
    """One server's libvirt counters (cumulative) and memory figures for a metrics batch."""

    server_id: str
    cpu_time_ns: int = 0
    vcpus: int = 0
    memory_kib: int = 0
    memory_unused_kib: int | None = None
    memory_rss_kib: int | None = None
    disk_read_bytes: int = 0
    disk_write_bytes: int = 0
    net_rx_bytes: int = 0
    net_tx_bytes: int = 0


class GuestSamplesResult(_Model):
    """What the API did with a metrics batch (``ignored``: not its servers on this host)."""

    accepted: int
    ignored: list[str]


class FailingServer(_Model):
    """A server whose reconcile failed on its last attempt (retried with backoff)."""

    server_id: str
    message: str


class LoopProgress(_Model):
    """The reconcile loop's progress, carried by every heartbeat: passes completed since the
    agent started, when the current pass started, when the last one ended, and the servers
    failing (``failing_count`` of them; ``failing`` names the first few)."""

    passes: int
    pass_started_at: datetime | None = None
    last_pass_at: datetime | None = None
    failing_count: int = 0
    failing: list[FailingServer] = []


class HeartbeatResult(_Model):
    """What the API did with a heartbeat."""

    host_id: str
    last_heartbeat_at: datetime
    applied: int
    ignored: list[str]
    heartbeat_interval_seconds: int
    # The API asks for every observation in the next heartbeat, at once.
    full_report: bool = False


class Flavor(_Model):
    """Sizes of a server."""

    vcpus: int
    ram_mb: int
    disk_gb: int


class ImageRef(_Model):
    """The image to fetch (verify ``sha256``) and how to boot it."""

    id: str
    sha256: str | None
    disk_format: str
    size: int | None
    kernel_id: str | None = None
    ramdisk_id: str | None = None
    kernel_cmdline: str | None = None


class Operation(_Model):
    """A one-shot operation to perform once (``kind`` names the agent's handler), then report
    as ``{operation_id, result}`` in an observation. A kind this agent does not know is left
    pending (a newer API's operation waits for an upgraded agent)."""

    id: str
    kind: str
    params: dict[str, Any] = {}


class DesiredServer(_Model):
    """One server the host should run (or remove, when ``desired`` is absent)."""

    server_id: str
    project_id: str
    name: str
    hostname: str
    flavor: Flavor
    image: ImageRef
    user_data: str | None
    key_data: str | None
    desired: DesiredPower
    operation: Operation | None = None
    status: str
    task_state: str | None
    generation: int


class DesiredState(_Model):
    """Every server of the host; pass ``cursor`` to the next ``desired_servers`` call."""

    cursor: str
    servers: list[DesiredServer]


class Address(_Model):
    """A guest address from libvirt's DHCP leases."""

    ip: str
    mac: str | None = None
    network: str | None = None


class ObservationResult(_Model):
    """The server after an observation; ``applied`` False for a duplicate or stale one."""

    server_id: str
    status: str
    task_state: str | None
    power_state: str | None
    applied: bool


class FenceReport(_Model):
    """What the agent removed for one evacuated server (``POST /v1/agent/fencing``).

    ``domain``: ``destroyed`` (it was running), ``undefined`` (defined, off) or ``absent``.
    """

    server_id: str
    domain: Literal["destroyed", "undefined", "absent"]
    files_removed: bool


class AgentApiError(Exception):
    """The API refused a request (4xx), or kept failing (5xx, transport) after retries.

    ``status`` is 0 for a transport failure; ``code`` is the API's stable error code.
    """

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail = status, code, detail


def _error_of(response: httpx.Response) -> AgentApiError:
    try:
        body = response.json()
        code, detail = str(body.get("code", "http_error")), str(body.get("detail", ""))
    except ValueError:
        code, detail = "http_error", response.text[:200]
    return AgentApiError(response.status_code, code, detail)


def tls_verify(ca_bundle: Path | None) -> ssl.SSLContext | bool:
    """How to verify the API's TLS certificate: against ``ca_bundle`` (a PEM file) when set,
    else the default trust store (True). Only ``https://`` API URLs use it.

    Raises:
        OSError: the bundle cannot be read.
        ssl.SSLError: the bundle holds no valid certificate.
    """
    return True if ca_bundle is None else ssl.create_default_context(cafile=str(ca_bundle))


MAX_RETRY_AFTER = 60.0
"""The longest ``Retry-After`` the agent honours, in seconds."""


def retry_after(response: httpx.Response) -> float | None:
    """The delay a 503 or 429 answer asks for (its ``Retry-After`` seconds, at most
    ``MAX_RETRY_AFTER``), or None for any other answer."""
    if response.status_code not in (429, 503):
        return None
    try:
        return min(max(float(response.headers.get("Retry-After", "")), 0.0), MAX_RETRY_AFTER)
    except ValueError:  # absent, or an HTTP date: fall back to the caller's own backoff
        return None


def jittered(delay: float) -> float:
    """``delay`` plus up to half of it at random, so refused clients do not return together."""
    return delay * (1 + random.random() / 2)


def spread(delay: float, over: float) -> float:
    """A retry delay of at least ``delay`` drawn evenly up to ``over`` (or :func:`jittered`
    when ``over`` is shorter): a periodic report refused by a saturated API comes back at a
    random point of its period, so the refused fleet does not return as one wave and the
    offered load stays one report per period."""
    return delay + random.random() * max(over - delay, delay / 2)


class _FileBody:
    """A file's bytes as a body that can be sent again (each retry re-reads the file)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __iter__(self) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk


KEEPALIVE_SECONDS = 20.0
"""How long an idle connection to the API is kept (the API keeps them 30 s)."""


class AgentClient:
    """A compute agent's connection to the API, authenticated by its host credential."""

    def __init__(self, base_url: str, credential: str, timeout: float = 10.0, *,
                 retries: int = 5, backoff: float = 0.2, max_backoff: float = 5.0,
                 verify: ssl.SSLContext | bool = True) -> None:
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        # Idle connections are kept 20 s, across a 10 s heartbeat interval (httpx's default,
        # 5 s, would open a connection per heartbeat) and below the API's 30 s.
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, verify=verify,
                                  headers={"Authorization": f"Bearer {credential}"},
                                  limits=httpx.Limits(keepalive_expiry=KEEPALIVE_SECONDS))
        # The last desired state received: a long-poll answered 304 Not Modified returns it.
        self._desired: DesiredState | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    @classmethod
    def enroll(cls, base_url: str, token: str, *, name: str, libvirt_uri: str,
               virt_type: Literal["kvm", "qemu"], availability_zone: str = "nova",
               architecture: str = "x86_64", timeout: float = 10.0,
               verify: ssl.SSLContext | bool = True) -> Enrollment:
        """Enroll this host with a single-use token; raises AgentApiError.

        Not retried after the request may have reached the API: the token is single use, so
        a blind retry would fail with ``invalid_enrollment_token``. Only connection failures
        (nothing sent) are retried.
        """
        body = {"token": token, "name": name, "availability_zone": availability_zone,
                "libvirt_uri": libvirt_uri, "virt_type": virt_type,
                "architecture": architecture}
        delay = 0.2
        for attempt in range(5):
            try:
                r = httpx.post(base_url.rstrip("/") + "/v1/agent/enroll", json=body,
                               timeout=timeout, verify=verify)
                # 503/429 with Retry-After: refused before any work, the token is unused.
                if (hint := retry_after(r)) is None or attempt == 4:
                    break
                time.sleep(jittered(hint))
            except httpx.ConnectError as exc:
                if attempt == 4:
                    raise AgentApiError(0, "unreachable", str(exc)) from exc
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        if r.status_code != 201:
            raise _error_of(r)
        return Enrollment.model_validate(r.json())

    # ------------------------------------------------------------ requests with retries

    def _sleep(self, attempt: int, hint: float | None = None,
               busy_spread: float | None = None) -> None:
        if hint is not None:
            time.sleep(jittered(hint) if busy_spread is None else spread(hint, busy_spread))
        else:
            time.sleep(min(self.backoff * 2**attempt, self.max_backoff))

    def _request(self, method: str, path: str, *, timeout: float | None = None,
                 busy_spread: float | None = None, **kwargs: Any) -> httpx.Response:
        """Send with retries on transport errors and 5xx; raises AgentApiError.

        ``busy_spread``: a refusal with ``Retry-After`` is retried at a random point between
        that delay and ``busy_spread`` seconds (:func:`spread`) instead of right after it.
        """
        last: AgentApiError | None = None
        hint: float | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(attempt - 1, hint, busy_spread)
            try:
                r = self._http.request(method, path, timeout=timeout or self.timeout, **kwargs)
            except httpx.TransportError as exc:
                last, hint = AgentApiError(0, "unreachable", str(exc)), None
                continue
            hint = retry_after(r)
            if r.status_code >= 500 or hint is not None:
                last = _error_of(r)
                continue
            if r.status_code >= 400:
                raise _error_of(r)
            return r
        assert last is not None
        raise last

    # ------------------------------------------------------------ endpoints

    def put_inventory(self, inventory: dict[str, InventoryItem],
                      migration: MigrationEndpointOut | None = None) -> InventoryResult:
        """Report the host's resources (VCPU, MEMORY_MB, DISK_GB) and its live-migration
        endpoint (None: it takes no live migrations); raises AgentApiError."""
        body: dict[str, Any] = {rc: item.model_dump() for rc, item in inventory.items()}
        for item in body.values():
            if item["reserved"] is None:
                del item["reserved"]
        body["migration"] = migration.model_dump() if migration is not None else None
        return InventoryResult.model_validate(
            self._request("PUT", "/v1/agent/inventory", json=body).json())

    def migration_progress(self, server_id: str, *, data_total: int, data_processed: int,
                           data_remaining: int) -> MigrationProgressResult:
        """Report a live migration's copy (this host is its source); raises AgentApiError
        (404 once the move is no longer in its copy step from this host)."""
        body = {"data_total": data_total, "data_processed": data_processed,
                "data_remaining": data_remaining}
        return MigrationProgressResult.model_validate(self._request(
            "POST", f"/v1/agent/servers/{server_id}/migration-progress", json=body).json())

    def set_credential(self, credential: str) -> None:
        """Authenticate every later request with ``credential`` (after a rotation)."""
        self._http.headers["Authorization"] = f"Bearer {credential}"

    def rotate_credential(self, new_credential: str) -> Enrollment:
        """Make ``new_credential`` (``config.new_host_secret``) the host's only credential;
        raises AgentApiError (401 once the credential this client sends is no longer valid).

        Repeating it with the same secret changes nothing, so it is retried like any call.
        """
        return Enrollment.model_validate(self._request(
            "POST", "/v1/agent/credential", json={"credential": new_credential}).json())

    def heartbeat(self, observed: list[Observation] | None = None,
                  foreign: dict[str, str] | None = None,
                  progress: LoopProgress | None = None, *, full: bool = True,
                  busy_spread: float | None = None) -> HeartbeatResult:
        """Say the host is alive, with the states it sees, (``foreign``: server id -> host
        id; None: unchanged) the other hosts' domains it quarantined and its reconcile loop's
        ``progress``; ``full=False``: ``observed`` holds only what changed since the last
        acknowledged heartbeat. ``busy_spread``: a refusal is retried at a random point of
        that many seconds (the heartbeat interval), not all of them after ``Retry-After``.
        Raises AgentApiError."""
        body: dict[str, Any] = {"observed": [o.model_dump(mode="json") for o in observed or []],
                                "full": full}
        if foreign is not None:
            body["foreign"] = [{"server_id": s, "host_id": h} for s, h in sorted(foreign.items())]
        if progress is not None:
            body["progress"] = progress.model_dump(mode="json")
        return HeartbeatResult.model_validate(
            self._request("POST", "/v1/agent/heartbeat", json=body,
                          busy_spread=busy_spread).json())

    def report_guest_metrics(self, at: datetime, samples: list[GuestSample]) -> GuestSamplesResult:
        """Send one interval's statistics of the host's servers; raises AgentApiError."""
        body = {"at": at.isoformat(), "samples": [s.model_dump(mode="json") for s in samples]}
        return GuestSamplesResult.model_validate(
            self._request("POST", "/v1/agent/guest-metrics", json=body).json())

    def desired_servers(self, since: str | None = None, wait: float = 0) -> DesiredState:
        """Every server of this host; waits up to ``wait`` s (max 30) while ``since`` is current.

        A wait that ends with nothing changed is answered 304 Not Modified: the state this
        client received last is returned again (asked for anew when it does not have it).
        Raises AgentApiError.
        """
        params: dict[str, Any] = {"wait": wait}
        if since is not None:
            params["since"] = since
        r = self._request("GET", "/v1/agent/servers", params=params,
                          timeout=self.timeout + wait)
        if r.status_code == 304:
            if self._desired is not None and self._desired.cursor == since:
                return self._desired
            r = self._request("GET", "/v1/agent/servers")
        state = DesiredState.model_validate(r.json())
        self._desired = state
        return state

    def observe(self, server_id: str, state: ObservedState, seen_at: datetime | None = None, *,
                idempotency_key: str | None = None, operation_id: str | None = None,
                message: str | None = None,
                addresses: list[Address] | None = None,
                unexpected_stop: str | None = None) -> ObservationResult:
        """Report a transition seen at ``seen_at`` (default now); raises AgentApiError.

        ``operation_id``: the pending operation performed (reported with result ``success``).
        ``unexpected_stop``: libvirt's reason for a domain that should run and stopped without
        being asked (reported before the agent starts it again).

        All retries carry the same idempotency key (a new random one unless given), so the
        API applies the observation at most once.
        """
        body: dict[str, Any] = {
            "state": state,
            "seen_at": (seen_at or datetime.now(UTC)).isoformat(),
            "idempotency_key": idempotency_key or f"obs-{uuid.uuid4()}",
        }
        if operation_id is not None:
            body["operation"] = {"operation_id": operation_id, "result": "success"}
        if message is not None:
            body["message"] = message[:4096]
        if addresses is not None:
            body["addresses"] = [a.model_dump(exclude_none=True) for a in addresses]
        if unexpected_stop is not None:
            body["unexpected_stop"] = unexpected_stop
        r = self._request("POST", f"/v1/agent/servers/{server_id}/observations", json=body)
        return ObservationResult.model_validate(r.json())

    def put_console(self, server_id: str, tail: bytes) -> None:
        """Replace the stored console tail of a server; raises AgentApiError."""
        self._request("PUT", f"/v1/agent/servers/{server_id}/console", content=tail,
                      headers={"Content-Type": "text/plain; charset=utf-8"})

    def image_sha256(self, image_id: str) -> str:
        """The sha256 the API recorded for an image (its ``X-Image-Sha256`` download header).

        Needed for kernel and ramdisk images, which the desired state names only by id. Only
        the answer's headers are read; the body is not downloaded. Raises AgentApiError.
        """
        path = f"/v1/images/{image_id}/file"
        last: AgentApiError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(attempt - 1)
            try:
                with self._http.stream("GET", path) as r:
                    if r.status_code != 200:
                        r.read()
                        last = _error_of(r)
                        if r.status_code >= 500:
                            continue
                        raise last
                    digest = str(r.headers.get("X-Image-Sha256", ""))
                    if not digest:
                        raise AgentApiError(502, "no_image_digest",
                                            f"image {image_id} has no recorded sha256")
                    return digest
            except httpx.TransportError as exc:
                last = AgentApiError(0, "unreachable", str(exc))
        assert last is not None
        raise last

    def download_image(self, image_id: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Stream an image's bytes; raises AgentApiError.

        Opening the stream is retried like any call; a failure in the middle raises, and the
        caller (which verifies sha256 anyway) starts the download again.
        """
        path = f"/v1/images/{image_id}/file"
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(attempt - 1)
            try:
                with self._http.stream("GET", path) as r:
                    if r.status_code >= 500 and attempt < self.retries:
                        continue
                    if r.status_code != 200:
                        r.read()
                        raise _error_of(r)
                    try:
                        yield from r.iter_bytes(chunk_size)
                    except httpx.TransportError as exc:
                        raise AgentApiError(0, "download_interrupted", str(exc)) from exc
                    return
            except httpx.TransportError as exc:
                if attempt >= self.retries:
                    raise AgentApiError(0, "unreachable", str(exc)) from exc

    def fence_orders(self) -> list[str]:
        """Servers evacuated from this host whose old copies must go; raises AgentApiError."""
        r = self._request("GET", "/v1/agent/fencing")
        return [str(s) for s in r.json()["server_ids"]]

    def report_fenced(self, reports: list[FenceReport]) -> list[str]:
        """Report old copies removed; returns the orders still open. Raises AgentApiError."""
        body = {"fenced": [rep.model_dump() for rep in reports]}
        r = self._request("POST", "/v1/agent/fencing", json=body)
        return [str(s) for s in r.json()["pending"]]

    # ------------------------------------------------------------ cold migration relay

    def put_migration_file(self, server_id: str, name: str, path: Path, sha256: str) -> None:
        """Send one file of the server's cold migration (``disk`` or ``seed``) to the API's
        relay, streamed, with its sha256; raises AgentApiError."""
        url = f"/v1/agent/servers/{server_id}/migration/{name}"

        size = path.stat().st_size
        self._request("PUT", url, content=_FileBody(path), timeout=max(self.timeout, 600.0),
                      headers={"X-Content-Sha256": sha256,
                               "Content-Type": "application/octet-stream",
                               "Content-Length": str(size)})

    def get_migration_file(self, server_id: str, name: str, dest: Path) -> str:
        """Fetch one relayed file of the server's cold migration into ``dest``; returns the
        sha256 the API announced (the caller checks it). Raises AgentApiError."""
        url = f"/v1/agent/servers/{server_id}/migration/{name}"
        try:
            with self._http.stream("GET", url, timeout=max(self.timeout, 600.0)) as r:
                if r.status_code != 200:
                    r.read()
                    raise _error_of(r)
                with open(dest, "wb") as out:
                    for chunk in r.iter_bytes(1 << 20):
                        out.write(chunk)
                return str(r.headers.get("X-Content-Sha256", ""))
        except httpx.TransportError as exc:
            raise AgentApiError(0, "unreachable", str(exc)) from exc


__all__ = [
    "Address",
    "AgentApiError",
    "AgentClient",
    "DesiredServer",
    "DesiredState",
    "Enrollment",
    "FailingServer",
    "FenceReport",
    "HeartbeatResult",
    "InventoryItem",
    "InventoryResult",
    "LoopProgress",
    "Observation",
    "ObservationResult",
]
