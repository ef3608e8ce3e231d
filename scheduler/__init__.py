"""Placement as a library: filters and weighers over a snapshot, and the race-free claim."""
