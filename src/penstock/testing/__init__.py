"""Helpers for testing and benchmarking penstock: pipelines, sources and sinks."""
