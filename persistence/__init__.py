"""The durable side: ledger event schema, store, writer, migrations, flusher, recovery, reconcile.

Redis acknowledges; this package makes it durable in Postgres and compares the two.
"""
