"""Every filter, table-driven: (case, host, request) -> expected reason (None = kept)."""

from __future__ import annotations

import pytest

from scheduler.filters.aggregates import AggregatesFilter
from scheduler.filters.availability_zone import AvailabilityZoneFilter
from scheduler.filters.image import ImageFilter
from scheduler.filters.progress import HostProgressFilter
from scheduler.filters.resources import ResourcesFilter
from scheduler.filters.server_group import ServerGroupFilter
from scheduler.filters.status import HostStatusFilter
from scheduler.framework import Filter, HostState, RequestSpec
from tests.scheduler.builders import NOW, host, inv, request, snapshot

Case = tuple[str, HostState, RequestSpec, str | None]


def run(flt: Filter, h: HostState, spec: RequestSpec) -> str | None:
    check = flt.prepare(spec, snapshot(h))
    return None if check is None else check(h)


STATUS: list[Case] = [
    ("enabled, heartbeat now", host("a"), request(), None),
    ("disabled by an admin", host("a", enabled=False), request(), "disabled"),
    # down_after 60 s: NOW - 60 is the oldest fresh heartbeat.
    ("heartbeat exactly 60 s old", host("a", last_heartbeat=NOW - 60), request(), None),
    ("heartbeat 61 s old", host("a", last_heartbeat=NOW - 61), request(), "down"),
    ("never heard from", host("a", last_heartbeat=None), request(), "down"),
    ("disabled wins over down", host("a", enabled=False, last_heartbeat=None), request(),
     "disabled"),
]

PROGRESS: list[Case] = [
    ("loop progressed now", host("a", last_progress=NOW), request(), None),
    ("agent never reported progress", host("a", last_progress=None), request(), None),
    # degraded_after 300 s (the snapshot's default): NOW - 300 is the oldest progress kept.
    ("last pass exactly 300 s ago", host("a", last_progress=NOW - 300), request(), None),
    ("last pass 301 s ago", host("a", last_progress=NOW - 301), request(), "degraded"),
]

RESOURCES: list[Case] = [
    # RAM: 1024 used + 1024 <= (16384 - 0) * 1.0
    ("fits easily", host("a", ram=inv(16384, 1024)), request(), None),
    # RAM: 15360 + 1024 = 16384 <= 16384 * 1.0 -> exactly full still fits
    ("fills the last MB", host("a", ram=inv(16384, 15360)), request(), None),
    # RAM: 15361 + 1024 = 16385 > 16384
    ("one MB short", host("a", ram=inv(16384, 15361)), request(), "not_enough_MEMORY_MB"),
    # RAM: 0 + 1024 > (2048 - 1536) * 1.0 = 512
    ("reserved counts", host("a", ram=inv(2048, reserved=1536)), request(),
     "not_enough_MEMORY_MB"),
    # RAM: 1024 + 1024 <= 1024 * 2.0 = 2048
    ("overcommit ratio 2.0", host("a", ram=inv(1024, 1024, ratio=2.0)), request(), None),
    # VCPU: 31 + 2 = 33 > 8 * 4.0 = 32
    ("vCPU overcommit exhausted", host("a", vcpu=inv(8, 31, ratio=4.0)), request(vcpus=2),
     "not_enough_VCPU"),
    # DISK: 95 + 10 = 105 > 100
    ("disk short", host("a", disk=inv(100, 95)), request(), "not_enough_DISK_GB"),
    # VCPU checked first: 33 > 32 and RAM short too -> VCPU named
    ("first failing class is named",
     host("a", vcpu=inv(8, 32, ratio=4.0), ram=inv(512)), request(), "not_enough_VCPU"),
    # VCPU: 4 requested > max_unit 2 (capacity 8 * 4.0 = 32 would fit)
    ("above max_unit", host("a", vcpu=inv(8, ratio=4.0, max_unit=2)), request(vcpus=4),
     "unit_limit_VCPU"),
    # RAM: 1024 requested < min_unit 2048
    ("below min_unit", host("a", ram=inv(16384, min_unit=2048)), request(),
     "unit_limit_MEMORY_MB"),
    # disk_gb 0 is not requested at all: a full disk does not matter
    ("zero disk is not requested", host("a", disk=inv(100, 100)), request(disk_gb=0), None),
]

ZONES: list[Case] = [
    ("no zone requested", host("a", availability_zone="az2"), request(), None),
    ("same zone", host("a", availability_zone="az1"), request(availability_zone="az1"), None),
    ("other zone", host("a", availability_zone="az2"), request(availability_zone="az1"),
     "availability_zone"),
]

GROUPS: list[Case] = [
    ("anti-affinity, host free of members", host("a"),
     request(group=("anti-affinity", {"id-b": 1})), None),
    ("anti-affinity, member already there", host("a"),
     request(group=("anti-affinity", {"id-a": 1})), "anti_affinity"),
    ("affinity, first member goes anywhere", host("a"), request(group=("affinity", {})), None),
    ("affinity, on the members' host", host("a"), request(group=("affinity", {"id-a": 2})),
     None),
    ("affinity, elsewhere", host("a"), request(group=("affinity", {"id-b": 2})), "affinity"),
    ("soft policies never refuse", host("a"),
     request(group=("soft-anti-affinity", {"id-a": 3})), None),
]

IMAGES: list[Case] = [
    ("no requirements", host("a"), request(), None),
    ("matching architecture", host("a", architecture="aarch64"),
     request(image_architecture="aarch64"), None),
    ("other architecture", host("a"), request(image_architecture="aarch64"), "architecture"),
    # image min_ram 2048 > flavor 1024 MB
    ("flavor RAM below image min_ram", host("a"), request(image_min_ram=2048), "image_min_ram"),
    ("flavor RAM equals min_ram", host("a"), request(image_min_ram=1024), None),
    # image min_disk 20 > flavor 10 GB
    ("flavor disk below image min_disk", host("a"), request(image_min_disk=20),
     "image_min_disk"),
    ("0 GB flavor disk takes the image size", host("a"),
     request(disk_gb=0, image_min_disk=20), None),
]

AGGREGATES: list[Case] = [
    ("no extra_specs", host("a"), request(), None),
    ("tag present", host("a", aggregates={"ssd": "true", "rack": "r1"}),
     request(extra_specs={"ssd": "true"}), None),
    ("boolean and text compare equal", host("a", aggregates={"ssd": True}),
     request(extra_specs={"ssd": "True"}), None),
    ("tag missing", host("a", aggregates={"rack": "r1"}), request(extra_specs={"ssd": "true"}),
     "aggregate"),
    ("tag differs", host("a", aggregates={"ssd": "false"}),
     request(extra_specs={"ssd": "true"}), "aggregate"),
    ("all pairs needed", host("a", aggregates={"ssd": "true"}),
     request(extra_specs={"ssd": "true", "gpu": "1"}), "aggregate"),
]


@pytest.mark.parametrize(("flt", "case", "h", "spec", "expected"), [
    pytest.param(flt, *case, id=f"{flt.name}: {case[0]}")
    for flt, table in ((HostStatusFilter(), STATUS), (HostProgressFilter(), PROGRESS),
                       (ResourcesFilter(), RESOURCES),
                       (AvailabilityZoneFilter(), ZONES), (ServerGroupFilter(), GROUPS),
                       (ImageFilter(), IMAGES), (AggregatesFilter(), AGGREGATES))
    for case in table
])
def test_filter(flt: Filter, case: str, h: HostState, spec: RequestSpec,
                expected: str | None) -> None:
    assert run(flt, h, spec) == expected, case


def test_filters_that_do_not_apply_are_skipped() -> None:
    # No zone, no group, no image requirements, no extra_specs: nothing to run.
    spec = request()
    snap = snapshot(host("a"))
    for flt in (AvailabilityZoneFilter(), ServerGroupFilter(), ImageFilter(),
                AggregatesFilter()):
        assert flt.prepare(spec, snap) is None, flt.name
