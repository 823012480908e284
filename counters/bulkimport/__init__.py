"""``counters import``: users' EXP, subscriptions and top-ups from CSV or JSON Lines, validated
line by line before anything is written, each line applied at most once (lua/import_user.lua)."""
