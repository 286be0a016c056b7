"""The relation vocabulary, data/relations.tsv: the labels an answer may use and how each reads.

Every stage that needs only the labels (evaluate's symmetric pairs, validate, extract-book's graph)
reads them here, so none of them depends on the generator's data code.

The optional `bond` column is extract-book's alone (the generator never reads it): the labels that
name one bond between two people, synonyms (师父, 师傅, 师尊, 师徒) or the bond seen from the other
side (`~师徒` on 徒弟: `A-B:徒弟` says `B-A:师父`), so the graph draws them as one edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .packaged import packaged_data_dir

RELATIONS_FILE = "relations.tsv"
FORMS = ("pair", "role")
SEX_PAIRS = tuple((a, b) for a in "mf" for b in "mf")  # (x, y), in a fixed order


class RawDataError(ValueError):
    """A raw input file under data/ cannot be read; the message names the file and line."""


def sex_pairs(spec: str) -> tuple[tuple[str, str], ...]:
    """The (x, y) sex pairs a two-character spec allows: m, f, or - for either (`m-`: x a man)."""
    return tuple((a, b) for a, b in SEX_PAIRS if spec[0] in "-" + a and spec[1] in "-" + b)


@dataclass(frozen=True)
class RelationType:
    name: str
    symmetric: bool
    forms: tuple[str, ...]
    sexes: frozenset[tuple[str, str]] = frozenset(SEX_PAIRS)  # (x, y) pairs it allows
    bond: str = ""  # the bond it names; "" = a bond of its own, named after the label
    reverse: bool = False  # `A-B:label` states the bond from B to A (徒弟 of 师徒)

    def __post_init__(self):
        if not self.bond:
            object.__setattr__(self, "bond", self.name)

    def edge(self, a: str, b: str) -> tuple[str, str]:
        """(from, to) of the bond that `a-b:label` states, in the bond's own direction."""
        return (b, a) if self.reverse else (a, b)


def content_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of a raw input file, blank lines and # comments left out."""
    if not path.exists():
        raise RawDataError(f"{path}: missing. Run `relsft init-data` to write the default inputs, or `dvc pull`.")
    return [(no, line.rstrip("\n")) for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if line.strip() and not line.startswith("#")]


def load_relations(data_dir: str | Path) -> dict[str, RelationType]:
    path = Path(data_dir) / RELATIONS_FILE
    relations: dict[str, RelationType] = {}
    for no, line in content_lines(path):
        cols = line.split("\t")
        sexes = cols[3].split(",") if len(cols) >= 4 else ["--"]
        bond = cols[4] if len(cols) == 5 else ""
        if len(cols) not in (3, 4, 5) or cols[1] not in ("yes", "no") or not set(cols[2].split(",")) <= set(FORMS) \
                or not all(len(s) == 2 and set(s) <= set("mf-") for s in sexes) \
                or (len(cols) == 5 and not bond.removeprefix("~")) or (bond.startswith("~") and cols[1] == "yes"):
            raise RawDataError(f"{path}:{no}: expected 'relation<TAB>yes|no<TAB>pair,role"
                               f"[<TAB>sexes, e.g. mf,fm or --[<TAB>bond, ~bond read backwards; not for a "
                               f"symmetric relation]]', got {line!r}")
        allowed = frozenset(pair for spec in sexes for pair in sex_pairs(spec))
        relations[cols[0]] = RelationType(cols[0], cols[1] == "yes", tuple(cols[2].split(",")), allowed,
                                          bond.removeprefix("~"), bond.startswith("~"))
    for rt in relations.values():  # one edge cannot be both directed and undirected
        if any(o.bond == rt.bond and o.symmetric != rt.symmetric for o in relations.values()):
            raise RawDataError(f"{path}: bond {rt.bond!r} has symmetric and asymmetric labels")
    return relations


def load_relations_or_packaged(data_dir: str | Path | None) -> dict[str, RelationType]:
    """`data_dir`/relations.tsv where it exists, else the packaged default's."""
    if data_dir and (Path(data_dir) / RELATIONS_FILE).exists():
        return load_relations(data_dir)
    with resources.as_file(packaged_data_dir()) as d:
        return load_relations(d)


def symmetric_relations(data_dir: str | Path) -> list[str]:
    """The relations whose pair order is free, as the unordered scores need them."""
    return sorted(r.name for r in load_relations(data_dir).values() if r.symmetric)
