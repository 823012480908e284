"""The Redis side: key names, the Lua scripts' calls, auto-pipelining, idempotency, hydration."""
