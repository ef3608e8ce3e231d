"""Several independent libvirt "hosts" on this one machine, for migration and evacuation tests.

A root ``libvirtd`` always uses ``/etc/libvirt``, ``/run/libvirt``, ``/var/lib/libvirt``,
``/var/cache/libvirt`` and ``/var/log/libvirt``, whatever its config file says. So each extra
host runs in its own mount namespace (``unshare --mount --propagation private``) where those
five paths are bind mounts of a private directory, with its own ``virtlogd``. Each daemon has
its own ``host_uuid`` (libvirt refuses to migrate to "the same host"), listens on TCP
127.0.0.1 with its own port (the peer-to-peer URI the other daemons use), and its own QEMU
migration port range. Its empty ``/etc/libvirt`` gives it no networks: the guests have no NIC
and the machine's ``default`` network is never touched.

The mounts live only in the namespaces, which vanish with their last process: stopping the
daemons leaves nothing mounted on the machine. Everything sits under a world-traversable
directory (``TEST_ROOT``) because QEMU runs as ``libvirt-qemu``.

Recipe and measurements: ``/work/shared/notes/two-libvirt-hosts.md``. Needs root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import libvirt

from compute_agent.migration import MigrationEndpoint, local_endpoint

TEST_ROOT = Path("/var/lib/minicloud-test")
# A fresh daemon probes QEMU's capabilities first (~8 s on 2 cores); bounded so a broken
# daemon fails the session instead of hanging it.
READY_TIMEOUT = 90.0
# The five fixed paths of a root libvirtd, and the private subdirectory bound over each.
BIND_MOUNTS = (("etc", "/etc/libvirt"), ("run", "/run/libvirt"), ("lib", "/var/lib/libvirt"),
               ("cache", "/var/cache/libvirt"), ("log", "/var/log/libvirt"))
MIGRATION_PORT_BASE = 49152
MIGRATION_PORTS_PER_HOST = 16
# Spacing of the hosts' ranges (A: 49152..49167, B: 49200..49215, ...).
MIGRATION_PORT_STRIDE = 48

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


class LibvirtHostError(RuntimeError):
    """A test libvirt daemon did not start or stop as expected."""


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); its state in /proc says it is gone.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return False


def _kill9(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@dataclass
class LibvirtHost:
    """One libvirt daemon in its own mount namespace, and the data directory of its agent.

    ``uri``: what this host's agent connects to (the daemon's UNIX socket).
    ``tcp_uri``: what another daemon connects to for peer-to-peer migration to this host.
    ``migrate_uri``: where QEMU's migration stream to this host goes (``tcp://127.0.0.1``).
    ``data_dir``: the agent's data directory (instances and image cache live under it).
    """

    name: str
    root: Path
    tcp_port: int
    migration_ports: tuple[int, int]
    host_uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    # -- addresses ---------------------------------------------------------------------------

    @property
    def socket_path(self) -> Path:
        return self.root / "run" / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.socket_path}"

    @property
    def tcp_uri(self) -> str:
        return f"qemu+tcp://127.0.0.1:{self.tcp_port}/system"

    @property
    def migrate_uri(self) -> str:
        return "tcp://127.0.0.1"

    @property
    def endpoint(self) -> MigrationEndpoint:
        """What this host's agent registers for live migration to it (read from the same
        qemu.conf the daemon reads)."""
        return local_endpoint("127.0.0.1", transport="tcp", libvirt_port=self.tcp_port,
                              qemu_conf=self.root / "etc" / "qemu.conf")

    @property
    def data_dir(self) -> Path:
        return self.root / "agent"

    @property
    def instances_dir(self) -> Path:
        return self.data_dir / "instances"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def pid(self) -> int | None:
        """The libvirtd process id while the daemon runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    # -- life cycle --------------------------------------------------------------------------

    def _write_config(self) -> None:
        for sub, _ in BIND_MOUNTS:
            (self.root / sub).mkdir(parents=True, exist_ok=True)
            (self.root / sub).chmod(0o755)
        self.root.chmod(0o755)
        self.data_dir.mkdir(exist_ok=True)
        self.data_dir.chmod(0o755)
        # Test only: unauthenticated TCP on loopback. Never outside a private test machine.
        (self.root / "etc" / "libvirtd.conf").write_text(
            'unix_sock_group = "root"\n'
            'unix_sock_rw_perms = "0770"\n'
            'auth_unix_rw = "none"\n'
            'auth_unix_ro = "none"\n'
            "listen_tls = 0\n"
            "listen_tcp = 1\n"
            'listen_addr = "127.0.0.1"\n'
            f'tcp_port = "{self.tcp_port}"\n'
            'auth_tcp = "none"\n'
            f'host_uuid = "{self.host_uuid}"\n')
        lo, hi = self.migration_ports
        (self.root / "etc" / "qemu.conf").write_text(
            f"migration_port_min = {lo}\nmigration_port_max = {hi}\n")

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        """Start virtlogd and libvirtd in a new mount namespace; wait until libvirtd answers.

        Raises:
            LibvirtHostError: the daemon exited or did not answer within ``timeout`` s.
        """
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start virtlogd and libvirtd in a new mount namespace without waiting for them."""
        if self.pid is not None:
            return
        self._write_config()
        mounts = "; ".join(f"mount --bind {self.root / sub} {target}"
                           for sub, target in BIND_MOUNTS)
        script = (f"set -e; {mounts}; virtlogd -d -p /run/libvirt/virtlogd.pid; "
                  "exec libvirtd -l -p /run/libvirt/libvirtd.pid -f /etc/libvirt/libvirtd.conf")
        out = open(self.root / "daemon.out", "ab")  # noqa: SIM115 - handed to the child
        try:
            self._proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--", "bash", "-c", script],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        finally:
            out.close()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait until the daemon accepts a connection and lists domains.

        Raises:
            LibvirtHostError: the daemon exited or did not answer within ``timeout`` s.
        """
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                raise LibvirtHostError(f"libvirtd of {self.name} exited: {self.output()[-2000:]}")
            if self.socket_path.exists():
                try:
                    conn = libvirt.open(self.uri)
                    try:
                        # The first capabilities call runs the QEMU probe; done here, it
                        # overlaps with the other hosts' probes (see LibvirtHosts.get).
                        conn.getCapabilities()
                        conn.listAllDomains(0)
                        return
                    finally:
                        conn.close()
                except libvirt.libvirtError as exc:
                    last = str(exc)
            time.sleep(0.2)
        raise LibvirtHostError(f"libvirtd of {self.name} did not answer in {timeout:g} s: {last}")

    def output(self) -> str:
        """What the daemons wrote to stdout/stderr so far."""
        try:
            return (self.root / "daemon.out").read_text(errors="replace")
        except OSError:
            return ""

    def qemu_pids(self) -> list[int]:
        """Process ids of the QEMU processes this daemon runs (from its pid files)."""
        qemu_run = self.root / "run" / "qemu"
        # driver.pid there is libvirtd's own; each domain has <name>.pid.
        files = [p for p in qemu_run.glob("*.pid") if p.name != "driver.pid"] \
            if qemu_run.is_dir() else []
        pids = [_read_pid(p) for p in files]
        return [p for p in pids if p is not None and process_alive(p)]

    def kill(self) -> None:
        """Simulate a dead host: kill -9 its QEMU processes, libvirtd and virtlogd.

        The persistent definitions stay in its private ``/etc/libvirt``, as on a real host that
        lost power; ``restart`` brings the daemon back with them (shut off).
        """
        for pid in self.qemu_pids():
            _kill9(pid)
        if self._proc is not None:
            _kill9(self._proc.pid)
            self._proc.wait(timeout=30)
        logd = _read_pid(self.root / "run" / "virtlogd.pid")
        if logd is not None:
            _kill9(logd)
        deadline = time.monotonic() + 30
        while any(process_alive(p) for p in self.qemu_pids()) and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self, *, reboot: bool = True, timeout: float = READY_TIMEOUT) -> None:
        """Start the daemon again after ``kill`` (or ``stop``).

        ``reboot`` empties its ``/run/libvirt`` first, as a host's reboot does, so libvirt
        finds only the persistent (shut-off) definitions. The capability cache is kept, so a
        restart answers in well under a second.

        Raises:
            LibvirtHostError: the daemon did not come back.
        """
        if self.pid is not None:
            self.kill()
        if reboot:
            run = self.root / "run"
            for child in run.iterdir() if run.is_dir() else []:
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        self.start(timeout)

    def clean_domains(self) -> None:
        """Destroy and undefine every domain of this daemon (a no-op when it is not running)."""
        if self.pid is None:
            return
        conn = libvirt.open(self.uri)
        try:
            for dom in conn.listAllDomains(0):
                with contextlib.suppress(libvirt.libvirtError):
                    if dom.isActive():
                        dom.destroy()
                with contextlib.suppress(libvirt.libvirtError):
                    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                                      | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                                      | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        finally:
            conn.close()

    def stop(self) -> None:
        """Destroy and undefine all domains, then stop the daemons (SIGTERM, then SIGKILL)."""
        with contextlib.suppress(libvirt.libvirtError):
            self.clean_domains()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=15)
        for pid in self.qemu_pids():
            _kill9(pid)
        logd = _read_pid(self.root / "run" / "virtlogd.pid")
        if logd is not None and process_alive(logd):
            os.kill(logd, signal.SIGTERM)


class LibvirtHosts:
    """A pool of test libvirt hosts under one directory, started on demand and reused.

    ``get(n)`` returns the first ``n`` hosts, starting the missing ones (in parallel).
    """

    def __init__(self, root: Path | None = None) -> None:
        TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
        TEST_ROOT.chmod(0o755)
        self.root = root or TEST_ROOT / f"hosts-{uuid.uuid4()}"
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.root.chmod(0o755)
        self.hosts: list[LibvirtHost] = []

    def _new_host(self) -> LibvirtHost:
        i = len(self.hosts)
        lo = MIGRATION_PORT_BASE + i * MIGRATION_PORT_STRIDE
        name = "host" + chr(ord("A") + i) if i < 26 else f"host{i}"
        host = LibvirtHost(name=name, root=self.root / name, tcp_port=free_tcp_port(),
                           migration_ports=(lo, lo + MIGRATION_PORTS_PER_HOST - 1))
        self.hosts.append(host)
        return host

    def get(self, n: int) -> list[LibvirtHost]:
        """The first ``n`` hosts, every one running (started or restarted as needed).

        Raises:
            LibvirtHostError: a daemon did not start.
        """
        while len(self.hosts) < n:
            self._new_host()
        hosts = self.hosts[:n]
        # Fresh daemons probe QEMU for seconds: launch them all, then wait for each.
        starting = [host for host in hosts if host.pid is None]
        for host in starting:
            host.launch()
        with ThreadPoolExecutor(max_workers=max(1, len(starting))) as pool:
            for done in [pool.submit(host.wait_ready) for host in starting]:
                done.result()
        return hosts

    def clean(self) -> None:
        """Restart dead daemons, destroy and undefine every domain, empty the data dirs."""
        for host in self.hosts:
            if host.pid is None:
                host.restart()
            host.clean_domains()
            if host.data_dir.is_dir():
                for child in host.data_dir.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop every daemon and delete the pool's directory."""
        for host in self.hosts:
            host.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def libvirt_hosts(n: int = 2) -> Iterator[list[LibvirtHost]]:
    """``n`` running test libvirt hosts, stopped and removed on exit (for scripts/benchmarks)."""
    pool = LibvirtHosts()
    try:
        yield pool.get(n)
    finally:
        pool.close()
