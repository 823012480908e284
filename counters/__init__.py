"""counters: EXP/levels and XP credits, enforced atomically in Redis, ledgered in Postgres."""
