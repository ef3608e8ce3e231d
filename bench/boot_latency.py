#!/usr/bin/env python3
"""Boot latency: time from "boot this guest" to the guest's first userspace line on its console.

Paths measured side by side in one run (same guest image, same domain XML builder):

* ``raw``  ``virsh create`` of the domain XML directly (the floor the control plane adds to);
* ``api``  ``POST /v1/servers`` through the whole stack (to be added with the agent: implement
  another ``BootTarget`` and register it in ``TARGETS``).

Each run starts a fresh guest (new overlay, empty console log) and polls for two markers the
tiny guest prints: ``minicloud-guest: userspace started`` (first userspace line) and the
``hostname=... instance-id=...`` line (seed read). Numbers go to docs/benchmarks.md.

    /work/venv/bin/python bench/boot_latency.py --runs 5 [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

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
        xml.write_text(build_domain_xml(spec, paths))
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
    samples: list[Sample] = []
    try:
        for i in range(args.runs):
            for target in targets:  # interleaved so load changes hit every path alike
                samples.append(measure(target, args.timeout))
                s = samples[-1]
                if not args.json:
                    print(f"run {i + 1} {s.target}: start call {s.start_call_s:.2f} s, "
                          f"first line {s.first_line_s:.2f} s, "
                          f"seed line {s.seed_line_s:.2f} s", flush=True)
    finally:
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
