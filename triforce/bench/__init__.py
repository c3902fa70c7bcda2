"""Latency benchmarks on a GPU: every level against its memory-bandwidth floor (DESIGN.md §7)."""
