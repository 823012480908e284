"""Development credentials for `counters serve` in development mode (COUNTERS_DEV_MODE=1).

They are made once, kept under the data dir so tokens survive restarts, and printed with a curl
example that works as pasted. Never used when COUNTERS_JWT_SECRET or COUNTERS_SERVICE_KEYS is set.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import msgspec

from counters.auth import issue_token
from counters.cli.private import write_private

DEMO_USER = "demo-user"


@dataclass(frozen=True, slots=True)
class DevCredentials:
    jwt_secret: str
    service_key: str

    @classmethod
    def load_or_create(cls, data_dir: Path) -> DevCredentials:
        path = data_dir / "dev-credentials.json"
        if path.exists():
            stored = msgspec.json.decode(path.read_bytes(), type=dict[str, str])
            return cls(stored["jwt_secret"], stored["service_key"])
        creds = cls(secrets.token_urlsafe(32), secrets.token_urlsafe(24))
        write_private(
            path,
            msgspec.json.encode(
                {"jwt_secret": creds.jwt_secret, "service_key": creds.service_key}
            ).decode(),
        )
        return creds

    def write_env(self, data_dir: Path) -> tuple[Path, str]:
        """Write ``dev.env`` (TOKEN, SERVICE_KEY) for the README's examples; the file and token."""
        token = issue_token(self.jwt_secret, DEMO_USER, ttl_seconds=30 * 86_400)
        path = data_dir / "dev.env"
        write_private(path, f"export TOKEN={token}\nexport SERVICE_KEY={self.service_key}\n")
        return path, token

    def banner(self, base_url: str, data_dir: Path, *, demo: bool = False) -> str:
        """What to paste to try the service (and, in dev mode, the demo page's URL)."""
        env_file, token = self.write_env(data_dir)
        lines = (
            [
                f"Demo page (COUNTERS_DEV_MODE): {base_url}/demo?token={token}",
                f"API docs: {base_url}/docs",
            ]
            if demo
            else []
        )
        return "\n".join(
            [
                *lines,
                "Dev credentials (no COUNTERS_JWT_SECRET / COUNTERS_SERVICE_KEYS set),",
                f"also in {env_file} (source it to run the README's examples):",
                f"  user token for {DEMO_USER} (30 days): {token}",
                f"  service key: {self.service_key}",
                # A read: an award here (daily_chat, once a day) would be refused when the
                # README's "Try it" sends it next (a new user's walkthrough, session 15)
                "Try:",
                f"  curl -s {base_url}/api/exp/progress -H 'Authorization: Bearer {token}'",
            ]
        )
