"""References `name`, `name:N`, `name@alias`, and the rules for names and aliases."""

from __future__ import annotations

import pytest

from service.errors import InvalidName, InvalidReference
from service.registry.names import Reference, check_alias, check_name


@pytest.mark.parametrize("text, expected", [
    ("lstm", Reference("lstm")),
    ("lstm-base.v2_x", Reference("lstm-base.v2_x")),
    ("lstm:3", Reference("lstm", version=3)),
    ("lstm@prod", Reference("lstm", alias="prod")),
    ("0day:12", Reference("0day", version=12)),
])
def test_valid_references_parse_and_print_back(text, expected):
    ref = Reference.parse(text)
    assert ref == expected
    assert str(ref) == text


@pytest.mark.parametrize("text, fragment", [
    ("", "empty"),
    ("lstm:", "integer >= 1"),
    ("lstm:0", "integer >= 1"),
    ("lstm:-1", "integer >= 1"),
    ("lstm:v1", "integer >= 1"),
    ("lstm:1:2", "integer >= 1"),
    ("lstm:²", "integer >= 1"),
    ("lstm@", "invalid alias"),
    ("lstm@3", "invalid alias"),
    ("lstm@Prod", "invalid alias"),
    ("lstm:1@prod", "not both"),
    ("LSTM", "invalid optimizer name"),
    ("-lstm", "invalid optimizer name"),
    ("a" * 65, "invalid optimizer name"),
    ("has space", "invalid optimizer name"),
    ("resolve", "reserved"),
    ("lstm\n", "invalid optimizer name"),
    ("lstm@prod\n", "invalid alias"),
    ("lstm:1\n", "integer >= 1"),
    ("lstm:2147483648", "at most 2147483647"),
])
def test_malformed_references_are_refused_naming_the_problem(text, fragment):
    with pytest.raises(InvalidReference, match=fragment) as info:
        Reference.parse(text)
    assert info.value.status == 422 and info.value.detail == {"reference": text}


def test_name_and_alias_rules():
    assert check_name("a") == "a" and check_name("a" * 64) == "a" * 64
    assert check_alias("prod") == "prod"
    # A pattern matched with `$` lets a final newline through: every name is matched whole.
    for bad in ("", "A", "a/b", "a" * 65, "é", "a\n", "a\r", "a\x00", "a\t", "\na"):
        with pytest.raises(InvalidName):
            check_name(bad)
    for bad in ("1", "", "Prod", "p@x", "prod\n", "prod\r\n"):
        with pytest.raises(InvalidName):
            check_alias(bad)
