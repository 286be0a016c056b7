"""The generator's raw inputs under data/: the relation vocabulary (`vocabulary.py`), the clause-level
parts passages are composed from (data/prose/), surnames, given-name characters, the General Standard
character table and your annotated passages (`annotated.py`), read and checked line by line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..annotated import Record, load_annotated
from ..vocabulary import (FORMS, SEX_PAIRS, RawDataError, RelationType, content_lines,  # noqa: F401
                          load_relations, sex_pairs)

# The hand-written gold split (data/gold.jsonl): scored by evaluate, never trained on (validate checks).
GOLD_SPLIT = "gold"
PHENOMENA = (
    "leading_clause", "trailing_clause", "pronoun", "title_reference", "kinship_word", "role_verb", "apposition",
    "two_in_one", "across_sentences", "dialogue", "distractor_names", "no_relation", "oov_relation",
    "name_1char", "name_2char", "name_3char", "name_4char", "compound_surname", "rare_char",
)
PLACEHOLDER_RE = re.compile(r"\{(\w*)\}")
STATEMENT_FIELDS = {"x", "y", "X", "Y", "r", "k"}
CLAUSE_FIELDS = {"n", "m", "r"}
SPLITS = ("train", "ood")
CLAUSE_KINDS = ("lead", "trail", "scene", "deny", "oov")
KIN_KINDS = ("parent", "child", "spouse", "sibling", "oov")
LEVEL_1 = 3500  # the first 3,500 characters of the General Standard table are its common level


@dataclass(frozen=True)
class Statement:
    """One way of stating one relation: x holds it (x is y's 师父; the master of 师徒; the father of 父女).
    {X}/{Y} stand for x/y as a pronoun, named in the sentence before; {r} is the label word, {k} a kinship word."""
    split: str            # "train" or "ood" (held out for test_ood)
    relations: tuple[str, ...]  # labels {r} may take, or the one label the wording implies; ("kin",) with {k}
    sex: str              # sexes the wording needs, x then y: m, f or -
    text: str
    line: int

    @property
    def fields(self) -> set[str]:
        return set(PLACEHOLDER_RE.findall(self.text))


@dataclass(frozen=True)
class Clause:
    kind: str   # lead, trail, scene, deny, oov (see CLAUSE_KINDS)
    split: str
    text: str   # {n}, {m}: names; {r}: any label (deny)
    line: int


@dataclass(frozen=True)
class KinWord:
    word: str
    holder_sex: str  # the sex of x that the word implies (x is y's WORD); - (oov words only): either
    kind: str        # parent, child, spouse, sibling, oov


@dataclass(frozen=True)
class RawData:
    relations: dict[str, RelationType]
    statements: list[Statement]
    clauses: list[Clause]
    kinship: list[KinWord]
    surnames: list[str]
    given_male: list[str]
    given_female: list[str]
    charset: list[str]    # the General Standard table, in table order
    annotated: list[Record]  # data/annotated/ (relsft.annotated), passed through for validate to judge

    def part_texts(self, split: str | None = None) -> list[str]:
        """The project's own wording (placeholders removed), of one split or all."""
        parts = [s.text for s in self.statements if split in (None, s.split)]
        parts += [c.text for c in self.clauses if split in (None, c.split)]
        return [PLACEHOLDER_RE.sub("", t) for t in parts]

    def fixed_text(self) -> str:
        """Every text the project writes itself (no names): what the tokenizer's merges are trained on."""
        parts = self.part_texts() + [k.word for k in self.kinship] + list(self.relations)
        return "\n".join(parts)


def _check_placeholders(path: Path, no: int, text: str, allowed: set[str]) -> None:
    bad = set(PLACEHOLDER_RE.findall(text)) - allowed
    if bad or text.count("{") != text.count("}"):
        raise RawDataError(f"{path}:{no}: bad placeholder in {text!r}; allowed: {sorted(allowed)}")


def _columns(path: Path, no: int, line: int | str, n: int, expected: str) -> list[str]:
    cols = str(line).split("\t")
    if len(cols) != n:
        raise RawDataError(f"{path}:{no}: expected {expected!r}, got {line!r}")
    return cols


def _statement(path: Path, no: int, line: str, relations: dict[str, RelationType]) -> Statement:
    split, rels, sex, text = _columns(path, no, line, 4, "train|ood<TAB>pair|role|kin|rel,rel<TAB>sex<TAB>text")
    _check_placeholders(path, no, text, STATEMENT_FIELDS)
    fields = set(PLACEHOLDER_RE.findall(text))
    why = None
    if split not in SPLITS:
        why = f"split must be one of {SPLITS}"
    elif len(sex) != 2 or not set(sex) <= set("mf-"):
        why = "sex must be two of m, f, - (x then y)"
    elif len(fields & {"x", "X"}) != 1 or len(fields & {"y", "Y"}) != 1 or {"X", "Y"} <= fields:
        why = "a statement names x ({x} or {X}) and y ({y} or {Y}), at most one of them as a pronoun"
    elif {"r", "k"} <= fields:
        why = "a statement has {r} or {k}, not both"
    elif ("k" in fields) != (rels == "kin"):
        why = "a {k} statement has `kin` in its relations column, and only such a statement"
    elif "r" not in fields and "k" not in fields and "," in rels:
        why = "a statement without {r} or {k} states exactly one relation"
    if why:
        raise RawDataError(f"{path}:{no}: {why}: {line!r}")
    if rels in FORMS:  # every label of the form; validate catches a listed label outside the vocabulary
        labels = tuple(r.name for r in relations.values() if rels in r.forms)
    else:
        labels = tuple(rels.split(","))
    return Statement(split, labels, sex, text, no)


def load_raw(data_dir: str | Path) -> RawData:
    d = Path(data_dir)
    relations = load_relations(d)
    for old in ("templates.tsv", "openers.txt", "adverbs.txt", "distractors.txt", "given_chars.txt", "annotated.jsonl"):
        if (d / old).exists():
            raise RawDataError(_MOVED[old].format(d=d))

    path = d / "prose" / "statements.tsv"
    statements = [_statement(path, no, line, relations) for no, line in content_lines(path)]
    path = d / "prose" / "clauses.tsv"
    clauses = []
    for no, line in content_lines(path):
        kind, split, text = _columns(path, no, line, 3, "lead|trail|scene|deny|oov<TAB>train|ood<TAB>text")
        if kind not in CLAUSE_KINDS or split not in SPLITS:
            raise RawDataError(f"{path}:{no}: kind must be one of {CLAUSE_KINDS}, split one of {SPLITS}: {line!r}")
        _check_placeholders(path, no, text, CLAUSE_FIELDS)
        clauses.append(Clause(kind, split, text, no))
    path = d / "prose" / "kinship.tsv"
    kinship = []
    for no, line in content_lines(path):
        word, sex, kind = _columns(path, no, line, 3, "word<TAB>m|f<TAB>parent|child|spouse|sibling|oov")
        if kind not in KIN_KINDS or sex not in ("m", "f", "-") or (sex == "-" and kind != "oov"):
            raise RawDataError(f"{path}:{no}: kind must be one of {KIN_KINDS}, sex m or f (- for an oov word "
                               f"of either sex): {line!r}")
        kinship.append(KinWord(word, sex, kind))

    surnames = [s for _, line in content_lines(d / "surnames.txt") for s in line.split()]
    male, female = ([c for _, line in content_lines(d / f) for c in line.strip()] for f in ("given_male.txt", "given_female.txt"))
    charset = [c for _, line in content_lines(d / "chars_general_standard.txt") for c in line.strip()]
    annotated = load_annotated(d)
    return RawData(relations, statements, clauses, kinship, surnames, list(dict.fromkeys(male)),
                   list(dict.fromkeys(female)), list(dict.fromkeys(charset)), annotated)


_MOVED = {
    "annotated.jsonl": "{d}/annotated.jsonl: annotated passages live in {d}/annotated/ now (any number of .jsonl/.json "
                       "files); move it there: mkdir -p {d}/annotated && mv {d}/annotated.jsonl {d}/annotated/",
    **{old: f"{{d}}/{old}: the sentence templates gave way to clause-level parts in {{d}}/prose/ "
            f"(statements.tsv, clauses.tsv, kinship.tsv; docs/design.md); remove it, or `relsft init-data --force`"
       for old in ("templates.tsv", "openers.txt", "adverbs.txt", "distractors.txt")},
    "given_chars.txt": "{d}/given_chars.txt: names now draw on given_male.txt, given_female.txt and "
                       "chars_general_standard.txt; remove it, or `relsft init-data --force`",
}
