"""Placement as a library: filters and weighers over a host snapshot, plus the SQL claim."""
