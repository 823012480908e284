"""Settings from COUNTERS_* variables, and the clock they shift."""

from __future__ import annotations

from pathlib import Path

import pytest

from counters.cli.devcreds import DevCredentials
from counters.clock import SystemClock, next_utc_midnight, utc_day
from counters.errors import ConfigError
from counters.settings import Settings, parse_bool, parse_int
from tests.support.core import NOON


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8000, 1)
    assert settings.redis_url is None
    assert settings.data_dir == Path(".counters")


def test_values_are_parsed_by_type() -> None:
    settings = Settings.from_env(
        {
            "COUNTERS_PORT": "9001",
            "COUNTERS_SERVICE_KEYS": "a, b,,c",
            "COUNTERS_CLOCK_OFFSET_SECONDS": "86400.5",
            "COUNTERS_DATA_DIR": "/tmp/x",
            "COUNTERS_REDIS_URL": "redis://127.0.0.1:1/0",
            "UNRELATED": "ignored",
        }
    )
    assert settings.port == 9001
    assert settings.service_keys == ("a", "b", "c")
    assert settings.clock_offset_seconds == 86400.5
    assert settings.data_dir == Path("/tmp/x")
    assert settings.redis_url == "redis://127.0.0.1:1/0"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"COUNTERS_PORT": "eighty"}, "COUNTERS_PORT='eighty'"),
        (
            {"COUNTERS_PORT": "70000"},
            r"COUNTERS_PORT=70000: out of range \(must be >= 1 and <= 65535",
        ),
        ({"COUNTERS_KEY_BUCKETS": "0"}, "COUNTERS_KEY_BUCKETS=0: out of range"),
        ({"COUNTERS_FLUSHER_ENABLED": "ture"}, "COUNTERS_FLUSHER_ENABLED='ture': not a boolean"),
        ({"COUNTERS_DEV_MODE": "on"}, "COUNTERS_DEV_MODE='on': not a boolean"),
        ({"COUNTERS_FLUSH_BACKOFF_MAX_SECONDS": "nan"}, "COUNTERS_FLUSH_BACKOFF_MAX_SECONDS"),
        ({"COUNTERS_LOG_FORMAT": "xml"}, "COUNTERS_LOG_FORMAT='xml': must be one of text, json"),
        ({"COUNTERS_HOLD_TTL_SECONDS": "0"}, "COUNTERS_HOLD_TTL_SECONDS=0: out of range"),
        # A reviewer's finding: 1e308 was accepted, "now" became infinite, and every award and
        # progress read answered 500 ("cannot convert float infinity to integer").
        (
            {"COUNTERS_CLOCK_OFFSET_SECONDS": "1e308"},
            r"COUNTERS_CLOCK_OFFSET_SECONDS=1e\+308: out of range \(must be >= -315576000 and"
            r" <= 315576000\)",
        ),
        ({"COUNTERS_CLOCK_OFFSET_SECONDS": "-315576001"}, "CLOCK_OFFSET_SECONDS=-315576001.0: out"),
        # An attacker's findings: a killed worker's entries or lease must not outlast half the
        # durability window (writes would be refused meanwhile); a lease of a day was accepted.
        ({"COUNTERS_FLUSH_LEASE_MS": "86400000"}, "COUNTERS_FLUSH_LEASE_MS=86400000: out of"),
        ({"COUNTERS_FLUSH_CLAIM_IDLE_MS": "30000"}, "COUNTERS_FLUSH_CLAIM_IDLE_MS: 30000 ms"),
        (
            {
                "COUNTERS_FLUSH_LEASE_MS": "5000",
                "COUNTERS_MAX_UNFLUSHED_SECONDS": "8",
                "COUNTERS_FLUSH_CLAIM_IDLE_MS": "1000",
            },
            "COUNTERS_FLUSH_LEASE_MS: 5000 ms, at least half of COUNTERS_MAX_UNFLUSHED_SECONDS",
        ),
    ],
)
def test_a_bad_value_names_its_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env).validate()


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://hooks.example/x", "not http(s)"),
        ("not a url", "not http(s)"),
        ("http://", "no host"),
        ("https://:443/x", "no host"),
        ("http://127.0.0.1:99999/x", "port '99999' is not a number from 1 to 65535"),
        ("http://127.0.0.1:0/x", "port '0' is not a number from 1 to 65535"),
        ("http://hooks.example:http/x", "port 'http' is not a number"),
        ("http://[::1]:70000/x", "port '70000'"),
        ("http://[::1/x", "Invalid IPv6 URL"),
    ],
)
def test_a_webhook_url_that_cannot_be_posted_to_is_refused_saying_why(url: str, why: str) -> None:
    """Reviewer helper-66: `http://` and a port of 99999 were accepted and served; every
    delivery to them then failed."""
    env = {"COUNTERS_WEBHOOK_URLS": f"https://ok.example/in,{url}", "COUNTERS_WEBHOOK_SECRET": "s"}
    with pytest.raises(ConfigError) as error:
        Settings.from_env(env).validate()
    line = "COUNTERS_WEBHOOK_URLS: not an http(s)://host[:port] URL: "
    assert str(error.value).startswith(f"{line}{url} ({why}")  # the valid entry is not named


def test_webhook_urls_with_a_host_and_a_port_in_range_are_kept() -> None:
    urls = "http://127.0.0.1:65535/x,https://hooks.example/in?t=1,http://u:p@[::1]:1/,http://h:/"
    settings = Settings.from_env({"COUNTERS_WEBHOOK_URLS": urls, "COUNTERS_WEBHOOK_SECRET": "s"})
    settings.validate()
    assert len(settings.webhook_urls) == 4


def test_without_a_durability_window_the_claim_and_lease_are_only_bounded_by_range() -> None:
    env = {"COUNTERS_MAX_UNFLUSHED_SECONDS": "0", "COUNTERS_FLUSH_CLAIM_IDLE_MS": "300000"}
    Settings.from_env(env).validate()


@pytest.mark.parametrize(
    ("raw", "value"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("Yes", True),
     ("false", False), ("0", False), ("no", False), (" NO ", False)],
)  # fmt: skip
def test_booleans_take_exactly_six_words(raw: str, value: bool) -> None:
    assert Settings.from_env({"COUNTERS_FLUSHER_ENABLED": raw}).flusher_enabled is value


def test_words_from_a_list_may_come_in_any_case() -> None:
    settings = Settings.from_env({"COUNTERS_LOG_LEVEL": "INFO", "COUNTERS_LOG_FORMAT": "Json"})
    assert (settings.log_level, settings.log_format) == ("info", "json")
    with pytest.raises(ConfigError, match="COUNTERS_LOG_LEVEL='loud': must be one of debug"):
        Settings.from_env({"COUNTERS_LOG_LEVEL": "LOUD"})


def test_the_parsers_name_the_variable_they_are_given() -> None:
    """The helpers other settings reuse: each error names the variable it was handed."""
    with pytest.raises(ConfigError, match=r"^COUNTERS_X='2': not a boolean"):
        parse_bool("COUNTERS_X", "2")
    with pytest.raises(ConfigError, match=r"^COUNTERS_Y='1\.5': not an integer$"):
        parse_int("COUNTERS_Y", "1.5")
    assert parse_int("COUNTERS_Y", " 1_000 ") == 1000


@pytest.mark.parametrize("raw", ["\uff18\uff10\uff10\uff10", "\u0661\u0660\u0660"])
def test_numbers_in_settings_are_ascii(raw: str) -> None:
    """int() and float() read other scripts' digits: COUNTERS_PORT in fullwidth digits was port
    8000, and an offset in Arabic-Indic digits 100 s (a reviewer's finding)."""
    with pytest.raises(ConfigError, match=r"COUNTERS_PORT=.*: not an integer"):
        Settings.from_env({"COUNTERS_PORT": raw})
    with pytest.raises(ConfigError, match=r"COUNTERS_CLOCK_OFFSET_SECONDS=.*: not a number"):
        Settings.from_env({"COUNTERS_CLOCK_OFFSET_SECONDS": raw})
    assert Settings.from_env({"COUNTERS_PORT": "8000"}).port == 8000


def test_the_clock_offset_moves_now_to_another_day() -> None:
    assert SystemClock(86_400).now() - SystemClock().now() == pytest.approx(86_400, abs=1)


@pytest.mark.parametrize("raw", ["315576000", "-315576000", "-86400.5"])
def test_the_clock_offset_reaches_ten_years_either_way(raw: str) -> None:
    settings = Settings.from_env({"COUNTERS_CLOCK_OFFSET_SECONDS": raw})
    assert settings.clock_offset_seconds == float(raw)


def test_utc_day_and_midnight() -> None:
    assert utc_day(NOON) == "20261121"
    assert next_utc_midnight(NOON) == NOON + 12 * 3600
    assert utc_day(next_utc_midnight(NOON) - 1) == "20261121"
    assert utc_day(next_utc_midnight(NOON)) == "20261122"


def test_cors_origins_and_dev_mode() -> None:
    assert Settings().cors_origins == () and Settings().dev_mode is False
    parsed = Settings.from_env(
        {"COUNTERS_CORS_ORIGINS": "https://a.example, https://b.example", "COUNTERS_DEV_MODE": "1"}
    )
    assert parsed.cors_origins == ("https://a.example", "https://b.example")
    assert parsed.dev_mode is True


def test_dev_mode_banner_names_the_demo_page(tmp_path: Path) -> None:
    creds = DevCredentials("s" * 32, "k" * 24)
    banner = creds.banner("http://127.0.0.1:8000", tmp_path, demo=True)
    assert "http://127.0.0.1:8000/demo?token=ey" in banner
    assert "/demo" not in creds.banner("http://127.0.0.1:8000", tmp_path)
    # Its curl reads: a daily_chat there (once a day) made the README's "Try it" award a 429
    [try_line] = [line for line in banner.splitlines() if "curl" in line]
    assert "-X POST" not in try_line and "/api/exp/progress" in try_line
