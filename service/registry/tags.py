"""Descriptions and tags: the free-form metadata of names and versions, bounded and free of control
characters, so a label can never split a log line, a header or a table row.

    description   up to 4,000 characters; line breaks and tabs allowed, no other control character
    tags          up to 32 per name or version, key -> value:
                  key     1-64 of letters, digits, '_', '.', '-', '/', starting with a letter or digit
                  value   up to 256 characters, no control characters (empty allowed)

Each check raises ValidationError (422) whose message and detail name the offending field, so nothing
is written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from service.errors import ValidationError

MAX_DESCRIPTION = 4000
MAX_TAGS = 32
MAX_VALUE = 256
# Used with fullmatch: `$` would also match before a final newline.
KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./-]{0,63}")
_CONTROL = r"\x00-\x1f\x7f-\x9f\u2028\u2029"
VALUE_RE = re.compile(rf"[^{_CONTROL}]{{0,{MAX_VALUE}}}")


def _description_ok(text: str) -> bool:
    return all(ch in "\n\t" or not _is_control(ch) for ch in text)


def _is_control(ch: str) -> bool:
    o = ord(ch)
    return o < 0x20 or 0x7F <= o <= 0x9F or ch in "\u2028\u2029"


def check_description(value: Any, field: str = "description") -> str | None:
    """None (no description) or the text, checked."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{field}: must be a string or null", detail={"field": field})
    if len(value) > MAX_DESCRIPTION:
        raise ValidationError(f"{field}: at most {MAX_DESCRIPTION} characters, got {len(value)}",
                              detail={"field": field, "max_length": MAX_DESCRIPTION})
    if not _description_ok(value):
        raise ValidationError(f"{field}: no control characters (other than line breaks and tabs)",
                              detail={"field": field})
    return value


def check_key(key: Any, field: str = "tags") -> str:
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        raise ValidationError(f"{field}: invalid tag key {str(key)[:80]!r}: use 1-64 letters, digits, '_', '.', "
                              "'-' or '/', starting with a letter or digit",
                              detail={"field": field, "key": str(key)[:200], "pattern": KEY_RE.pattern})
    return key


def check_value(key: str, value: Any, field: str = "tags") -> str:
    where = f"{field}.{key}"
    if not isinstance(value, str):
        raise ValidationError(f"{where}: a tag's value must be a string", detail={"field": where})
    if not VALUE_RE.fullmatch(value):
        raise ValidationError(f"{where}: at most {MAX_VALUE} characters and no control characters",
                              detail={"field": where, "max_length": MAX_VALUE})
    return value


def check_tags(tags: Any, field: str = "tags") -> dict[str, str]:
    """A complete set of tags, checked: a mapping of valid keys to valid values, at most MAX_TAGS."""
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise ValidationError(f"{field}: must be an object of key -> value strings", detail={"field": field})
    checked = {check_key(k, field): check_value(k, v, field) for k, v in tags.items()}
    return check_count(checked, field)


def check_count(tags: Mapping[str, str], field: str = "tags") -> dict[str, str]:
    if len(tags) > MAX_TAGS:
        raise ValidationError(f"{field}: at most {MAX_TAGS} tags, got {len(tags)}",
                              detail={"field": field, "max_items": MAX_TAGS})
    return dict(tags)


def merge(current: Mapping[str, str], patch: Mapping[str, str | None], field: str = "tags") -> dict[str, str]:
    """`patch` applied as a JSON merge patch (RFC 7396): a key set to null is removed, any other is set."""
    if not isinstance(patch, Mapping):
        raise ValidationError(f"{field}: must be an object of key -> value strings (null removes a key)",
                              detail={"field": field})
    merged = dict(current)
    for key, value in patch.items():
        check_key(key, field)
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = check_value(key, value, field)
    return check_count(merged, field)


def parse_filter(text: str, field: str = "tag") -> tuple[str, str | None]:
    """A search filter `key:value` (that exact value) or `key` (any value)."""
    key, sep, value = text.partition(":")
    check_key(key, field)
    return key, check_value(key, value, field) if sep else None
