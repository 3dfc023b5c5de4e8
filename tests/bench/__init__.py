"""Benchmarks: they print figures and write JSON; they never assert a number."""
