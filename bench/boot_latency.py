#!/usr/bin/env python3
"""Boot latency: time from "boot this guest" to the guest's first userspace line on its console.

Paths measured side by side in one run (same guest image, same domain XML builder):

* ``raw``  ``virsh create`` of the domain XML directly (the floor the control plane adds to);
* ``api``  ``POST /v1/servers`` through the whole stack: a real API process (SQLite) and a real
  ``minicloud-agent`` process on the same libvirtd, started once per run of the benchmark.
  The timer starts at the POST; the console is read from the same console log file (the time
  the agent then takes to ship it to ``GET /v1/servers/{id}/console`` is its shipping interval,
  not boot latency). A warm-up boot fills the agent's image cache first.

Each run starts a fresh guest (new overlay, empty console log) and polls for two markers the
tiny guest prints: ``minicloud-guest: userspace started`` (first userspace line) and the
``hostname=... instance-id=...`` line (seed read). Numbers go to docs/benchmarks.md.

    /work/venv/bin/python bench/boot_latency.py --runs 5 [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compute_agent.domain_xml import build_domain_xml
from compute_agent.imagecache import create_overlay
from compute_agent.seed import write_seed
from compute_agent.spec import InstancePaths, ServerSpec, VirtType

REPO = Path(__file__).resolve().parents[1]
FIRST_LINE = "minicloud-guest: userspace started"
SEED_LINE = "minicloud-guest: hostname="


class BootTarget(Protocol):
    """One way of booting the benchmark guest."""

    name: str

    def prepare(self) -> None:
        """Untimed setup for one fresh guest (files, XML; for the API: nothing)."""

    def start(self) -> None:
        """Ask for the guest to boot (timed from here); return when the request is accepted."""

    def console(self) -> str:
        """The guest's console output so far ("" before it exists)."""

    def cleanup(self) -> None:
        """Remove the guest and its files."""


@dataclass
class RawVirshCreate:
    """``virsh create`` of the same domain XML the agent would define (transient domain)."""

    uri: str
    virt_type: VirtType
    image_dir: Path
    work: Path
    name: str = "raw"
    cmdline: str | None = None
    _spec: ServerSpec | None = field(default=None, init=False)
    _paths: InstancePaths | None = field(default=None, init=False)
    _xml: Path | None = field(default=None, init=False)

    def prepare(self) -> None:
        img = self.image_dir
        self._spec = spec = ServerSpec(
            server_id=str(uuid.uuid4()), project_id=str(uuid.uuid4()), name="bench",
            vcpus=1, ram_mb=256, disk_gb=1, image_path=img / "disk.qcow2",
            kernel_path=img / "vmlinuz", initrd_path=img / "initrd.img",
            kernel_cmdline=self.cmdline or (img / "cmdline").read_text().strip(), network=None,
            virt_type=self.virt_type)
        self._paths = paths = InstancePaths(self.work / "instances", spec.server_id)
        paths.create()
        create_overlay(spec.image_path, "qcow2", paths.disk, spec.disk_gb)
        write_seed(spec, paths.seed)
        xml = paths.directory / "domain.xml"
        # Without the minicloud <metadata> the domain is foreign to a running agent, which
        # would otherwise remove it as a leftover (it only boots what the API asks for).
        root = ET.fromstring(build_domain_xml(spec, paths))
        for meta in root.findall("metadata"):
            root.remove(meta)
        xml.write_text(ET.tostring(root, encoding="unicode"))
        self._xml = xml

    def start(self) -> None:
        assert self._xml is not None, "prepare() first"
        subprocess.run(["virsh", "-q", "-c", self.uri, "create", str(self._xml)], check=True,
                       stdout=subprocess.DEVNULL)

    def console(self) -> str:
        assert self._paths is not None
        try:
            return self._paths.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def cleanup(self) -> None:
        if self._spec is not None:
            subprocess.run(["virsh", "-q", "-c", self.uri, "destroy", self._spec.domain_name],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        if self._paths is not None:
            self._paths.remove()
        self._spec = self._paths = None


class ApiStack:
    """An API process and an agent process of their own, for the ``api`` target."""

    def __init__(self, work: Path, uri: str, virt_type: str) -> None:
        self.work = work
        self.token = "mcac_bench-" + secrets.token_hex(16)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.procs: list[subprocess.Popen[bytes]] = []
        env = dict(os.environ, MINICLOUD_DATABASE_URL=f"sqlite:///{work}/api.db",
                   MINICLOUD_DATA_DIR=str(work / "api-data"), MINICLOUD_LOG_LEVEL="WARNING",
                   MINICLOUD_BOOTSTRAP_ADMIN_TOKEN=self.token, PYTHONPATH=str(REPO))
        self._spawn([sys.executable, "-c", "from api.server import run; run()", "--host",
                     "127.0.0.1", "--port", str(port)], env, "api.log")
        self._wait(lambda: httpx.get(self.url + "/healthz", timeout=1).status_code == 200,
                   "API up")
        self.agent_home = work / "agent"
        self._spawn([sys.executable, "-c", "from compute_agent.main import run; run()",
                     "--api", self.url, "--admin-token", self.token, "--name", "bench-host",
                     "--libvirt-uri", uri, "--virt-type", virt_type, "--network", "none",
                     "--state-dir", str(self.agent_home / "state"),
                     "--instances-dir", str(self.agent_home / "instances"),
                     "--image-cache-dir", str(self.agent_home / "images"),
                     "--shutdown-timeout", "0", "--log-level", "WARNING"], env, "agent.log")
        self.admin = {"Authorization": f"Bearer {self.token}"}
        self._wait(lambda: any(h["state"] == "up" and h["resources"] for h in httpx.get(
            self.url + "/v1/hosts", headers=self.admin).json()), "agent up")

    def _spawn(self, argv: list[str], env: dict[str, str], log: str) -> None:
        with open(self.work / log, "ab") as out:
            self.procs.append(subprocess.Popen(argv, env=env, stdout=out,
                                               stderr=subprocess.STDOUT, cwd=REPO))

    def _wait(self, check: Any, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{what} within {timeout}s (see {self.work})")

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        r = httpx.request(method, self.url + path, headers=self.admin, timeout=300, **kwargs)
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text}")
        return r.json() if r.content else None

    def upload_guest(self, image_dir: Path, cmdline: str) -> str:
        """Upload kernel, initramfs and disk; return the disk image id (not timed)."""
        ids = {}
        for name, fmt in (("vmlinuz", "aki"), ("initrd.img", "ari")):
            ids[fmt] = self.request("POST", "/v1/images", json={
                "name": f"bench-{name}", "disk_format": fmt})["id"]
            self.request("PUT", f"/v1/images/{ids[fmt]}/file",
                         content=(image_dir / name).read_bytes())
        disk = self.request("POST", "/v1/images", json={
            "name": "bench-disk", "disk_format": "qcow2", "properties": {
                "kernel_id": ids["aki"], "ramdisk_id": ids["ari"], "kernel_cmdline": cmdline}})
        self.request("PUT", f"/v1/images/{disk['id']}/file",
                     content=(image_dir / "disk.qcow2").read_bytes())
        self.request("POST", "/v1/flavors", json={"name": "bench", "vcpus": 1, "ram_mb": 256,
                                                  "disk_gb": 1})
        return str(disk["id"])

    def close(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


@dataclass
class ApiCreateServer:
    """``POST /v1/servers`` through the API, the scheduler and the agent."""

    stack: ApiStack
    image_id: str
    name: str = "api"
    _server_id: str | None = field(default=None, init=False)

    def prepare(self) -> None:
        pass

    def start(self) -> None:
        self._server_id = self.stack.request("POST", "/v1/servers", json={
            "name": "bench", "flavor": "bench", "image": self.image_id})["id"]

    def console(self) -> str:
        assert self._server_id is not None
        log = self.stack.agent_home / "instances" / self._server_id / "console.log"
        try:
            return log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def cleanup(self) -> None:
        sid, self._server_id = self._server_id, None
        if sid is None:
            return
        self.stack.request("DELETE", f"/v1/servers/{sid}")

        def gone() -> bool:
            r = httpx.get(f"{self.stack.url}/v1/servers/{sid}", headers=self.stack.admin)
            return r.status_code == 404
        self.stack._wait(gone, f"server {sid} deleted", timeout=120)


@dataclass
class Sample:
    target: str
    start_call_s: float  # until the start request returned (virsh create / POST accepted)
    first_line_s: float
    seed_line_s: float


def measure(target: BootTarget, timeout: float) -> Sample:
    """Boot once; seconds from the start request to each marker on the console.

    Raises:
        TimeoutError: a marker did not appear within ``timeout`` seconds.
    """
    target.prepare()  # overlay, seed and XML are not timed
    try:
        t0 = time.monotonic()
        target.start()
        started = time.monotonic() - t0
        first = seed = None
        while time.monotonic() - t0 < timeout:
            out = target.console()
            now = time.monotonic() - t0
            if first is None and FIRST_LINE in out:
                first = now
            if SEED_LINE in out:
                seed = now
                first = first if first is not None else now
                return Sample(target.name, round(started, 3), round(first, 3), round(seed, 3))
            time.sleep(0.02)
        raise TimeoutError(f"{target.name}: no console markers within {timeout}s")
    finally:
        target.cleanup()


def summary(samples: list[Sample]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in sorted({s.target for s in samples}):
        first = [s.first_line_s for s in samples if s.target == name]
        seed = [s.seed_line_s for s in samples if s.target == name]
        call = [s.start_call_s for s in samples if s.target == name]
        out[name] = {"runs": len(first), "first_line_median_s": statistics.median(first),
                     "first_line_min_s": min(first), "first_line_max_s": max(first),
                     "seed_line_median_s": statistics.median(seed),
                     "start_call_median_s": statistics.median(call)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="guest boot latency benchmark")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--uri", default="qemu:///system")
    parser.add_argument("--virt-type", choices=["kvm", "qemu"], default="qemu")
    parser.add_argument("--image-dir", type=Path,
                        default=Path("/var/lib/minicloud-test/guest-image"))
    parser.add_argument("--work", type=Path, default=Path("/var/lib/minicloud-test"))
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--cmdline", help="kernel command line (default: the image's cmdline)")
    parser.add_argument("--compare-cmdline", metavar="CMDLINE",
                        help="also boot with this kernel command line, interleaved, as 'raw-alt'")
    parser.add_argument("--json", action="store_true", help="print samples and summary as JSON")
    parser.add_argument("--no-api", action="store_true",
                        help="only the raw path (no API and agent processes)")
    args = parser.parse_args()

    subprocess.run([str(REPO / "deploy" / "build-guest-image.sh"), str(args.image_dir)],
                   check=True, stdout=subprocess.DEVNULL)
    args.work.mkdir(parents=True, exist_ok=True)
    args.work.chmod(0o755)
    work = args.work / f"bench-{uuid.uuid4()}"
    work.mkdir(mode=0o755)
    targets: list[BootTarget] = [RawVirshCreate(args.uri, args.virt_type, args.image_dir, work,
                                                cmdline=args.cmdline)]
    if args.compare_cmdline:
        targets.append(RawVirshCreate(args.uri, args.virt_type, args.image_dir, work,
                                      name="raw-alt", cmdline=args.compare_cmdline))
    stack = None
    samples: list[Sample] = []
    try:
        if not args.no_api:
            stack = ApiStack(work, args.uri, args.virt_type)
            image_id = stack.upload_guest(
                args.image_dir, args.cmdline or (args.image_dir / "cmdline").read_text().strip())
            api_target = ApiCreateServer(stack, image_id)
            measure(api_target, args.timeout)  # warm-up: fills the agent's image cache
            targets.append(api_target)
        for i in range(args.runs):
            for target in targets:  # interleaved so load changes hit every path alike
                samples.append(measure(target, args.timeout))
                s = samples[-1]
                if not args.json:
                    print(f"run {i + 1} {s.target}: start call {s.start_call_s:.2f} s, "
                          f"first line {s.first_line_s:.2f} s, "
                          f"seed line {s.seed_line_s:.2f} s", flush=True)
    finally:
        if stack is not None:
            stack.close()
        shutil.rmtree(work, ignore_errors=True)
    result = summary(samples)
    if args.json:
        print(json.dumps({"samples": [asdict(s) for s in samples], "summary": result},
                         indent=1))
    else:
        for name, r in result.items():
            print(f"{name}: median first line {r['first_line_median_s']:.2f} s "
                  f"(min {r['first_line_min_s']:.2f}, max {r['first_line_max_s']:.2f}, "
                  f"{r['runs']:.0f} runs); median seed line {r['seed_line_median_s']:.2f} s; "
                  f"median start call {r['start_call_median_s']:.2f} s")


if __name__ == "__main__":
    main()
