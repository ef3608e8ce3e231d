"""Hard constraints, one module per filter."""
