"""Shared fixtures: each stage keeps its own in tests/fixtures_<stage>.py, imported here."""
