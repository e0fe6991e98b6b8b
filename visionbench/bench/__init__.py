"""Benchmarks: sweeps, timing, latency percentiles, input-pipeline throughput."""
