"""One node per person: which of the model's names are one character, and why.

A novel calls a person by several names (贾宝玉, 宝玉). Two rules merge them:

- the alias file (`--aliases`): every line's first two tab-separated columns each name one person,
  `canonical|alias|alias` (the form of examples/hongloumeng/relations.tsv, whose other columns are
  ignored); these merges are forced. A line `!name` keeps `name` out of every automatic merge.
- a name that is the given name of exactly one full name of the book (the full name minus a
  surname of the packaged surnames.txt: 宝玉 of 贾宝玉) merges into it. Of two (宝玉 of 贾宝玉 and
  甄宝玉) it stays apart and is listed, since guessing would join two people.

The full names are the answers' names and the alias file's. Nothing else is merged: a name the
text never links to another stays its own node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from ..vocabulary import RawDataError, content_lines, packaged_data_dir

GIVEN_NAME = "given name of exactly one full name"
SEVERAL = "given name of several full names"
FILE = "alias file"


@dataclass(frozen=True)
class AliasFile:
    canonical: dict[str, str] = field(default_factory=dict)  # every name the file lists -> its person's first name
    apart: frozenset[str] = frozenset()  # the `!name` lines


def read_alias_file(path: str | Path) -> AliasFile:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such alias file")
    canonical: dict[str, str] = {}
    apart = set()
    for no, line in content_lines(path):
        if line.startswith("!"):
            apart.add(line[1:].strip())
            continue
        for column in line.split("\t")[:2]:
            names = [n.strip() for n in column.split("|") if n.strip()]
            for name in names:
                if canonical.setdefault(name, names[0]) != names[0]:
                    raise RawDataError(f"{path}:{no}: {name} is already a name of {canonical[name]}")
    return AliasFile(canonical, frozenset(apart))


@cache
def surnames() -> tuple[str, ...]:
    with resources.as_file(packaged_data_dir() / "surnames.txt") as path:
        return tuple(s for _, line in content_lines(path) for s in line.split())


def given_names(name: str) -> set[str]:
    """`name` minus each surname it may start with (欧阳 and 欧 both, where both are listed)."""
    return {name[len(s):] for s in surnames() if name.startswith(s) and len(name) > len(s)}


@dataclass
class Names:
    node: dict[str, str]  # every answer name -> its node's id
    merges: list[dict[str, Any]]  # {"into", "names", "reason"}
    kept_apart: list[dict[str, Any]]  # {"name", "candidates", "reason"}: merges not made, and why

    def groups(self) -> dict[str, list[str]]:
        """Each node's names: its id first, then every answer name merged into it."""
        groups: dict[str, list[str]] = {}
        for n, into in sorted(self.node.items()):
            groups.setdefault(into, [into])
            if n != into:
                groups[into].append(n)
        return groups


def resolve(names: set[str], aliases: AliasFile | None = None) -> Names:
    aliases = aliases or AliasFile()
    node = {n: aliases.canonical[n] for n in names if n in aliases.canonical}
    merged = {(into, FILE): sorted(n for n in node if node[n] == into and n != into) for into in set(node.values())}
    full_names: dict[str, set[str]] = {}  # a given name -> the full names it is the given name of
    for f in names | set(aliases.canonical):
        for given in given_names(f):
            full_names.setdefault(given, set()).add(f)
    apart = []
    for n in sorted(names - set(node), key=lambda n: (-len(n), n)):  # a full name is settled before its given name
        candidates = sorted({node.get(f) or aliases.canonical.get(f, f) for f in full_names.get(n, ())})
        if len(candidates) == 1 and n not in aliases.apart:
            node[n] = candidates[0]
            merged.setdefault((candidates[0], GIVEN_NAME), []).append(n)
            continue
        node[n] = n
        if candidates:
            apart.append({"name": n, "candidates": candidates, "reason": FILE if n in aliases.apart else SEVERAL})
    return Names(node, [{"into": into, "names": sorted(ns), "reason": reason}
                        for (into, reason), ns in sorted(merged.items()) if ns],
                 sorted(apart, key=lambda a: a["name"]))
