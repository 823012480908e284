"""What the service is measured against: the bare HTTP ceiling and the Postgres-only design."""
