"""Webhooks (issue #14): events derived from ledger rows, kept in an outbox, delivered signed.

outbox.py     which ledger events cause which webhooks; written in the flusher's transaction
signing.py    ``Counters-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``
deliverer.py  the background loop: due rows (FOR UPDATE SKIP LOCKED), POST, backoff, metrics
"""
