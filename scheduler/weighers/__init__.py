"""Preferences, one module per weigher. Raw scores are normalized to [0, 1] by the pipeline."""
