"""Helpers for tests that run real servers on loopback."""
