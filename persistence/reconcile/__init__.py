"""Reconcile: compare Redis with the Postgres ledger and repair drift in the safe direction."""
