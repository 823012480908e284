"""The composition root: builds Redis clients, scripts, services and the flusher from Settings.

The only place outside ``counters.cli`` that wires the domain to ``persistence``.
"""
