"""Workload mobility: migration records, cold migration, host drain (docs/operations.md)."""
