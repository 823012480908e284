"""counters: EXP/levels and XP credits, counted atomically in Redis.

The code is laid out by concern; dependencies point one way (``tests/system/test_layout.py``
walks the imports and fails on an edge against it)::

    api/                  HTTP boundary: app, hot lane, routes, schemas, errors -> statuses
     └─> counters.runtime composition root: builds clients, services and the flusher from Settings
          ├─> counters.exp, counters.xp      the domain services (EXP awards; XP debits and holds)
          │    └─> counters.rules             rules as data (default_rules.toml), validated
          │    └─> counters.redis             keys, the Lua scripts' typed calls, auto-pipelining
          └─> persistence                     the durable side: ledger events, store, writer,
                                              migrations, flusher, recovery, reconcile
    counters.cli          commands (serve, flush, reconcile, migrate, loadtest, import), embedded
                          servers, dev creds; cli.loadtest: the load driver shared with make bench
    counters.bulkimport   import files: lines validated against the rules, applied once each

    shared by all: counters.errors, counters.clock, counters.settings, counters.auth,
                   counters.tasks (tasks whose failure nobody is left waiting for)

The domain (``counters.exp``, ``counters.xp``, ``counters.rules``, ``counters.redis`` and the
shared modules) never imports ``persistence``, ``counters.runtime``, ``counters.cli`` or
``api``. ``persistence`` may use the domain's keys, errors and types, never ``api`` or the
composition root.
"""
