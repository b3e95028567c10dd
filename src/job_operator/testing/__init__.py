"""Test support: a real Kubernetes API server built from Debian packages."""
