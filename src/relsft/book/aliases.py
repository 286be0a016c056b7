"""One node per person: which of the model's names are one character, and why.

A novel calls a person by several names (贾宝玉, 宝玉). Two rules merge them:

- the alias file (`--aliases`): every line's first two tab-separated columns each name one person,
  `canonical|alias|alias` (the form of examples/hongloumeng/relations.tsv, whose other columns are
  ignored); these merges are forced. A line `!name` keeps `name` out of every automatic merge.
- a name that is the given name of exactly one full name of the book (the full name minus a
  surname of the packaged surnames.txt: 宝玉 of 贾宝玉) merges into it. Of two (宝玉 of 贾宝玉 and
  甄宝玉) it stays apart and is listed, since guessing would join two people.

- a name the model wrote with a stray character, one character before or after another name of
  the book (贾代化袭 for 贾代化 in 贾代化袭了官: the answer copied one character too many), merges into
  it, where the longer string is written once in the whole book (a slip at one place, not a name
  the text uses), the character is no surname before a given name (贾宝玉 is a full name) and names
  no one else (薛蟠父 is 薛蟠's father: ROLE_CHARACTERS).

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
STRAY = "a name with a stray character, written once in the book"
SEVERAL = "given name of several full names"
FILE = "alias file"


# Characters that, next to a name, name another person (薛蟠父, 宝玉娘, 王氏婢): kin, marriage, service.
ROLE_CHARACTERS = frozenset("父母子女儿孙祖夫妻妾妇婿媳兄弟姐妹哥嫂婶叔伯姑姨舅侄甥爹娘妈爷奶婆公师徒婢奴仆丫")


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


def stray_host(name: str, known: set[str], book: str) -> str | None:
    """The one name of `known` that `name` is with a stray character (STRAY), or None."""
    hosts = {host for host, extra in ((name[1:], name[0]), (name[:-1], name[-1]))
             if len(host) >= 2 and host in known and extra not in ROLE_CHARACTERS
             and not (name.endswith(host) and host in given_names(name))}
    return hosts.pop() if len(hosts) == 1 and book.count(name) == 1 else None


def resolve(names: set[str], aliases: AliasFile | None = None, book: str = "") -> Names:
    """Every name's node; `book` (the whole text) for the stray-character rule, which is off without it."""
    aliases = aliases or AliasFile()
    known = names | set(aliases.canonical)
    strays = {n: host for n in sorted(names) if n not in aliases.canonical and n not in aliases.apart
              and (host := stray_host(n, known, book))}
    names = (names - set(strays)) | set(strays.values())  # a slip's host is settled in its place
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
    for n, host in strays.items():
        node[n] = node[host]
        merged.setdefault((node[host], STRAY), []).append(n)
    return Names(node, [{"into": into, "names": sorted(ns), "reason": reason}
                        for (into, reason), ns in sorted(merged.items()) if ns],
                 sorted(apart, key=lambda a: a["name"]))
