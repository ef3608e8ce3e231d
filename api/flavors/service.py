"""Flavor rules."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.models import Flavor

# name: (vcpus, ram_mb, disk_gb)
DEFAULT_FLAVORS: dict[str, tuple[int, int, int]] = {
    "tiny": (1, 512, 1),
    "small": (1, 2048, 20),
    "medium": (2, 4096, 40),
    "large": (4, 8192, 80),
}


def ensure_default_flavors(session: Session) -> list[Flavor]:
    """Create the default public flavors that do not exist yet; returns the created ones."""
    existing = set(session.scalars(select(Flavor.name)).all())
    created = [
        Flavor(name=name, vcpus=v, ram_mb=r, disk_gb=d, is_public=True, extra_specs={})
        for name, (v, r, d) in DEFAULT_FLAVORS.items()
        if name not in existing
    ]
    session.add_all(created)
    session.flush()
    return created
