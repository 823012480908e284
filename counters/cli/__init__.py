"""Commands (``counters serve|flush|reconcile|migrate``), embedded servers, dev credentials."""
