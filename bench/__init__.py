"""Benchmarks: parser micro-benchmarks (pytest-benchmark, bench/test_bench_*.py) and the whole-server load
driver (python -m bench.load_smtp).  See bench/README.md."""
