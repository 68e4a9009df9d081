"""Reliability: crash points, registry faults, properties and load (see conftest.py)."""
