"""Benchmarks: `python -m bench.throughput`, `bench.enqueue`, `bench.priority` (see docs/benchmarks.md)."""
