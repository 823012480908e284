"""XP credits: checks, debits, holds, refunds, grants and subscriptions (seed 004)."""
