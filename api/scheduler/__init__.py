"""Placement inside the API: snapshots from SQL, the place() entry point, the simulate route."""
