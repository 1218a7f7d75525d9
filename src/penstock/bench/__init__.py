"""Benchmarks of the network stack, run by ``penstock bench``."""
