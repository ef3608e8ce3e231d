"""minicloud API service: the only process that opens the database."""
