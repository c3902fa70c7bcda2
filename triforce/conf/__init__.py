"""Hydra configs of the triforce app (package data: the console script finds them here)."""
