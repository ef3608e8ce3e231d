"""Image requirements: the flavor is big enough for the image, the host has its architecture."""

from __future__ import annotations

from scheduler.framework import (
    ARCHITECTURE,
    DISK_GB,
    IMAGE_MIN_DISK,
    IMAGE_MIN_RAM,
    MEMORY_MB,
    HostCheck,
    HostState,
    RequestSpec,
    Snapshot,
)


class ImageFilter:
    """Refuses with ``image_min_ram`` / ``image_min_disk`` when the flavor is smaller than the
    image needs (then every host is refused, so the answer names the cause), and with
    ``architecture`` hosts whose CPU architecture differs from the image's."""

    name = "image"

    def prepare(self, spec: RequestSpec, snapshot: Snapshot) -> HostCheck | None:
        """Applies when the image states a minimum or an architecture."""
        if spec.image_min_ram > spec.amount(MEMORY_MB):
            return lambda _host: IMAGE_MIN_RAM
        # A flavor with a 0 GB root disk takes the image's size: nothing to check.
        disk_gb = spec.amount(DISK_GB)
        if disk_gb and spec.image_min_disk > disk_gb:
            return lambda _host: IMAGE_MIN_DISK
        arch = spec.image_architecture
        if not arch:
            return None

        def check(host: HostState) -> str | None:
            return None if host.architecture == arch else ARCHITECTURE

        return check
