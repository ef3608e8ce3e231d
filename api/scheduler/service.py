"""Simulation: run the real pipeline on a fresh snapshot without claiming anything."""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy.orm import Session

from api.config import Settings
from api.deps import Principal
from api.errors import Forbidden, NotFound
from api.flavors import service as flavors
from api.images import service as images
from api.models import Project
from api.scheduler.placement import evaluate, refusal_sentence, request_spec
from api.scheduler.schemas import (
    Capacity,
    HostCapacity,
    HostRef,
    SimulateRequest,
    SimulateResponse,
)
from api.server_groups import service as server_groups
from scheduler.capacity import how_many
from scheduler.filters.resources import ResourcesFilter
from scheduler.framework import HostState, RequestSpec, Snapshot
from scheduler.pipeline import FILTERS


def build_spec(session: Session, principal: Principal, body: SimulateRequest,
               request_id: str) -> RequestSpec:
    """The RequestSpec a create with these options would schedule, through the placement
    service's one builder, with the visibility that create would have.

    Flavor, image and server group are resolved as a create by the caller resolves them, or
    by the project in ``body.project_id`` (its flavors, images and groups only): another
    project's private flavor or image and another project's group are "not found".

    Raises NotFound (``project_not_found``, ``flavor_not_found``, ``image_not_found``,
    ``server_group_not_found``), Conflict ``image_name_ambiguous``.
    """
    if body.project_id is not None:
        if session.get(Project, body.project_id) is None:
            raise NotFound("No such project.", code="project_not_found")
        # "Simulate as this project": the visibility a member of that project has.
        principal = replace(principal, project_id=body.project_id, role="member")
    project_id = principal.project_id
    flavor = flavors.get_flavor(session, principal, body.flavor) if body.flavor else None
    sizes: object = flavor if flavor is not None else body
    image = images.find_image(session, principal, body.image) if body.image else None
    # A create may only join a group of its own project (admins included).
    group = (server_groups.get_project_group(session, project_id, body.server_group)
             if body.server_group is not None else None)
    return request_spec(server_id="simulated", project_id=project_id or "simulated",
                        sizes=sizes, flavor=flavor, image=image, group=group,
                        availability_zone=body.availability_zone, request_id=request_id)


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


def simulate(session: Session, settings: Settings, principal: Principal, body: SimulateRequest,
             request_id: str) -> SimulateResponse:
    """Would the request fit, where, and if not why; nothing is written.

    A tenant asks as its own project and the answer names no host (as ``no_valid_host``
    does): the counts, the refusals per reason and per filter and how many more fit.

    Raises NotFound for an unknown (or invisible) project, flavor, image or server group,
    Conflict ``image_name_ambiguous``, Forbidden ``admin_required`` for a tenant naming
    ``project_id``.
    """
    if not principal.is_admin and body.project_id is not None:
        raise Forbidden("Only admins simulate as another project.", code="admin_required")
    spec = build_spec(session, principal, body, body.request_id or request_id)
    spec, snapshot, decision, _ = evaluate(session, settings, spec)
    names = {h.id: h.name for h in snapshot.hosts}
    record = decision.summary()
    if decision.host is None:
        detail = refusal_sentence(decision.hosts, decision.refusals)
    else:
        detail = (f"{decision.candidates} of {decision.hosts} hosts fit; "
                  f"{decision.host.name} scores best.")
    capacity = capacity_for(spec, snapshot)
    if not principal.is_admin:
        detail = (refusal_sentence(decision.hosts, decision.refusals) if decision.host is None
                  else f"{decision.candidates} of {decision.hosts} hosts fit.")
        return SimulateResponse(
            fits=decision.host is not None, host=None, request_id=spec.request_id,
            hosts=decision.hosts, candidates=decision.candidates,
            refusals=dict(sorted(decision.refusals.items())),
            refusals_by_filter=dict(sorted(decision.refusals_by_filter.items())),
            detail=detail, per_host=[], top=[],
            capacity=capacity.model_copy(update={"by_host": []}))
    return SimulateResponse(
        fits=decision.host is not None,
        host=HostRef(id=decision.host.id, name=decision.host.name) if decision.host else None,
        request_id=spec.request_id,
        hosts=decision.hosts,
        candidates=decision.candidates,
        refusals=dict(sorted(decision.refusals.items())),
        refusals_by_filter=dict(sorted(decision.refusals_by_filter.items())),
        detail=detail,
        per_host=[{"host_id": hid, "host": names.get(hid, hid), "reason": reason}
                  for hid, reason in sorted(decision.refused.items(),
                                            key=lambda kv: names.get(kv[0], kv[0]))],
        top=record["top"],
        capacity=capacity,
    )
