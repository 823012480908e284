"""The benchmark: the service side by side with its ceilings and the Postgres-only design."""
