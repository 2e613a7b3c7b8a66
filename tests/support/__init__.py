"""Test support: a Hub-compatible HTTP server and tiny random models built on the fly."""
