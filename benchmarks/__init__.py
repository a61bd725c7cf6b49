"""Benchmarks: run as modules (`python -m benchmarks.download`); results in benchmarks/results/."""
