"""Benchmarks of the SEEM engine: `python -m bench.run --help`."""
