"""Benchmarks that measure UPS's own code paths (``python -m ups.bench.loader``)."""
