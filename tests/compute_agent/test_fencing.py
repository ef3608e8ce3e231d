"""Fencing on libvirt's test driver: an evacuated server's old copy is powered off, undefined
and its files deleted, whatever state it was left in; doing it again changes nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from compute_agent.fencing import fence_one
from compute_agent.hypervisor import Hypervisor, write_test_node_xml
from compute_agent.spec import InstancePaths
from tests.compute_agent.factories import make_spec


@pytest.fixture
def hv(tmp_path: Path) -> Iterator[Hypervisor]:
    with Hypervisor(write_test_node_xml(tmp_path / "node.xml", 4, 8192, network=None)) as h:
        yield h


def _old_copy(hv: Hypervisor, root: Path, *, running: bool) -> str:
    spec = make_spec()
    paths = InstancePaths(root, spec.server_id)
    paths.create()
    paths.disk.write_bytes(b"old disk")
    hv.define(spec, paths)
    if running:
        hv.start(spec.server_id)
    return spec.server_id


@pytest.mark.parametrize(("running", "found"), [(True, "destroyed"), (False, "undefined")])
def test_the_old_copy_is_destroyed_undefined_and_its_files_deleted(
    hv: Hypervisor, tmp_path: Path, running: bool, found: str
) -> None:
    root = tmp_path / "instances"
    sid = _old_copy(hv, root, running=running)
    other = _old_copy(hv, root, running=True)  # a server that was not evacuated
    report = fence_one(hv, root, sid)
    assert (report.server_id, report.domain, report.files_removed) == (sid, found, True)
    assert hv.observed(sid) == "absent"
    assert not (root / sid).exists()
    assert hv.observed(other) == "running" and (root / other).exists()
    # Again (a report lost on the way): nothing left, nothing else touched.
    again = fence_one(hv, root, sid)
    assert (again.domain, again.files_removed) == ("absent", False)
    assert hv.observed(other) == "running"


def test_a_server_that_left_nothing_behind_is_reported_absent(
    hv: Hypervisor, tmp_path: Path
) -> None:
    report = fence_one(hv, tmp_path / "instances", str(uuid.uuid4()))
    assert (report.domain, report.files_removed) == ("absent", False)
