"""Benchmarks: speed and memory targets, each a script writing JSON to ``bench/results/`` plus a one-line summary."""
