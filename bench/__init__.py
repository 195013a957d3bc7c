"""Benchmarks: they print ratios against named baselines; never run as tests."""
