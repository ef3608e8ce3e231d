"""How far each host's newest evacuation got, read from what its servers are now.

Kept apart from ``api.evacuation.service`` so the hosts view can show it without an import
cycle (the service uses ``api.hosts.service``).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.evacuation import repository
from api.evacuation.repository import REBUILDING
from api.evacuation.schemas import EvacuationProgress
from api.servers import repository as servers_repository
from api.servers import states


def progress(session: Session, host_ids: list[str]) -> dict[str, EvacuationProgress]:
    """The newest evacuation of each host that had one, counted as its servers are now."""
    batches = repository.latest_batches(session, host_ids)
    fences = repository.open_fence_counts(session, list(batches))
    counts = {h: n for h, n in _remaining(session, list(batches)).items()}
    out: dict[str, EvacuationProgress] = {}
    for host_id, rows in batches.items():
        tally = dict.fromkeys(("rebuilding", "done", "failed", "refused", "deleted"), 0)
        for evacuation, server in rows:
            if evacuation.result != REBUILDING:
                tally[evacuation.result] += 1
            elif server.deleted_at is not None or server.status == states.ERROR:
                tally["failed"] += 1
            elif server.task_state == states.REBUILDING:
                tally["rebuilding"] += 1
            else:
                tally["done"] += 1
        first = rows[0][0]
        out[host_id] = EvacuationProgress(
            batch_id=first.batch_id, requested_at=first.created_at,
            automatic=first.requested_by is None, servers=len(rows),
            remaining=counts.get(host_id, 0), fencing_pending=fences.get(host_id, 0), **tally)
    return out


def _remaining(session: Session, host_ids: list[str]) -> dict[str, int]:
    return {h: len(servers_repository.live_servers_on(session, h)) for h in host_ids}
