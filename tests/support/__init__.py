"""Helpers shared by tests, benchmarks and the demo: databases, servers, clients."""
