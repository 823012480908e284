"""The HTTP boundary: thin Starlette routes over the ``counters`` domain."""
