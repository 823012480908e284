"""The rules file: the defaults are the seed's tables; a bad file names its bad entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from counters.errors import RulesError
from counters.exp.levels import progress
from counters.rules import load_rules, parse_rules

DEFAULTS = (Path(__file__).parents[2] / "counters" / "rules" / "default_rules.toml").read_text()


def test_defaults_are_the_seed_tables() -> None:
    exp = load_rules().exp
    assert exp.thresholds == (0, 100, 300, 600, 1000, 1500)
    assert [level.name for level in exp.levels] == [
        "Newbie", "Creator", "Advanced", "Pro", "Elite", "Master",
    ]  # fmt: skip
    assert exp.caps_by_level == (150, 150, 300, 300, 500, 500)
    rewards = {name: (a.exp, a.daily_limit) for name, a in exp.actions.items()}
    assert rewards == {
        "daily_chat": (20, 1),
        "create_character": (30, 2),
        "create_scene": (15, 2),
        "create_persona": (15, 2),
        "character_liked": (5, 20),
        "forked": (10, None),
        "paid_char_sold": (50, None),
    }
    assert not exp.actions["paid_char_sold"].user_may_trigger
    assert {n for n, a in exp.actions.items() if a.awards == "creator"} == {
        "character_liked", "forked", "paid_char_sold",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("total", "level", "into", "needed", "to_next", "percent", "is_max"),
    [
        (0, 1, 0, 100, 100, 0.0, False),
        (99, 1, 99, 100, 1, 99.0, False),
        (100, 2, 0, 200, 200, 0.0, False),
        (130, 2, 30, 200, 170, 15.0, False),  # the seed's example
        (1499, 5, 499, 500, 1, 99.8, False),
        (1500, 6, 0, 0, 0, 100.0, True),
        (9000, 6, 7500, 0, 0, 100.0, True),
    ],
)
def test_progress(
    total: int, level: int, into: int, needed: int, to_next: int, percent: float, is_max: bool
) -> None:
    p = progress(load_rules().exp, total)
    assert (p.current_level, p.current_level_exp, p.exp_needed_for_next) == (level, into, needed)
    assert (p.exp_to_next_level, p.progress_percentage, p.is_max_level) == (
        to_next,
        percent,
        is_max,
    )
    assert p.total_exp == total


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("exp = 30\n", 'exp = "thirty"\n', "exp.actions.create_character: Expected `int`"),
        ("exp = 30\n", "exp = 0\n", "exp.actions.create_character: Expected `int` >= 1"),
        ("exp_required = 300\n", "exp_required = 50\n", "exp.levels[2]: exp_required must grow"),
        ("level = 3\n", "level = 4\n", "exp.levels[2]: levels must be numbered"),
        ("min_level = 5\n", "min_level = 6\n", "exp.daily_caps: no cap for level(s) [5]"),
        ("[exp.actions.forked]\n", "[exp.actions.forked]\nbogus = 1\n", "bogus"),
        ('target_types = ["character", "scene", "persona"]\n', "", "forked: a creator-awarded"),
    ],
)
def test_a_bad_file_names_the_bad_entry(old: str, new: str, message: str) -> None:
    assert old in DEFAULTS
    with pytest.raises(RulesError) as error:
        parse_rules(DEFAULTS.replace(old, new, 1), "custom.toml")
    assert "custom.toml" in str(error.value)
    assert message in str(error.value)


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="not valid TOML"):
        parse_rules("[exp", "broken.toml")
    with pytest.raises(RulesError, match="cannot read rules file"):
        load_rules(tmp_path / "missing.toml")
    with pytest.raises(RulesError, match="cannot read rules file: Is a directory"):
        load_rules(tmp_path)


def test_a_file_that_is_not_utf8_is_invalid_rules_naming_the_byte(tmp_path: Path) -> None:
    """TOML 1.0: a TOML file is UTF-8. The decode error was no ``RulesError``, so it escaped
    every caller as a traceback (reviewer helper-66)."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(DEFAULTS.encode() + "# café\n".encode("latin-1"))
    offset = len(DEFAULTS.encode()) + len("# caf")
    with pytest.raises(RulesError, match=f"^{path}: not valid UTF-8 at byte {offset} "):
        load_rules(path)


def test_another_file_can_change_the_rules(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(DEFAULTS.replace("exp = 20\ndaily_limit = 1", "exp = 25\ndaily_limit = 3"))
    action = load_rules(path).exp.actions["daily_chat"]
    assert (action.exp, action.daily_limit) == (25, 3)
