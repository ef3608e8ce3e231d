"""The ``minicloud`` command line client."""
