"""Guest metrics: agents' libvirt counters in, rates and rollups out (docs/operations.md)."""
