"""Benchmarks: each writes JSON and a Markdown table to bench/results/ (run as ``python -m bench.<name>``)."""
