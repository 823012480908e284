"""Shared test helpers: credentials, clock, Postgres and XP (fixtures: tests/conftest.py)."""
