"""The guest metrics a server has: declared once; columns, queries and docs follow it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GuestMetric:
    """One derived metric: its name (also ``<name>_sum`` in the rollups) and unit."""

    name: str
    unit: str
    description: str

    @property
    def column(self) -> str:
        """The rollup column holding the sum of its samples."""
        return f"{self.name}_sum"


METRICS: tuple[GuestMetric, ...] = (
    GuestMetric("cpu_util", "%", "CPU time used, as a share of the server's vCPUs (0-100)."),
    GuestMetric("memory_used_mb", "MiB",
                "Memory used: balloon current minus unused when the guest reports it, "
                "else the QEMU process's resident memory, else the balloon size."),
    GuestMetric("disk_read_bps", "B/s", "Bytes read from the server's disks per second."),
    GuestMetric("disk_write_bps", "B/s", "Bytes written to the server's disks per second."),
    GuestMetric("net_rx_bps", "B/s", "Bytes received by the server's NICs per second."),
    GuestMetric("net_tx_bps", "B/s", "Bytes sent by the server's NICs per second."),
)

BY_NAME: dict[str, GuestMetric] = {m.name: m for m in METRICS}
