"""Benchmark sections and their shared machinery (see `benchmarks/__init__.py`)."""
