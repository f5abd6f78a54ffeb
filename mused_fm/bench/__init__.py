"""Benchmarks that print figures and write JSON, and the doc they fill: `python -m mused_fm.bench --help`."""
