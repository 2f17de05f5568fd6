"""Config files and ``--set`` values read as a user writes them (kaem.config.load_yaml)."""

import re

import pytest
import yaml

from kaem.config import ConfigError, TrainConfig, from_dict, load_yaml, parse_yaml

#: (text, the value YAML 1.2 and Python give it): PyYAML's YAML 1.1 reads the first five as
#: strings and 017 as 15.
NUMBERS = [
    ("1e-3", 0.001),
    ("1E-3", 0.001),
    ("2e-4", 0.0002),
    ("-1e3", -1000.0),
    ("1.0e3", 1000.0),
    ("017", 17),
    (".5", 0.5),
    ("5.", 5.0),
    ("1_000", 1000),
    ("0o17", 15),
    ("0x1f", 31),
    ("+.5e+2", 50.0),
    ("0.001", 0.001),
    ("12", 12),
]


@pytest.mark.parametrize(("text", "value"), NUMBERS, ids=[t for t, _ in NUMBERS])
def test_numbers_are_read_as_yaml_1_2_and_python_read_them(text, value):
    got = parse_yaml(f"learning_rate: {text}")["learning_rate"]
    assert got == value and type(got) is type(value)


def test_what_is_not_a_number_stays_a_string_and_the_rest_of_yaml_is_unchanged():
    assert parse_yaml("[1e, e3, 1:30, 1e-3x, '1e-3']") == ["1e", "e3", "1:30", "1e-3x", "1e-3"]
    special = parse_yaml("[.inf, -.Inf, true, null, ~, abc]")
    assert special[:2] == [float("inf"), float("-inf")] and special[2:] == [True, None, None, "abc"]
    assert parse_yaml(".nan") != parse_yaml(".nan")  # NaN


def test_a_number_field_takes_what_a_yaml_1_1_loader_left_as_a_string():
    assert yaml.safe_load("learning_rate: 1e-3") == {"learning_rate": "1e-3"}
    cfg = from_dict(TrainConfig, yaml.safe_load("learning_rate: 1e-3\neps: 2E-8"), "train")
    assert cfg.learning_rate == 0.001 and cfg.eps == 2e-8
    for text in ("abc", "1e", "1:30"):
        with pytest.raises(ConfigError, match=r"train.learning_rate: expected a number, got "):
            from_dict(TrainConfig, {"learning_rate": text}, "train")
    with pytest.raises(ConfigError, match=r"train\.max_steps: expected an integer, got '1e3'"):
        from_dict(TrainConfig, {"max_steps": "1e3"}, "train")  # an int field takes no float


DUPLICATES = [
    ("a: 1\na: 2\n", "a is given twice, at line 1 and line 2"),
    ("train:\n  lr: 1\n  seed: 0\n  lr: 2\n", "train.lr is given twice, at line 2 and line 4"),
    ("cells:\n  x: {dataset: tiny}\n  y: {}\n  x: {}\n", "cells.x is given twice, at line 2 and"),
    ("rows:\n  - {a: 1, a: 2}\n", "rows[0].a is given twice, at line 2 and line 2"),
    ("{a: 1, b: 2, a: 3}", "a is given twice"),
]


@pytest.mark.parametrize(("text", "message"), DUPLICATES)
def test_a_key_given_twice_is_an_error_naming_both_lines(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="^" + re.escape(f"{path}: {message}")):
        load_yaml(path)


def test_a_merge_key_may_be_overridden_and_anchors_are_read_once():
    text = "base: &b {x: 1, y: 2}\none:\n  <<: *b\n  x: 5\ntwo: *b\n"
    assert parse_yaml(text) == {
        "base": {"x": 1, "y": 2},
        "one": {"x": 5, "y": 2},
        "two": {"x": 1, "y": 2},
    }


def test_invalid_yaml_names_the_source_line_and_column():
    with pytest.raises(ConfigError, match=r"^--set train: not valid YAML at line 1, column 8: "):
        parse_yaml("{a: [1,", "--set train")
