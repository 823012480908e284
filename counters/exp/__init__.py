"""EXP and levels: awards with per-action daily limits and per-level daily caps (seed 000)."""
