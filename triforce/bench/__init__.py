"""Latency benchmarks on a GPU: every level against its memory-bandwidth floor (docs/DESIGN.md §7)."""
