"""Simulation: run the real pipeline on a fresh snapshot without claiming anything."""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from api.config import Settings
from api.errors import NotFound
from api.models import Flavor, Image, ServerGroup
from api.scheduler.placement import evaluate, refusal_sentence
from api.scheduler.schemas import (
    Capacity,
    HostCapacity,
    HostRef,
    SimulateRequest,
    SimulateResponse,
)
from scheduler.capacity import how_many
from scheduler.filters.resources import ResourcesFilter
from scheduler.framework import HostState, RequestSpec, ServerGroupSpec, Snapshot
from scheduler.pipeline import FILTERS


def build_spec(session: Session, body: SimulateRequest, request_id: str) -> RequestSpec:
    """The RequestSpec a create with these options would schedule.

    Raises NotFound (``flavor_not_found``, ``image_not_found``, ``server_group_not_found``).
    """
    extra_specs: dict[str, object] = {}
    if body.flavor is not None:
        flavor = session.scalar(select(Flavor).where(
            or_(Flavor.id == body.flavor, Flavor.name == body.flavor)))
        if flavor is None:
            raise NotFound(f"No flavor {body.flavor!r}.", code="flavor_not_found")
        vcpus, ram_mb, disk_gb = flavor.vcpus, flavor.ram_mb, flavor.disk_gb
        extra_specs = dict(flavor.extra_specs or {})
    else:
        vcpus, ram_mb, disk_gb = body.vcpus or 0, body.ram_mb or 0, body.disk_gb or 0
    min_ram = min_disk = 0
    arch: str | None = None
    if body.image is not None:
        image = session.scalar(select(Image).where(
            or_(Image.id == body.image, Image.name == body.image)).limit(1))
        if image is None:
            raise NotFound(f"No image {body.image!r}.", code="image_not_found")
        min_ram, min_disk = image.min_ram, image.min_disk
        arch = (image.properties or {}).get("architecture")
    group: ServerGroupSpec | None = None
    if body.server_group is not None:
        row = session.get(ServerGroup, body.server_group)
        if row is None:
            raise NotFound(f"No server group {body.server_group!r}.",
                           code="server_group_not_found")
        group = ServerGroupSpec(row.id, row.policy)
    return RequestSpec(server_id="simulated", project_id="simulated", vcpus=vcpus,
                       ram_mb=ram_mb, disk_gb=disk_gb, image_min_ram=min_ram,
                       image_min_disk=min_disk, image_architecture=arch,
                       extra_specs=extra_specs, availability_zone=body.availability_zone,
                       server_group=group, request_id=request_id)


def _eligible_but_for_resources(spec: RequestSpec, snapshot: Snapshot) -> list[HostState]:
    """Hosts every filter but the resources filter keeps."""
    checks = [c for f in FILTERS if not isinstance(f, ResourcesFilter)
              if (c := f.prepare(spec, snapshot)) is not None]
    return [h for h in snapshot.hosts if all(check(h) is None for check in checks)]


def capacity_for(spec: RequestSpec, snapshot: Snapshot) -> Capacity:
    """How many more servers like ``spec`` fit, host by host (fit rule per class, minimum).

    Hard anti-affinity allows one per host; hard affinity fills a single host.
    """
    by_host: list[HostCapacity] = []
    for host in _eligible_but_for_resources(spec, snapshot):
        counts = []
        for rc, amount in spec.resources.items():
            inv = host.inventories.get(rc)
            counts.append(how_many(inv.free, amount, inv.min_unit, inv.max_unit)
                          if inv is not None else 0)
        count = min(counts) if counts else 0
        if count:
            by_host.append(HostCapacity(host_id=host.id, host=host.name, count=count))
    group = spec.server_group
    if group is not None and group.policy == "anti-affinity":
        by_host = [h.model_copy(update={"count": 1}) for h in by_host]
    if group is not None and group.policy == "affinity" and by_host:
        by_host = [max(by_host, key=lambda h: (h.count, h.host_id))]
    by_host.sort(key=lambda h: (-h.count, h.host))
    return Capacity(availability_zone=spec.availability_zone,
                    additional=sum(h.count for h in by_host), by_host=by_host)


def simulate(session: Session, settings: Settings, body: SimulateRequest,
             request_id: str) -> SimulateResponse:
    """Would the request fit, where, and if not why; nothing is written.

    Raises NotFound for an unknown flavor, image or server group.
    """
    spec = build_spec(session, body, body.request_id or request_id)
    spec, snapshot, decision, _ = evaluate(session, settings, spec)
    names = {h.id: h.name for h in snapshot.hosts}
    record = decision.summary()
    if decision.host is None:
        detail = refusal_sentence(decision.hosts, decision.refusals)
    else:
        detail = (f"{decision.candidates} of {decision.hosts} hosts fit; "
                  f"{decision.host.name} scores best.")
    return SimulateResponse(
        fits=decision.host is not None,
        host=HostRef(id=decision.host.id, name=decision.host.name) if decision.host else None,
        request_id=spec.request_id,
        hosts=decision.hosts,
        candidates=decision.candidates,
        refusals=dict(sorted(decision.refusals.items())),
        detail=detail,
        per_host=[{"host_id": hid, "host": names.get(hid, hid), "reason": reason}
                  for hid, reason in sorted(decision.refused.items(),
                                            key=lambda kv: names.get(kv[0], kv[0]))],
        top=record["top"],
        capacity=capacity_for(spec, snapshot),
    )
