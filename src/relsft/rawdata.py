"""The raw inputs under data/: relation vocabulary, sentence templates, openers, adverbs, distractors,
surnames, given-name characters and hand-annotated passages.

The package ships the default inputs; `relsft init-data` writes them to data/ byte-identically,
so a fresh clone without a reachable DVC remote still matches data.dvc (`dvc status` is clean).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .annotated import Record, load_annotated

FILES = (
    "relations.tsv", "templates.tsv", "openers.txt", "adverbs.txt", "distractors.txt", "surnames.txt", "given_chars.txt",
    "annotated/examples.jsonl", "gold.jsonl",
)
# The hand-written gold split (data/gold.jsonl): scored by evaluate, never trained on (validate checks).
GOLD_SPLIT = "gold"
PHENOMENA = (
    "leading_clause", "trailing_clause", "pronoun", "title_reference", "kinship_word", "role_verb", "apposition",
    "two_in_one", "across_sentences", "dialogue", "distractor_names", "no_relation", "oov_relation",
    "name_1char", "name_2char", "name_3char", "name_4char", "compound_surname", "rare_char",
)
PLACEHOLDER_RE = re.compile(r"\{(\w*)\}")
TEMPLATE_FIELDS = {"x", "y", "r"}
DISTRACTOR_FIELDS = {"n", "m"}
FORMS = ("pair", "role")


class RawDataError(ValueError):
    """A raw input file cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class RelationType:
    name: str
    symmetric: bool
    forms: tuple[str, ...]


@dataclass(frozen=True)
class Template:
    split: str  # "train" or "ood"
    form: str
    relations: tuple[str, ...] | None  # None: every relation of the form
    text: str
    line: int


@dataclass(frozen=True)
class RawData:
    relations: dict[str, RelationType]
    templates: list[Template]
    openers: list[str]
    adverbs: list[str]
    distractors: list[str]
    surnames: list[str]
    given_chars: list[str]
    annotated: list[Record]  # data/annotated/ (relsft.annotated), passed through for validate to judge

    def fixed_text(self) -> str:
        """Every text the project writes itself (no names): what the tokenizer is trained on."""
        parts = [t.text for t in self.templates if t.split == "train"] + self.openers + self.adverbs + self.distractors
        parts += [r.name for r in self.relations.values()]
        return "\n".join(parts)


def _lines(path: Path) -> list[tuple[int, str]]:
    if not path.exists():
        raise RawDataError(f"{path}: missing. Run `relsft init-data` to write the default inputs, or `dvc pull`.")
    out = []
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            out.append((no, line.rstrip("\n")))
    return out


def _check_placeholders(path: Path, no: int, text: str, allowed: set[str]) -> None:
    bad = set(PLACEHOLDER_RE.findall(text)) - allowed
    if bad or text.count("{") != text.count("}"):
        raise RawDataError(f"{path}:{no}: bad placeholder in {text!r}; allowed: {sorted(allowed)}")


def _phrases(path: Path, fields: set[str]) -> list[str]:
    """One phrase a line, with only the placeholders in `fields`."""
    out = []
    for no, line in _lines(path):
        _check_placeholders(path, no, line, fields)
        out.append(line.strip())
    return out


def load_raw(data_dir: str | Path) -> RawData:
    d = Path(data_dir)
    relations: dict[str, RelationType] = {}
    for no, line in _lines(d / "relations.tsv"):
        cols = line.split("\t")
        if len(cols) != 3 or cols[1] not in ("yes", "no") or not set(cols[2].split(",")) <= set(FORMS):
            raise RawDataError(
                f"{d / 'relations.tsv'}:{no}: expected 'relation<TAB>yes|no<TAB>pair,role', got {line!r}"
            )
        relations[cols[0]] = RelationType(cols[0], cols[1] == "yes", tuple(cols[2].split(",")))

    templates = []
    for no, line in _lines(d / "templates.tsv"):
        cols = line.split("\t")
        if len(cols) != 4 or cols[0] not in ("train", "ood") or cols[1] not in FORMS:
            raise RawDataError(
                f"{d / 'templates.tsv'}:{no}: expected 'train|ood<TAB>pair|role<TAB>*|rel,rel<TAB>template', got {line!r}"
            )
        _check_placeholders(d / "templates.tsv", no, cols[3], TEMPLATE_FIELDS)
        # A restriction list is taken as written: a relation outside the vocabulary is validate's to catch.
        rels = None if cols[2] == "*" else tuple(cols[2].split(","))
        templates.append(Template(cols[0], cols[1], rels, cols[3], no))

    openers = _phrases(d / "openers.txt", set())
    adverbs = _phrases(d / "adverbs.txt", set())
    distractors = _phrases(d / "distractors.txt", DISTRACTOR_FIELDS)

    surnames = [s for _, line in _lines(d / "surnames.txt") for s in line.split()]
    given = [c for _, line in _lines(d / "given_chars.txt") for c in line.strip()]
    if (d / "annotated.jsonl").exists():
        raise RawDataError(f"{d / 'annotated.jsonl'}: annotated passages live in {d / 'annotated'}/ now (any number "
                           f"of .jsonl/.json files); move it there: mkdir -p {d / 'annotated'} && "
                           f"mv {d / 'annotated.jsonl'} {d / 'annotated'}/")
    annotated = load_annotated(d)
    return RawData(relations, templates, openers, adverbs, distractors, surnames, list(dict.fromkeys(given)), annotated)


def default_files():
    return resources.files("relsft") / "resources" / "data"


def init_data(data_dir: str | Path = "data", force: bool = False) -> list[Path]:
    """Write the packaged default inputs to `data_dir`. Existing different files are kept unless `force`."""
    d = Path(data_dir)
    d.mkdir(parents=True, exist_ok=True)
    written, kept = [], []
    for name in FILES:
        src, dst = default_files() / name, d / name
        data = src.read_bytes()
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists() and dst.read_bytes() != data and not force:
            kept.append(dst)
            continue
        if not dst.exists() or dst.read_bytes() != data:
            with resources.as_file(src) as p:
                shutil.copyfile(p, dst)
            written.append(dst)
    if kept:
        print(f"kept {len(kept)} locally changed file(s) (use --force to overwrite): {', '.join(map(str, kept))}")
    return written
