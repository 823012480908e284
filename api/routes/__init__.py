"""The HTTP routes, one module per concern (EXP, XP, batch, health)."""
