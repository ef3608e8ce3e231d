"""The compute agent daemon: joins the API client and the libvirt side.

One ``Agent`` serves one host. Its loop thread owns the ``Hypervisor`` (libvirt calls block,
and a ``test:///<file>`` connection's state is private to it, so nothing else touches it):

1. report the inventory (at start, then whenever it changes),
2. long-poll the desired state (``since=cursor``; bounded so consoles keep flowing),
3. ``reconcile.plan`` against what libvirt and the instances directory hold, run the actions,
4. report each server's observed state with a deterministic idempotency key, ship consoles.

A second thread sends heartbeats every ``heartbeat_interval`` seconds with the states the loop
last saw, so a long graceful shutdown never makes the host look down. API failures are retried
with backoff forever; nothing is lost because every pass is level-triggered.

Pending operations (``DesiredServer.operation``: reboot, resize) are performed by one handler
per kind (``Agent._handlers``); a new kind is one handler there. Once performed, the operation
is recorded in the state directory and reported as ``{operation_id, result}``.

Fencing (``compute_agent.fencing``): before its first heartbeat, report or start, the agent
removes the old copies of servers evacuated while its host was down; the API refuses the host
with 409 ``fencing_required`` until it has, and a refusal later (an evacuation while the agent
could not reach the API) makes the loop fence again before anything else.

Restart safety: besides its credential (and performed operations) the agent keeps no state. A
new process re-lists libvirt and the instances directory and plans from there: a half-made
overlay never has its final name, define is by server UUID, start/stop/destroy/pause are
no-ops when already done, and observation keys are deterministic
(``<server>:<generation>:<state>``), so a report repeated after a crash is deduplicated by the
API. Performed operations are recorded in the state directory (``operations.json``) before
they are reported, so a kill between performing one and reporting it does not perform it twice
(a guest is not rebooted again).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import httpx

from compute_agent import fencing, host_files, migration, transfer
from compute_agent.client import (
    Address,
    AgentApiError,
    AgentClient,
    DesiredServer,
    FailingServer,
    InventoryItem,
    LoopProgress,
    MigrationEndpointOut,
    Observation,
    ObservedState,
    Operation,
    tls_verify,
)
from compute_agent.config import (
    AgentSettings,
    Credential,
    load_credential,
    new_host_secret,
    save_credential,
)
from compute_agent.guest_stats import GuestStatsReporter, SimulatedLoad
from compute_agent.hypervisor import DomainNotFound, Hypervisor, HypervisorError
from compute_agent.imagecache import ImageCache, ImageError, prepare_instance_files
from compute_agent.metrics import AgentMetrics
from compute_agent.reconcile import Action, DomainState, SeenDomain, operation_key, plan
from compute_agent.spec import (
    ImageFormat,
    InstancePaths,
    ServerSpec,
    SpecError,
    VirtType,
    instance_ids_on_disk,
)

log = logging.getLogger("minicloud.agent")

CONSOLE_BYTES = 64 * 1024
# After a start, a reboot or a console change, consoles are shipped every console_interval for
# this long; otherwise once per long-poll.
CONSOLE_HOT_SECONDS = 30.0
# An unchanged console tail is read again after twice the previous delay, up to this long
# (a changed one goes back to console_interval); only a changed tail is ever uploaded.
CONSOLE_MAX_INTERVAL = 60.0
STOP_POLL_SECONDS = 0.5
# A live migration's progress goes to the API at most this often.
MIGRATION_PROGRESS_INTERVAL = 1.0
LIVE_OPERATIONS = frozenset({"live_prepare", "live_migrate"})
OPERATIONS_FILE = "operations.json"
MAX_BACKOFF = 10.0
# A server whose reconcile failed is retried after this long, doubling up to the maximum.
SERVER_RETRY_FIRST = 1.0
SERVER_RETRY_MAX = 60.0
# Failing servers named in a heartbeat (and the length of each message).
FAILING_REPORTED = 50
FAILING_MESSAGE_CHARS = 300


# libvirt's reasons for a stopped domain that nobody asked to stop: killed behind the agent's
# back, crashed, or lost to the daemon. (A guest that powered itself off is ``shutdown``.)
UNEXPECTED_STOPS = frozenset({"unknown", "destroyed", "crashed", "failed", "daemon"})
# Control characters the API refuses in text (an exception message may carry any).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class BuildError(Exception):
    """A server cannot be built on this host (bad image, checksum mismatch, libvirt refusal)."""


def _now() -> datetime:
    return datetime.now(UTC)


# ------------------------------------------------------------------------------ enrollment

def mint_enrollment_token(api_url: str, admin_token: str,
                          verify: ssl.SSLContext | bool = True) -> str:
    """Ask the API for a single-use enrollment token with an admin's token.

    Raises:
        AgentApiError: the API refuses (not an admin) or cannot be reached.
    """
    try:
        r = httpx.post(api_url.rstrip("/") + "/v1/hosts/enrollment-tokens",
                       headers={"Authorization": f"Bearer {admin_token}"}, timeout=10,
                       verify=verify)
    except httpx.TransportError as exc:
        raise AgentApiError(0, "unreachable", str(exc)) from exc
    if r.status_code != 201:
        raise AgentApiError(r.status_code, "enrollment_token_refused", r.text[:200])
    return str(r.json()["token"])


def ensure_enrolled(settings: AgentSettings, virt_type: VirtType, *, token: str | None = None,
                    admin_token: str | None = None) -> Credential:
    """The host credential: the stored one, or a new enrollment (stored 0600).

    A stored credential is checked with a heartbeat; when the API no longer knows it (401) and
    a token is at hand (given, or minted with ``admin_token``), the host enrolls again.

    Raises:
        AgentApiError: enrollment fails, or there is no usable credential and no token.
    """
    cred = load_credential(settings.state_dir)
    verify = tls_verify(settings.ca_bundle)
    if cred is not None and cred.api_url.rstrip("/") == settings.api_url.rstrip("/"):
        if token is None and admin_token is None:
            return cred
        with AgentClient(settings.api_url, cred.credential, retries=2, verify=verify) as client:
            try:
                client.heartbeat([])
                return cred
            except AgentApiError as exc:
                if exc.status != 401:
                    return cred  # cannot check now (API down?): the loop retries with it
        log.warning("stored credential rejected by %s; enrolling again", settings.api_url)
    if token is None and admin_token is not None:
        token = mint_enrollment_token(settings.api_url, admin_token, verify)
    if token is None:
        raise AgentApiError(401, "not_enrolled",
                            f"no credential in {settings.state_dir}; pass --enroll TOKEN")
    enrolled = AgentClient.enroll(settings.api_url, token, name=settings.name,
                                  libvirt_uri=settings.libvirt_uri, virt_type=virt_type,
                                  availability_zone=settings.availability_zone, verify=verify)
    cred = Credential(api_url=settings.api_url, host_id=enrolled.host_id,
                      host_name=settings.name, credential=enrolled.credential,
                      issued_at=_now())
    save_credential(settings.state_dir, cred)
    log.info("enrolled as host %s (%s)", settings.name, enrolled.host_id)
    return cred


# ------------------------------------------------------------------------------ the agent

class Agent:
    """One host's agent; ``run`` blocks until ``stop`` is called."""

    def __init__(self, settings: AgentSettings, credential: Credential, hypervisor: Hypervisor,
                 virt_type: VirtType, metrics: AgentMetrics | None = None) -> None:
        self.settings = settings
        self.credential = replace(credential, issued_at=credential.issued_at or _now())
        self.hv = hypervisor
        self.virt_type = virt_type
        verify = tls_verify(settings.ca_bundle)
        self.client = AgentClient(settings.api_url, credential.credential, verify=verify)
        self._hb_client = AgentClient(settings.api_url, credential.credential, verify=verify)
        # Guest metrics are best effort: one attempt, so a slow API never holds up the loop.
        self.guest_stats = GuestStatsReporter(
            hypervisor, AgentClient(settings.api_url, credential.credential, retries=0,
                                    verify=verify),
            settings.guest_metrics_interval or None,
            SimulatedLoad(settings.simulated_load_file) if settings.simulated_load_file else None)
        self.cache = ImageCache(settings.image_cache_dir)
        self.instances = Path(settings.instances_dir).resolve()
        self.cursor: str | None = None
        self._stop = threading.Event()
        self._reported: set[str] = set()
        # server id -> the key of its unexpected stop, kept until the API has it (a retry of
        # one stop reuses its key; the next stop gets a new one)
        self._stop_keys: dict[str, str] = {}
        self._operations_file = Path(settings.state_dir) / OPERATIONS_FILE
        self._operations_done: set[str] = self._load_operations()
        # The handler of each pending operation kind: ``fn(server, operation)``, idempotent
        # enough to be retried when it raised; it runs after the pass's power actions.
        self._handlers: dict[str, Callable[[DesiredServer, Operation], None]] = {
            "reboot": self._reboot, "resize": self._resize,
            "migrate_export": self._migrate_export, "migrate_import": self._migrate_import,
            "live_prepare": self._live_prepare, "live_migrate": self._live_migrate}
        self._booted: set[str] = set()  # domains this pass has started (build, start, reset)
        # server id -> (when read, digest uploaded, delay until the next read)
        self._console_sent: dict[str, tuple[float, str, float]] = {}
        self._console_hot_until = 0.0
        self._network_ready = False
        self._stopping: dict[str, float] = {}  # server id -> when to stop waiting for ACPI
        self._inventory: dict[str, InventoryItem] | None = None
        self._inventory_at = 0.0
        self._snapshot: list[Observation] = []
        self._snapshot_lock = threading.Lock()
        self.passes = 0
        # Loop progress, sent with every heartbeat: when the current pass started, when the
        # last one ended, and the servers whose reconcile failed (id -> why, retried with a
        # per-server backoff: id -> (next attempt, delay)).
        self.pass_started_at: datetime | None = None
        self.last_pass_at: datetime | None = None
        self.failing: dict[str, str] = {}
        self._retry: dict[str, tuple[float, float]] = {}
        self.metrics = metrics or AgentMetrics()
        self._host_arch: str | None = None
        self.host_id = credential.host_id
        # Domains whose metadata names another host: quarantined (never started, stopped,
        # destroyed or deleted), logged and reported in the heartbeat.
        self.foreign: dict[str, str] = {}  # server id -> the host id its metadata names

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loops to end (the current long-poll finishes first)."""
        self._stop.set()

    def close(self) -> None:
        """Close the HTTP clients (the hypervisor belongs to the caller)."""
        self.client.close()
        self._hb_client.close()
        self.guest_stats.client.close()

    def run(self) -> None:
        """Run the heartbeat thread and the reconcile loop until ``stop``."""
        self.instances.mkdir(parents=True, exist_ok=True)
        host_files.share_dir(self.instances)
        self.cache.cleanup_partial()
        # Before the first heartbeat, report or start: remove the old copies of servers that
        # were evacuated while this host was down (compute_agent.fencing).
        if not self._fence_until_done():
            return
        hb = threading.Thread(target=self._heartbeat_loop, name=f"hb-{self.settings.name}",
                              daemon=True)
        hb.start()
        delay = 0.5
        while not self._stop.is_set():
            try:
                self.run_once()
                delay = 0.5
            except AgentApiError as exc:
                if exc.code == "fencing_required":
                    # Servers were evacuated while this agent could not reach the API.
                    log.warning("API: %s", exc.detail)
                    if self._fence_until_done():
                        continue
                    break
                log.warning("API: %s; retrying in %.1fs", exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, MAX_BACKOFF)
            except HypervisorError as exc:
                self.metrics.libvirt_errors.inc()
                log.warning("libvirt: %s; reconnecting in %.1fs", exc, delay)
                if self._stop.wait(delay):
                    break
                delay = min(delay * 2, MAX_BACKOFF)
                try:
                    self.hv.ensure_connected()
                except HypervisorError as again:
                    log.warning("libvirt still unreachable: %s", again)
            except Exception:
                # A bug must not silently end the loop while the process looks alive.
                log.exception("reconcile pass failed; retrying in %.1fs", delay)
                self._stop.wait(delay)
                delay = min(delay * 2, MAX_BACKOFF)
        hb.join(timeout=self.settings.heartbeat_interval + 15)

    def _fence_until_done(self) -> bool:
        """Carry out the host's fence orders, retrying with backoff; False if stopped first."""
        delay = 0.5
        while not self._stop.is_set():
            try:
                if self.credential.pending is not None:
                    # A rotation a killed process left half-done: the API may already refuse
                    # the credential in the file, so finish it before anything else.
                    self.rotate_credential()
                fenced = fencing.fence(self.client, self.hv, self.instances)
            except (AgentApiError, HypervisorError, SpecError, OSError) as exc:
                log.warning("fencing: %s; retrying in %.1fs", exc, delay)
                if isinstance(exc, HypervisorError):
                    with contextlib.suppress(HypervisorError):
                        self.hv.ensure_connected()
                self._stop.wait(delay)
                delay = min(delay * 2, MAX_BACKOFF)
                continue
            if fenced:
                log.warning("fenced %d evacuated server(s) before anything else", fenced)
            return True
        return False

    def run_once(self) -> None:
        """One pass: inventory, long-poll, reconcile, report, console.

        Raises:
            AgentApiError: the API cannot be reached or refuses.
            HypervisorError: libvirt fails to list domains.
        """
        if not self._network_ready:
            # Here rather than at start, so a libvirtd that is not up yet is simply retried.
            if self.settings.network_name is not None:
                self.hv.ensure_network(self.settings.network_name)
            self._network_ready = True
        self.pass_started_at = _now()
        self.rotate_credential()
        self.report_inventory()
        wait = self._poll_wait()
        state = self.client.desired_servers(since=self.cursor, wait=wait)
        started = time.monotonic()
        self.reconcile(state.servers)
        self.metrics.pass_seconds.observe(time.monotonic() - started)
        self.guest_stats.maybe_report({s.server_id: s for s in state.servers
                                       if s.desired == "running"})
        self.cursor = state.cursor
        self.passes += 1
        self.last_pass_at = _now()

    def progress(self) -> LoopProgress:
        """The reconcile loop's progress, as heartbeats carry it."""
        failing = [FailingServer(server_id=sid,
                                 message=_CONTROL.sub(" ", msg)[:FAILING_MESSAGE_CHARS])
                   for sid, msg in sorted(self.failing.items())[:FAILING_REPORTED]]
        return LoopProgress(passes=self.passes, pass_started_at=self.pass_started_at,
                            last_pass_at=self.last_pass_at, failing_count=len(self.failing),
                            failing=failing)

    # -- credential rotation -----------------------------------------------------------------

    def rotate_credential(self) -> None:
        """Replace the host credential once it is ``credential_max_age`` old, or finish a
        rotation a previous process started.

        Crash-safe in this order: (1) a new secret is chosen here and written to the
        credential file as ``pending`` (atomically, fsynced) before the API hears of it;
        (2) the API is asked to make it the host's credential (the same request repeated
        changes nothing); (3) the file is rewritten with it as the credential. Killed after
        (1) the old credential still works and the next process sends the same pending one;
        killed after (2) the old one is refused and the pending one, proven by repeating
        (2) with it, is promoted. Nothing is lost at any point.

        Raises:
            AgentApiError: the API refuses both credentials or cannot be reached (the next
                pass tries again).
            OSError: the state directory cannot be written (the rotation does not start).
        """
        cred = self.credential
        if cred.pending is None:
            max_age = self.settings.credential_max_age
            issued = cred.issued_at or _now()
            if max_age is None or (_now() - issued).total_seconds() < max_age:
                return
            cred = replace(cred, pending=new_host_secret())
            save_credential(self.settings.state_dir, cred)
            self.credential = cred
        self._send_rotation(cred)
        self._promote(cred)

    def _send_rotation(self, cred: Credential) -> None:
        """Step (2) of ``rotate_credential``: the API takes ``cred.pending``.

        Raises:
            AgentApiError: neither credential is accepted, or the API is unreachable.
        """
        assert cred.pending is not None
        try:
            self.client.rotate_credential(cred.pending)
        except AgentApiError as exc:
            if exc.status != 401:
                raise
            # The API took the pending credential already (its answer was lost, or the last
            # process died before promoting it): the same request made with it proves it.
            with AgentClient(self.settings.api_url, cred.pending, retries=2,
                             verify=tls_verify(self.settings.ca_bundle)) as probe:
                probe.rotate_credential(cred.pending)

    def _promote(self, cred: Credential) -> None:
        """Step (3) of ``rotate_credential``: the pending credential becomes the credential."""
        assert cred.pending is not None
        promoted = replace(cred, credential=cred.pending, pending=None, issued_at=_now())
        save_credential(self.settings.state_dir, promoted)
        self.credential = promoted
        self.client.set_credential(promoted.credential)
        self._hb_client.set_credential(promoted.credential)
        log.info("host credential rotated")

    def _poll_wait(self) -> float:
        if self.cursor is None:
            return 0
        wait = self.settings.long_poll_wait
        # Poll often only while some console is changing (a guest booting), so idle hosts,
        # and hundreds of simulated ones, cost one request per long-poll.
        if self._console_hot_until > time.monotonic():
            wait = min(wait, self.settings.console_interval)
        if self._stopping:
            wait = min(wait, STOP_POLL_SECONDS)  # look again soon at guests powering off
        due = self.guest_stats.seconds_until_due()
        if due is not None:
            wait = min(wait, max(due, STOP_POLL_SECONDS))  # wake up for the next metrics report
        return min(wait, self.settings.inventory_interval)

    # -- inventory and heartbeat -------------------------------------------------------------

    def inventory(self) -> dict[str, InventoryItem]:
        """The host's resources from libvirt and the instances filesystem.

        Raises:
            HypervisorError: libvirt fails.
        """
        node = self.hv.node_info()
        s = self.settings
        disk = s.disk_gb if s.disk_gb is not None else Hypervisor.disk_gb(self.instances)

        def item(total: int, reserved: int | None) -> InventoryItem:
            return InventoryItem(total=total,
                                 reserved=None if reserved is None else min(reserved, total))

        return {"VCPU": item(node.vcpus, s.reserved_vcpus),
                "MEMORY_MB": item(node.memory_mb, s.reserved_ram_mb),
                "DISK_GB": item(disk, s.reserved_disk_gb)}

    def report_inventory(self, force: bool = False) -> None:
        """Send the inventory when it changed (checked every ``inventory_interval`` s).

        Raises:
            AgentApiError, HypervisorError.
        """
        now = time.monotonic()
        if not force and self._inventory is not None \
                and now - self._inventory_at < self.settings.inventory_interval:
            return
        inv = self.inventory()
        self._inventory_at = now
        if inv != self._inventory or force:
            try:
                endpoint = self.migration_endpoint()
            except (migration.MigrationError, OSError) as exc:
                log.warning("no live migrations to this host: %s", exc)
                endpoint = None
            self.client.put_inventory(inv, endpoint)
            self._inventory = inv

    def _heartbeat_loop(self) -> None:
        """Beat every ``heartbeat_interval`` seconds, reporting only what changed.

        A heartbeat carries the observations whose state differs from what the API last
        acknowledged (a 200), and the foreign domains only when they changed. A full report
        (everything) goes first, every ``full_report_seconds``, and at once when the API answers
        ``full_report`` (it lost track: the host was down). A failed heartbeat changes nothing:
        the next one carries everything not yet acknowledged, and a full report after every
        refusal would make an overloaded API's load heavier.
        """
        delay = 0.5
        acked: dict[str, str] | None = None  # server id -> state; None: send a full report
        acked_foreign: dict[str, str] | None = None
        full_due = 0.0
        while not self._stop.is_set():
            with self._snapshot_lock:
                observed = list(self._snapshot)
            foreign = dict(self.foreign)
            full = acked is None or time.monotonic() >= full_due
            send_foreign: dict[str, str] | None
            if acked is None or full:
                send, send_foreign = observed, foreign
            else:
                send = [o for o in observed if acked.get(o.server_id) != o.state]
                send_foreign = foreign if foreign != acked_foreign else None
            try:
                # A refusal (a saturated API) is retried within the interval at a random
                # point, so a refused fleet comes back spread, not as a wave.
                result = self._hb_client.heartbeat(
                    send, send_foreign, self.progress(), full=full,
                    busy_spread=self.settings.heartbeat_interval)
            except Exception as exc:  # API down, or a bug: keep beating either way
                log.warning("heartbeat: %s", exc)
                self._stop.wait(min(delay, self.settings.heartbeat_interval))
                delay = min(delay * 2, MAX_BACKOFF)
                continue
            delay = 0.5
            if result.full_report:
                acked = None  # the API asks for everything: send it now
                continue
            # Everything that differed was sent and acknowledged: the API has the snapshot.
            acked = {o.server_id: o.state for o in observed}
            acked_foreign = foreign
            if full:
                full_due = time.monotonic() + self.settings.full_report_seconds
            self._stop.wait(self.settings.heartbeat_interval)

    # -- reconcile ---------------------------------------------------------------------------

    def seen(self) -> dict[str, SeenDomain]:
        """What libvirt holds now, for ``reconcile.plan``.

        Raises:
            HypervisorError: libvirt cannot list domains.
        """
        seen: dict[str, SeenDomain] = {}
        foreign: dict[str, str] = {}
        for d in self.hv.list_managed_domains():
            if d.metadata.host_id not in ("", self.host_id):
                foreign[d.server_id] = d.metadata.host_id
                continue
            obs = d.state.observed
            state: DomainState = obs if obs in ("error", "running", "paused") else "shutoff"
            seen[d.server_id] = SeenDomain(state, d.metadata.vcpus, d.metadata.ram_mb)
        for sid in foreign.keys() - self.foreign.keys():
            log.warning("domain %s belongs to host %s, not to this host (%s): quarantined, "
                        "left as it is", sid, foreign[sid], self.host_id)
        self.foreign = foreign
        return seen

    def reconcile(self, desired: list[DesiredServer]) -> None:
        """Make libvirt match ``desired``, then report what is there.

        Raises:
            AgentApiError: the API cannot be reached (the next pass redoes the work).
            HypervisorError: libvirt cannot list domains.
        """
        domains = self.seen()
        # Another host's domains and their files are never touched, even when listed here.
        dirs = set(instance_ids_on_disk(self.instances)) - self.foreign.keys()
        desired = [d for d in desired if d.server_id not in self.foreign]
        # Remember only operations still awaited: ids carry the generation, never repeating.
        awaited = {operation_key(d.server_id, d.operation.id) for d in desired if d.operation}
        if self._operations_done - awaited:
            self._save_operations(self._operations_done & awaited)
        actions = plan(desired, domains, dirs, self._operations_done)
        self._booted = set()
        # Forget stop deadlines of domains that went off (or are no longer to be stopped).
        stopping = {a.server_id for a in actions if a.kind == "stop"}
        self._stopping = {k: v for k, v in self._stopping.items() if k in stopping}
        # One server's trouble never starves the others: whatever one server's step raises
        # (a 5xx image download, a libvirt refusal, a bug) is contained to that server, kept
        # in ``failing`` (sent with the heartbeats) and retried after a per-server backoff.
        now = time.monotonic()
        waiting = {sid for sid, (at, _) in self._retry.items() if at > now}
        failed: dict[str, str] = {}
        for action in actions:
            sid = action.server_id
            # A removal is never held back: a user deleting a failing server waits for nothing.
            if sid in failed or (sid in waiting and action.kind not in ("remove", "clean_files")):
                continue
            try:
                if action.kind in ("start", "reboot"):
                    self._report_unexpected_stop(action)
                self._execute(action)
            except BuildError as exc:
                log.error("server %s: %s", sid, exc)
                failed[sid] = str(exc)
                if action.server is not None:
                    self._contain(sid, failed, partial(self._observe, action.server, "error",
                                                       message=str(exc)))
            except Exception as exc:  # contained to this server, see above
                self._failed(sid, failed, f"{action.kind}: {exc}", exc)
        for server in desired:
            sid = server.server_id
            if sid not in failed and sid not in waiting and server.desired != "absent":
                self._contain(sid, failed, partial(self._report, server))
        self._settle_failures(failed, waiting, {d.server_id for d in desired}
                              | {a.server_id for a in actions})
        self._take_snapshot()
        self._ship_consoles(desired)
        self._evict_images(desired)

    def _failed(self, server_id: str, failed: dict[str, str], message: str,
                exc: Exception) -> None:
        """Record one server's failure; an unreachable API is no server's fault and ends the
        pass (raised again)."""
        if isinstance(exc, AgentApiError) and exc.code == "unreachable":
            raise exc
        if isinstance(exc, HypervisorError):
            self.metrics.libvirt_errors.inc()
        if isinstance(exc, (AgentApiError, HypervisorError, OSError, SpecError)):
            log.warning("server %s: %s", server_id, message)
        else:
            log.exception("server %s: %s", server_id, message)
        failed[server_id] = message

    def _contain(self, server_id: str, failed: dict[str, str],
                 step: Callable[[], None]) -> None:
        """Run one server's ``step``, containing what it raises to that server."""
        try:
            step()
        except Exception as exc:  # contained to this server
            self._failed(server_id, failed, str(exc), exc)

    def _settle_failures(self, failed: dict[str, str], waiting: set[str],
                         known: set[str]) -> None:
        """Back off the servers that failed this pass; forget those that went through (or
        that the API no longer lists)."""
        now = time.monotonic()
        for sid, message in failed.items():
            _, delay = self._retry.get(sid, (0.0, SERVER_RETRY_FIRST / 2))
            delay = min(delay * 2, SERVER_RETRY_MAX)
            self._retry[sid] = (now + delay, delay)
            self.failing[sid] = message
        for sid in list(self._retry):
            if sid not in failed and (sid not in waiting or sid not in known):
                del self._retry[sid]
                self.failing.pop(sid, None)
        for sid in list(self.failing):
            if sid not in self._retry:
                del self.failing[sid]

    def _evict_images(self, desired: list[DesiredServer]) -> None:
        """Trim the image cache to its configured size, keeping every image in use here.

        Raises:
            HypervisorError: libvirt cannot list domains.
        """
        limit = self.settings.image_cache_max_mb
        if limit is None:
            return
        in_use = {i for s in desired if s.desired != "absent"
                  for i in (s.image.id, s.image.kernel_id, s.image.ramdisk_id) if i}
        # Domains still defined (e.g. a removal that failed this pass) keep their base image.
        in_use |= {d.metadata.image_id for d in self.hv.list_managed_domains()
                   if d.metadata.image_id}
        try:
            evicted = self.cache.evict(limit * 1024**2, in_use)
        except OSError as exc:  # e.g. a file the agent may not delete: the next pass retries
            log.warning("image cache eviction failed: %s", exc)
            return
        for image_id in evicted:
            log.info("evicted image %s from the cache", image_id)

    def _execute(self, action: Action) -> None:
        """Run one action (idempotent).

        Raises:
            BuildError: the server cannot be built or started here.
            AgentApiError: the API cannot be reached.
            HypervisorError: libvirt fails for a reason not tied to this server's definition.
        """
        sid, server = action.server_id, action.server
        if not (action.kind == "stop" and sid in self._stopping):  # not every waiting pass
            log.info("%s %s", action.kind, sid)
        if action.kind in ("remove", "clean_files"):
            if action.kind == "remove":
                self.hv.destroy_and_undefine(sid)
            InstancePaths(self.instances, sid).remove()
            self._console_sent.pop(sid, None)
            if action.kind == "remove":
                self._confirm_absent(sid, server)
            return
        assert server is not None
        if action.kind == "stop":
            self._stop_domain(sid, at_once=action.hard)
        elif action.kind == "build":
            self._build(server, start=action.start)
        elif action.kind == "redefine":
            spec, paths = self._prepare(server)
            self.hv.redefine(spec, paths)
        elif action.kind == "start":
            self._start(sid)
        elif action.kind == "reboot":  # a crashed domain that should run: reset it
            self._console_hot_until = time.monotonic() + CONSOLE_HOT_SECONDS
            self.hv.reboot(sid, hard=action.hard)
            self._booted.add(sid)
        elif action.kind == "pause":
            self.hv.pause(sid)
        elif action.kind == "unpause":
            self._console_hot_until = time.monotonic() + CONSOLE_HOT_SECONDS
            self.hv.unpause(sid)
        elif action.kind == "operation":
            self._perform(server)

    # -- pending operations ------------------------------------------------------------------

    def _perform(self, server: DesiredServer) -> None:
        """Run the handler of the server's pending operation, then record it as performed.

        A kind this agent has no handler for stays pending (logged once per pass).
        """
        op = server.operation
        assert op is not None
        handler = self._handlers.get(op.kind)
        if handler is None:
            log.warning("server %s: no handler for operation %s (%s)", server.server_id,
                        op.id, op.kind)
            return
        handler(server, op)
        self._operation_performed(server, op)

    def _operation_performed(self, server: DesiredServer, op: Operation) -> None:
        """Record ``op`` as performed (persisted before it is reported)."""
        self._save_operations(self._operations_done | {operation_key(server.server_id, op.id)})

    def _reboot(self, server: DesiredServer, op: Operation) -> None:
        """``reboot``: soft (ACPI) or hard (reset); a boot in this very pass is the reboot."""
        sid = server.server_id
        if sid in self._booted:
            return
        self._console_hot_until = time.monotonic() + CONSOLE_HOT_SECONDS
        log.info("reboot %s", sid)
        self.hv.reboot(sid, hard=op.params.get("type") == "hard")
        self._booted.add(sid)

    def _resize(self, server: DesiredServer, op: Operation) -> None:
        """``resize``: redefine the shut-off domain with the flavor's sizes, grow the overlay.

        Raises:
            BuildError, DomainRunning (the domain was started meanwhile: retried next pass).
        """
        del op  # the new sizes are the server's flavor
        spec, paths = self._prepare(server)
        self.hv.redefine(spec, paths)

    def _migrate_export(self, server: DesiredServer, op: Operation) -> None:
        """``migrate_export`` (cold migration, source): send the shut-off server's overlay
        and seed to the API's relay. The domain and files stay until the API moves the server
        to its destination (then this host no longer lists it and removes them).

        Raises:
            BuildError: the files are missing or the API refuses them.
            AgentApiError: the API cannot be reached (retried on the next pass).
        """
        del op
        paths = InstancePaths(self.instances, server.server_id)
        try:
            sent = transfer.send(self.client, paths)
        except transfer.TransferError as exc:
            raise BuildError(f"cannot send the server's files: {exc}") from exc
        except AgentApiError as exc:
            if exc.status == 0 or exc.status >= 500:
                raise
            raise BuildError(f"the API refused the server's files: {exc}") from exc
        log.info("migration of %s: sent %d bytes to the relay", server.server_id, sent)

    def _migrate_import(self, server: DesiredServer, op: Operation) -> None:
        """``migrate_import`` (cold migration, destination): this pass built the server from
        its image (shut off); replace its overlay and seed with the relayed ones.

        Raises:
            BuildError: a file is corrupt or unusable, or the API refuses it.
            AgentApiError: the API cannot be reached (retried on the next pass).
        """
        del op
        spec, paths = self._prepare(server)
        try:
            transfer.receive(self.client, paths, spec.image_path, spec.image_format)
        except transfer.TransferError as exc:
            raise BuildError(f"cannot take the server's files: {exc}") from exc
        except AgentApiError as exc:
            if exc.status == 0 or exc.status >= 500:
                raise
            raise BuildError(f"the API refused the server's files: {exc}") from exc
        log.info("migration of %s: disk and seed in place", server.server_id)

    def migration_endpoint(self) -> MigrationEndpointOut | None:
        """What this host registers for live migrations to it (None without
        ``migration_address``: it takes none).

        Raises:
            MigrationError: the address, a port or qemu.conf's port range is invalid.
            OSError: qemu.conf exists but cannot be read.
        """
        s = self.settings
        if s.migration_address is None:
            return None
        ep = migration.local_endpoint(s.migration_address, transport=s.migration_transport,
                                      libvirt_port=s.migration_libvirt_port,
                                      qemu_conf=s.qemu_conf)
        return MigrationEndpointOut(
            libvirt_uri=ep.libvirt_uri, migrate_uri=ep.migrate_uri, port_min=ep.port_min,
            port_max=ep.port_max, instances_dir=str(self.instances),
            image_cache_dir=str(Path(s.image_cache_dir).resolve()))

    def _live_prepare(self, server: DesiredServer, op: Operation) -> None:
        """``live_prepare`` (live migration, destination): the incoming guest's files: base
        image (and kernel, initrd) in the cache, a fresh empty overlay of the size the
        source's was made with (same image, same flavor), the seed. Defines nothing: libvirt
        brings the domain with the copy.

        Raises:
            BuildError: a domain of the server is already here, or the files cannot be made.
            AgentApiError: the API cannot be reached (retried on the next pass).
        """
        del op
        sid = server.server_id
        if self.hv.observed(sid) != "absent":
            raise BuildError("a domain of this server is already defined on the destination")
        # A leftover overlay (an earlier attempt) may hold blocks the copy would not write.
        InstancePaths(self.instances, sid).disk.unlink(missing_ok=True)
        self._prepare(server)
        log.info("live migration of %s: incoming files ready", sid)

    def _live_migrate(self, server: DesiredServer, op: Operation) -> None:
        """``live_migrate`` (live migration, source): libvirt peer-to-peer with storage copy
        to the destination's endpoint (``op.params``), progress sent to the API.

        libvirtd goes on with a copy whose agent died, so the observed truth comes first: a
        copy still running (started by an earlier process) is waited for; a domain gone from
        here and running on the destination is a completed move.

        Raises:
            BuildError: the move failed (the guest still runs here) or cannot start.
            HypervisorError: where the guest is cannot be told now (retried next pass).
        """
        sid, p = server.server_id, op.params
        required = ("dest_libvirt_uri", "migrate_uri", "dest_host_id", "dest_instances_dir",
                    "dest_image_cache_dir", "max_downtime_ms", "timeout_seconds")
        if any(k not in p for k in required):
            raise BuildError("the destination has no registered migration endpoint")
        dest_uri = str(p["dest_libvirt_uri"])
        report = self._progress_reporter(sid)
        while True:
            try:
                job = migration.active_migration(self.hv, sid)
            except DomainNotFound:
                try:
                    there = migration.runs_at(dest_uri, sid)
                except migration.MigrationError as exc:
                    raise HypervisorError(f"where {sid} runs: {exc}") from exc
                if there:
                    log.info("live migration of %s: already on the destination", sid)
                    return
                raise BuildError("the domain is neither here nor on the destination") \
                    from None
            except HypervisorError as exc:
                # No job can be read (a driver without job stats): there is none to wait
                # for; the migration below fails cleanly if libvirt is not usable.
                log.info("live migration of %s: no job stats: %s", sid, exc)
                job = None
            if job is None:
                break
            log.info("live migration of %s: waiting for the copy in progress", sid)
            report(job)
            if self._stop.wait(1.0):
                raise HypervisorError("agent stopping during a live migration")
        cache = Path(self.settings.image_cache_dir)
        path_map = {str(self.instances): str(p["dest_instances_dir"]),
                    str(cache.resolve()): str(p["dest_image_cache_dir"])}
        if str(cache) not in path_map:
            path_map[str(cache)] = str(p["dest_image_cache_dir"])
        abort = threading.Event()
        try:
            live, persistent = migration.migratable_xml(self.hv, sid)
            dest_xml, persist_xml = (
                migration.set_host_id(migration.rewrite_paths(x, path_map),
                                      str(p["dest_host_id"])) for x in (live, persistent))
            stats = migration.live_migrate(
                self.hv, sid, dest_libvirt_uri=dest_uri, migrate_uri=str(p["migrate_uri"]),
                dest_xml=dest_xml, persist_xml=persist_xml,
                max_downtime_ms=int(p["max_downtime_ms"]),
                timeout_s=float(p["timeout_seconds"]),
                on_progress=partial(self._on_progress, report, abort), abort=abort)
        except migration.MigrationFailed as exc:
            if not exc.settled:  # the copy may still finish: look again next pass
                raise HypervisorError(str(exc)) from exc
            raise BuildError(str(exc)) from exc
        except (migration.MigrationError, HypervisorError, SpecError) as exc:
            raise BuildError(f"cannot live-migrate: {exc}") from exc
        log.info("live migration of %s done in %d ms (downtime %s ms)", sid, stats.elapsed_ms,
                 stats.downtime_ms)

    def _progress_reporter(self, server_id: str) -> Callable[[migration.MigrationProgress],
                                                              bool]:
        """A function sending a live migration's progress to the API (at most every
        ``MIGRATION_PROGRESS_INTERVAL`` s); it returns True when the API asks for an abort
        and raises when the move is no longer the API's (404)."""
        last = [0.0]

        def report(progress: migration.MigrationProgress) -> bool:
            now = time.monotonic()
            if now - last[0] < MIGRATION_PROGRESS_INTERVAL:
                return False
            last[0] = now
            try:
                answer = self.client.migration_progress(
                    server_id, data_total=progress.data_total,
                    data_processed=progress.data_processed,
                    data_remaining=progress.data_remaining)
            except AgentApiError as exc:
                if exc.status == 404:
                    raise  # the move ended without this host: abort the copy
                log.warning("live migration progress of %s: %s", server_id, exc)
                return False
            return answer.abort

        return report

    @staticmethod
    def _on_progress(report: Callable[[migration.MigrationProgress], bool],
                     abort: threading.Event, progress: migration.MigrationProgress) -> None:
        if report(progress):
            abort.set()

    def _load_operations(self) -> set[str]:
        try:
            data = json.loads(self._operations_file.read_text())
        except (FileNotFoundError, ValueError):
            return set()
        return {str(k) for k in data} if isinstance(data, list) else set()

    def _save_operations(self, keys: set[str]) -> None:
        """Persist performed operations (atomically), so a restart between an operation and
        its report reports it instead of performing it again."""
        self._operations_done = keys
        tmp = self._operations_file.with_name(OPERATIONS_FILE + ".tmp")
        try:
            tmp.write_text(json.dumps(sorted(keys)))
            tmp.replace(self._operations_file)
        except OSError as exc:  # memory still has it; only a crash right now would repeat it
            log.warning("cannot record operations in %s: %s", self._operations_file, exc)

    # -- power -------------------------------------------------------------------------------

    def _stop_domain(self, server_id: str, *, at_once: bool = False) -> None:
        """Graceful stop without blocking the loop: ask (ACPI) now, destroy on a later pass
        once ``shutdown_timeout`` has passed, so one guest ignoring the power button does not
        hold up every other server of the host. ``at_once``: destroy now."""
        now = time.monotonic()
        deadline = self._stopping.get(server_id)
        if at_once:  # a paused guest cannot see the power button
            self.hv.shutdown(server_id, timeout=0)
            self._stopping.pop(server_id, None)
        elif deadline is None and self.settings.shutdown_timeout > 0:
            self._stopping[server_id] = now + self.settings.shutdown_timeout
            self.hv.request_shutdown(server_id)
        elif deadline is None or now >= deadline:
            log.info("%s did not power off in %.0fs: destroying", server_id,
                     self.settings.shutdown_timeout)
            self.hv.shutdown(server_id, timeout=0)
            self._stopping.pop(server_id, None)

    def _start(self, server_id: str) -> None:
        self._console_hot_until = time.monotonic() + CONSOLE_HOT_SECONDS
        try:
            self.hv.start(server_id)
        except DomainNotFound:
            raise
        except HypervisorError as exc:
            self.metrics.libvirt_errors.inc()
            raise BuildError(str(exc)) from exc
        self._booted.add(server_id)

    def _build(self, server: DesiredServer, *, start: bool) -> None:
        spec, paths = self._prepare(server)
        try:
            self.hv.define(spec, paths)
        except HypervisorError as exc:
            self.metrics.libvirt_errors.inc()
            raise BuildError(str(exc)) from exc
        if start:
            self._start(server.server_id)

    def _prepare(self, server: DesiredServer) -> tuple[ServerSpec, InstancePaths]:
        """Fetch the images, write the instance files; return the spec and paths.

        Raises:
            BuildError: invalid spec, unusable image, checksum mismatch, disk too small.
            AgentApiError: the API cannot be reached (retried on the next pass).
        """
        img = server.image
        if img.disk_format not in ("qcow2", "raw"):
            raise BuildError(f"image format {img.disk_format} cannot be a server's disk")
        fmt: ImageFormat = "qcow2" if img.disk_format == "qcow2" else "raw"
        try:
            base = self._image(img.id, img.sha256)
            kernel = self._image(img.kernel_id, None) if img.kernel_id else None
            initrd = self._image(img.ramdisk_id, None) if img.ramdisk_id else None
            spec = ServerSpec(
                server_id=server.server_id, project_id=server.project_id, name=server.name,
                hostname=server.hostname, vcpus=server.flavor.vcpus,
                ram_mb=server.flavor.ram_mb, disk_gb=server.flavor.disk_gb, image_path=base,
                image_format=fmt, image_id=img.id, kernel_path=kernel, initrd_path=initrd,
                kernel_cmdline=(img.kernel_cmdline or "") if kernel else "",
                user_data=server.user_data,
                ssh_keys=(server.key_data.strip(),) if server.key_data else (),
                network=self.settings.network_name, virt_type=self.virt_type,
                arch=self._arch(), host_id=self.host_id)
            paths = InstancePaths(self.instances, server.server_id)
            prepare_instance_files(spec, paths)
        except (SpecError, ImageError, OSError) as exc:
            raise BuildError(str(exc)) from exc
        except AgentApiError as exc:
            if exc.status == 0 or exc.status >= 500:
                raise
            raise BuildError(f"image download refused: {exc}") from exc
        return spec, paths

    def _arch(self) -> str:
        if self._host_arch is None:
            self._host_arch = self.hv.node_info().arch
        return self._host_arch

    def _image(self, image_id: str, sha256: str | None) -> Path:
        """The cached image, downloaded and verified on first use.

        Raises:
            ImageError: (ChecksumMismatch) the bytes do not match the recorded sha256.
            AgentApiError: the download fails.
            SpecError: the id is not a UUID.
        """
        cached = self.cache.use(image_id)
        if cached is not None:
            return cached
        expected = sha256 or self.client.image_sha256(image_id)
        log.info("downloading image %s", image_id)
        return self.cache.store(image_id, self.client.download_image(image_id), expected)

    # -- reporting ---------------------------------------------------------------------------

    def _confirm_absent(self, server_id: str, server: DesiredServer | None) -> None:
        """Tell the API the domain and files are gone; unknown servers (404) are fine."""
        if server is None:
            try:
                self.client.observe(server_id, "absent", _now(),
                                    idempotency_key=f"{server_id}:gone:absent")
            except AgentApiError as exc:
                if exc.status not in (404, 422):
                    raise
            return
        self._observe(server, "absent")

    def _observe(self, server: DesiredServer, state: ObservedState, *,
                 message: str | None = None, operation_id: str | None = None,
                 addresses: list[Address] | None = None) -> None:
        """Report one observation once per (server, generation, state, extras).

        The key is deterministic, so after a crash the same report is deduplicated by the API.
        """
        key = f"{server.server_id}:{server.generation}:{state}"
        if operation_id:
            key += f":{operation_id}"
        if addresses:
            joined = ",".join(sorted(f"{a.ip}/{a.mac}" for a in addresses))
            key += ":" + hashlib.sha256(joined.encode()).hexdigest()[:8]
        if key in self._reported:
            return
        try:
            self.client.observe(server.server_id, state, _now(), idempotency_key=key,
                                operation_id=operation_id, message=message,
                                addresses=addresses)
        except AgentApiError as exc:
            if exc.status != 404:  # 404: deleted meanwhile; the next pass sees it gone
                raise
        self._reported.add(key)

    def _report_unexpected_stop(self, action: Action) -> None:
        """Before the domain of a server that is ACTIVE with no task in flight is started again
        (or reset): when libvirt says it stopped for a reason nobody asked for (killed behind
        the agent's back, crashed), tell the API, which records it on the server (a scaling
        group replaces such a member). The start waits until the API has the report.

        Raises:
            AgentApiError: the API cannot be reached (the next pass reports again).
            HypervisorError: libvirt fails.
        """
        server = action.server
        if server is None or server.status != "ACTIVE" or server.task_state is not None:
            return
        sid = server.server_id
        reason = self.hv.stop_reason(sid)
        if reason not in UNEXPECTED_STOPS:
            return
        key = self._stop_keys.setdefault(
            sid, f"{sid}:{server.generation}:stopped:{uuid.uuid4().hex[:12]}")
        log.warning("server %s: its domain stopped unexpectedly (libvirt: %s): reported, "
                    "starting it again", sid, reason)
        try:
            self.client.observe(sid, "error" if reason == "crashed" else "shutoff", _now(),
                                idempotency_key=key, unexpected_stop=reason)
        except AgentApiError as exc:
            if exc.status != 404:  # 404: deleted meanwhile; the next pass sees it gone
                raise
        del self._stop_keys[sid]

    def _report(self, server: DesiredServer) -> None:
        try:
            state = self.hv.observed(server.server_id)
        except SpecError:
            return
        # A performed operation is reported with what libvirt shows after this pass (a failed
        # handler raised and kept the server out of this report).
        operation_id = None
        if server.operation is not None and operation_key(
                server.server_id, server.operation.id) in self._operations_done:
            operation_id = server.operation.id
        if state == "absent":
            # A live migration's steps leave no domain here (the destination prepared files
            # only; the source's domain has left): their report is the absence.
            if operation_id is not None and server.operation is not None \
                    and server.operation.kind in LIVE_OPERATIONS:
                self._observe(server, "absent", operation_id=operation_id)
            return
        addresses: list[Address] | None = None
        if state == "running":
            try:
                addresses = [Address(ip=a.address, mac=a.mac, network=a.network)
                             for a in self.hv.addresses(server.server_id)]
            except HypervisorError as exc:
                self.metrics.libvirt_errors.inc()
                log.info("addresses of %s: %s", server.server_id, exc)
        self._observe(server, state, operation_id=operation_id, addresses=addresses or None)

    def _take_snapshot(self) -> None:
        now = _now()
        snap = [Observation(server_id=sid, state=st.observed, seen_at=now)
                for sid, st in self.hv.list_managed().items()
                if st.observed in ("running", "shutoff", "paused") and sid not in self.foreign]
        with self._snapshot_lock:
            self._snapshot = snap

    def _ship_consoles(self, desired: list[DesiredServer]) -> None:
        now = time.monotonic()
        running = {o.server_id for o in self._snapshot if o.state == "running"}
        for server in desired:
            sid = server.server_id
            if sid not in running:
                continue
            last_at, last_digest, delay = self._console_sent.get(
                sid, (0.0, "", self.settings.console_interval))
            if now < self._console_hot_until:  # a start, reboot or change: read at full rate
                delay = self.settings.console_interval
            if now - last_at < delay:
                continue
            try:
                tail = self.hv.console_tail(sid, CONSOLE_BYTES)
            except HypervisorError:
                self.metrics.libvirt_errors.inc()
                continue
            digest = hashlib.sha256(tail.encode()).hexdigest()
            delay = min(2 * delay, CONSOLE_MAX_INTERVAL)
            if digest != last_digest and tail:
                self._console_hot_until = now + CONSOLE_HOT_SECONDS
                delay = self.settings.console_interval
                try:
                    self.client.put_console(sid, tail.encode())
                except AgentApiError as exc:
                    if exc.code == "unreachable":
                        raise
                    if exc.status != 404:  # one console refused must not stop the others
                        log.warning("console of %s: %s", sid, exc)
                        continue
            self._console_sent[sid] = (now, digest, delay)
