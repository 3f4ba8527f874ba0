"""Benchmarks: one module per measurement (bench/bench_*.py, each with `run() -> list[Row]`)."""
