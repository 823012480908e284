"""Rules files for tests: the shipped defaults with some entries changed."""

from __future__ import annotations

from pathlib import Path

from counters.rules import rules_text

DAILY_CHAT = "[exp.actions.daily_chat]\nexp = 20\ndaily_limit = 1\n"
LOW_CAP = "min_level = 1\nmax_level = 2\ncap = 150\n"
ROOKIE = 'name = "pixel_rookie"\n'


def default_text() -> str:
    """The shipped rules file's text."""
    return rules_text(None)[0]


def edited(*changes: tuple[str, str]) -> str:
    """The default rules with each ``(old, new)`` text replaced (each must occur once)."""
    text = default_text()
    for old, new in changes:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def write_rules(path: Path, *changes: tuple[str, str]) -> Path:
    """Write the default rules with ``changes`` to ``path``; the path."""
    path.write_text(edited(*changes), "utf-8")
    return path
