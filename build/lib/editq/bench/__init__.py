"""Benchmarks: `python -m editq.bench.throughput`, `bench.enqueue`, `bench.priority` (see docs/benchmarks.md)."""
