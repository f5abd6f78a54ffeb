"""Benchmarks that print figures and write JSON: `python -m mused_fm.bench {model} --json OUT.json`."""
