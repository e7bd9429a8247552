"""Optimizer names, alias names and references: `name` (newest version), `name:3`, `name@alias`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from service.errors import InvalidName, InvalidReference

# Used with fullmatch: `$` would also match before a final newline, and a name ending in "\n" would then
# pass, be stored, and break every header (Location, Content-Disposition) later built from it.
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# An alias starts with a letter, so `name@3` can never be mistaken for a version number.
ALIAS_RE = re.compile(r"[a-z][a-z0-9._-]{0,63}")
# Version numbers are the database's INTEGER, 32-bit on PostgreSQL: a larger number names nothing, and is
# refused as invalid input before it reaches a query that could not even bind it.
MAX_VERSION = 2**31 - 1
# Path segments under /v1/optimizers that a name would shadow.
RESERVED_NAMES = frozenset({"resolve"})


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidName(
            f"invalid optimizer name {name!r}: use 1-64 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit", detail={"name": name, "pattern": NAME_RE.pattern})
    if name in RESERVED_NAMES:
        raise InvalidName(f"optimizer name {name!r} is reserved", detail={"name": name})
    return name


def check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not ALIAS_RE.fullmatch(alias):
        raise InvalidName(
            f"invalid alias {alias!r}: use 1-64 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter", detail={"alias": alias, "pattern": ALIAS_RE.pattern})
    return alias


@dataclass(frozen=True)
class Reference:
    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name

    @classmethod
    def parse(cls, ref: str) -> Reference:
        """Parse `name`, `name:N` or `name@alias`; anything else is an InvalidReference naming the problem."""
        if not isinstance(ref, str) or not ref:
            raise InvalidReference("empty optimizer reference: expected `name`, `name:N` or `name@alias`",
                                   detail={"reference": ref})
        if ":" in ref and "@" in ref:
            raise InvalidReference(f"invalid reference {ref!r}: use either `name:N` or `name@alias`, not both",
                                   detail={"reference": ref})
        try:
            if ":" in ref:
                name, _, version = ref.partition(":")
                # Checked as text first: int() of thousands of digits raises, or takes quadratic time.
                if (not version.isascii() or not version.isdigit() or len(version) > len(str(MAX_VERSION))
                        or not 1 <= int(version) <= MAX_VERSION):
                    raise InvalidReference(f"invalid reference {ref[:80]!r}: the version after ':' must be an "
                                           f"integer >= 1, at most {MAX_VERSION}", detail={"reference": ref[:200]})
                return cls(check_name(name), version=int(version))
            if "@" in ref:
                name, _, alias = ref.partition("@")
                return cls(check_name(name), alias=check_alias(alias))
            return cls(check_name(ref))
        except InvalidName as exc:
            raise InvalidReference(f"invalid reference {ref!r}: {exc.message}", detail={"reference": ref}) from exc
