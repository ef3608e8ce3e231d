"""Flavors: the sizes servers come in."""
