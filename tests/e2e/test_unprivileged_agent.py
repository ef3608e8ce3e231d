"""The agent as deploy/systemd/minicloud-agent.service runs it: the dedicated unprivileged user
``minicloud-agent`` in the libvirt group and QEMU's group, umask 0027, the unit's directory
layout (state 0700; instances and images 0750 under a 0711 data directory), against
qemu:///system. The tiny guest boots through the whole stack and prints its line.

There is no systemd here: the user is made as deploy/install-compute.sh makes it and the
process is started with ``setpriv --reuid --regid --init-groups`` (the unit's User=, Group=,
SupplementaryGroups=).

A libvirtd started without a D-Bus system bus before deploy/lib.sh configured group access
(``libvirt_group_access``) asks polkit, cannot, and refuses every non-root client; it cannot
be restarted under other tests' guests. Then the agent reaches that same libvirtd through a
relay socket that grants exactly what the configured daemon would: connections from members
of group libvirt (socket ``root:libvirt 0660``), relayed byte for byte.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from compute_agent.hypervisor import Hypervisor
from compute_agent.spec import domain_name
from tests.e2e.guest_image import URI, GuestImage
from tests.e2e.stack import (
    AgentProcess,
    assert_placed_on,
    create_server,
    enrollment_token,
    host,
    wait_gone,
    wait_status,
    wait_until,
)
from tests.e2e.test_qemu_boot import TEST_ROOT
from tests.e2e.test_whole_stack import BOOT_WAIT, console
from tests.factories import Account, unique

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

AGENT_USER = "minicloud-agent"
LIBVIRT_SOCKET = "/var/run/libvirt/libvirt-sock"


def _qemu_group() -> str:
    for user in ("libvirt-qemu", "qemu"):
        try:
            return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
        except KeyError:
            continue
    return "kvm"


@pytest.fixture(scope="module")
def agent_user() -> pwd.struct_passwd:
    """The agent's user, made as deploy/install-compute.sh makes it (idempotent)."""
    if os.geteuid() != 0:
        pytest.skip("making the agent's user and switching to it needs root")
    try:
        pwd.getpwnam(AGENT_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--home-dir", "/var/lib/minicloud-agent",
                        "--no-create-home", "--shell", "/usr/sbin/nologin", AGENT_USER],
                       check=True)
    subprocess.run(["usermod", "-aG", f"libvirt,{_qemu_group()}", AGENT_USER], check=True)
    return pwd.getpwnam(AGENT_USER)


def _opens(user: pwd.struct_passwd, uri: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_as(user), sys.executable, "-c", f"import libvirt; libvirt.open({uri!r}).close()"],
        capture_output=True, text=True, env={"HOME": "/", "PATH": os.environ["PATH"]})


class GroupSocketRelay:
    """A ``root:libvirt 0660`` Unix socket relaying each connection to libvirtd's socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        os.chown(path, 0, grp.getgrnam("libvirt").gr_gid)
        os.chmod(path, 0o660)
        self.server.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return  # closed
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(LIBVIRT_SOCKET)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def libvirt_uri(agent_user: pwd.struct_passwd, root: Path) -> Iterator[str]:
    """qemu:///system as the agent's user reaches it (see the module docstring)."""
    opened = _opens(agent_user, URI)
    if opened.returncode == 0:
        yield URI
        return
    assert "system bus" in opened.stderr, opened.stderr  # anything else is a real failure
    relay = GroupSocketRelay(root / "libvirt-sock")
    uri = f"qemu+unix:///system?socket={relay.path}"
    try:
        opened = _opens(agent_user, uri)
        assert opened.returncode == 0, opened.stderr
        yield uri
    finally:
        relay.close()


def _as(user: pwd.struct_passwd) -> list[str]:
    """The unit's User=, Group=, SupplementaryGroups= and NoNewPrivileges=, with no
    capability (CapabilityBoundingSet= empty)."""
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
            "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all"]


@pytest.fixture
def root() -> Iterator[Path]:
    """The unit's directories under one test directory QEMU can traverse."""
    TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
    path = TEST_ROOT / f"unpriv-{uuid.uuid4()}"
    path.mkdir(mode=0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_the_agent_runs_unprivileged_and_boots_a_guest(
        api: str, member: Account, guest: GuestImage, hv: Hypervisor,
        agent_user: pwd.struct_passwd, root: Path, libvirt_uri: str) -> None:
    qemu_group = grp.getgrnam(_qemu_group())
    uid, gid = agent_user.pw_uid, agent_user.pw_gid
    # As the unit (StateDirectory=, mode 0700) and install-compute.sh (0711 data directory,
    # 0750 instances and images owned by the agent and QEMU's group) lay them out.
    state = root / "minicloud-agent"
    data = root / "minicloud"
    instances, images = data / "instances", data / "images"
    state.mkdir(mode=0o700)
    os.chown(state, uid, gid)
    data.mkdir(mode=0o711)
    for d in (instances, images):
        d.mkdir(mode=0o750)
        os.chown(d, uid, qemu_group.gr_gid)
    agent = AgentProcess(
        api, root, unique("unpriv"), libvirt_uri, az=unique("az"),
        extra_args=["--network", "none", "--state-dir", str(state),
                    "--instances-dir", str(instances), "--image-cache-dir", str(images)],
        env={"HOME": str(state)}, umask=0o027,
        run_as=_as(agent_user))
    agent.start(token=enrollment_token(api))
    sid = ""
    try:
        cred = state / "credential.json"
        wait_until(lambda: cred.exists() or not agent.alive(), 60, "enrollment")
        assert agent.alive(), agent.output()
        assert agent.proc is not None
        status = Path(f"/proc/{agent.proc.pid}/status").read_text()
        ids = {line.split(":")[0]: line.split()[1:] for line in status.splitlines()}
        assert ids["Uid"] == [str(uid)] * 4 and ids["Gid"] == [str(gid)] * 4
        assert {str(grp.getgrnam("libvirt").gr_gid), str(qemu_group.gr_gid)} <= set(
            ids["Groups"])
        assert ids["CapEff"] == ["0000000000000000"]
        assert (cred.stat().st_uid, _mode(cred)) == (uid, 0o600)
        host_id = str(json.loads(cred.read_text())["host_id"])
        wait_until(lambda: (h := host(api, host_id))["state"] == "up" and h["resources"],
                   60, "host up with its inventory")

        s = create_server(api, member.headers, "tiny", guest.disk_id, name="unpriv-guest",
                          availability_zone=agent.az)
        sid = s["id"]
        assert_placed_on(api, sid, agent.name)
        wait_status(api, member.headers, sid, "ACTIVE", BOOT_WAIT)
        line = f"minicloud-guest: hostname=unpriv-guest instance-id={sid}"
        wait_until(lambda: line in console(api, member, sid), BOOT_WAIT, "hostname on console")

        # What the agent made is its own and QEMU's group's, never world-readable.
        instance = instances / sid
        assert (instance.stat().st_uid, instance.stat().st_gid) == (uid, qemu_group.gr_gid)
        assert _mode(instance) == 0o750
        # (libvirt's dynamic ownership lends a running guest's disks to QEMU's user.)
        for f in (instance / "disk.qcow2", instance / "seed.iso"):
            assert _mode(f) & 0o007 == 0, f
        for f in images.iterdir():
            assert _mode(f) & 0o007 == 0, f

        assert httpx.delete(f"{api}/v1/servers/{sid}",
                            headers=member.headers).status_code == 202
        wait_gone(api, member.headers, sid, BOOT_WAIT)
        assert domain_name(sid) not in hv.all_domain_names()
        assert not instance.exists()
    finally:
        agent.stop()
        print(agent.output())
        if sid:
            hv.destroy_and_undefine(sid)
