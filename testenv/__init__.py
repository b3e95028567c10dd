"""The test environment: a real Kubernetes API server built from Debian packages.

Development tooling for the tests, the demo and the benchmark; not part of the
installed package (nothing in src/ imports it).
"""
