"""What every request body shares."""

from __future__ import annotations

import msgspec


class Request(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A request body: fields by name only, and a field the route does not know is a 400."""
