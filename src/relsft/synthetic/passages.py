"""Stage `generate`: synthetic passages that read like a novel, composed from clause-level parts.

A passage is built, not picked: 0-4 relation statements (data/prose/statements.tsv), each perhaps
behind a leading clause (十九年前，…), before a trailing one (…，此事人尽皆知), with a pronoun for a
person named in the sentence before (…，她的师父{x}), through a kinship word that implies the label
(父亲 -> 父子 or 父女 by the child's sex), or joined with another statement into one sentence; then
name-bearing sentences that state nothing, deny a relation or state one outside the vocabulary
(data/prose/clauses.tsv). 1-8 sentences; a passage with no relation answers the empty string.
Names are made of 1-4 characters: surnames (compound ones too), characters that say a person's sex
(given_male.txt, given_female.txt) and any character of the General Standard table, rare ones included.

test_ood is held out at the same level: its statements and clauses are wordings train never uses,
and its names are made of surnames and characters no train name has (sex-marking characters aside:
they are how any reader knows 婉 is a woman). Each example is drawn from its own RNG, seeded by
(seed, split, index), and written as soon as it is made: output is byte-deterministic and a million
examples need no more memory than the 8-byte digests used to keep inputs unique across splits.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..annotated import load_annotated, repeats
from ..files import atomic_file, jsonl_line, write_json
from ..relations import parse_output
from .inputs import LEVEL_1, SEX_PAIRS, Clause, KinWord, RawData, RawDataError, Statement, load_raw, sex_pairs

SPLITS = ("train", "val", "test", "test_ood")
MAX_ATTEMPTS = 100
MAX_SENTENCES = 8
PRONOUN = {"m": "他", "f": "她"}
ANY_SEXES = frozenset(SEX_PAIRS)  # a label outside the vocabulary: validate's to report
# Characters no name is made of: the relation and kinship words, and the grammar around a name.
FUNCTION_CHARS = set("的是与和了在之也而为被把将对向从他她它们这那个一不有无人们着过来去上下中里说道曰乃便就都又")
# Labels a kinship word implies, by the sexes of (parent, child) or of two siblings.
PARENT_CHILD = {("m", "m"): "父子", ("m", "f"): "父女", ("f", "m"): "母子", ("f", "f"): "母女"}
SIBLINGS = {("m", "m"): "兄弟", ("f", "f"): "姐妹"}  # a brother and a sister (兄妹) are outside the vocabulary
SPOUSES = "夫妻"
SENTENCE_END = tuple("。！？」")
SENTENCE_RE = re.compile(r"[。！？][」”]|[。！？](?![」”])")
# The parts quote with 「」 (as many wuxia editions do); mainland typesetting uses “” (and ‘’ inside).
CURLY_QUOTES = str.maketrans("「」『』", "“”‘’")


def count_sentences(text: str) -> int:
    return len(SENTENCE_RE.findall(text))


def ended(text: str) -> bool:
    """A sentence is over after 。！？ or a quotation that closes with one (「师父！」, not 叫了一声「师父」)."""
    return text.endswith(SENTENCE_END[:3]) or text.endswith(tuple(e + "」" for e in SENTENCE_END[:3]))


@dataclass(frozen=True)
class NamePool:
    surnames: list[str]
    common: list[str]   # level-1 characters of the General Standard table
    rare: list[str]     # levels 2 and 3
    male: list[str]     # sex-marking characters, shared by every pool
    female: list[str]
    held_out: set[str]  # characters every name of this pool must include one of (empty: no such rule)


@dataclass
class Person:
    name: str
    sex: str
    marked: bool  # the name says the person's sex (has a character of given_male / given_female)


AFFIXES = "小阿儿"  # 小凡, 阿福, 灵儿


def sex_marks(raw: RawData) -> tuple[list[str], list[str]]:
    """The characters that say a name is a man's / a woman's; none of them a surname's or a function word."""
    surname_chars = {c for s in raw.surnames for c in s}
    drop = surname_chars | FUNCTION_CHARS | set(AFFIXES)
    return sorted(set(raw.given_male) - drop), sorted(set(raw.given_female) - drop)


def shared_name_chars(raw: RawData) -> set[str]:
    """What train and test_ood names may share: the sex marks and the affixes."""
    male, female = sex_marks(raw)
    return set(male) | set(female) | set(AFFIXES)


def name_pools(raw: RawData, ood_fraction: float, seed: int) -> dict[str, NamePool]:
    """Split surnames and given-name characters into disjoint train and OOD pools.

    OOD characters also never occur in a name of an annotated answer (those passages all go to train).
    Only the names: their prose would take nearly every rare surname out of test_ood, as the generated
    passages' prose, which is not checked either, would.
    """
    male, female = sex_marks(raw)
    marked = shared_name_chars(raw)
    stop = FUNCTION_CHARS | {c for r in raw.relations for c in r} | {c for k in raw.kinship for c in k.word}
    annotated_chars = {c for r in raw.annotated for rel in parse_output(r.output).relations for c in rel.a + rel.b}
    rng = random.Random(f"{seed}:pools")
    surnames = [s for s in raw.surnames if not set(s) & stop]
    # surnames.txt lists the most common first: test_ood's come from the rarer half, so the shipped model
    # knows 王, 陈 or 慕容 as names; none shares a character with a common one (公孙 would take 孙 with it).
    half = len(raw.surnames) // 2  # of the file, as it ranks them
    common_chars = {c for s in raw.surnames[:half] for c in s}
    # An annotated name's surname is a train surname: the OOD ones are drawn from the others.
    rare = [s for s in raw.surnames[half:] if s in surnames and not set(s) & (common_chars | annotated_chars)]
    rng.shuffle(rare)
    ood_s = rare[: max(1, round(len(surnames) * ood_fraction))]
    ood_chars = {c for s in ood_s for c in s}
    # Compound surnames share characters (孙 / 公孙): a train surname may not touch an OOD one.
    train_s = [s for s in surnames if s not in ood_s and not set(s) & ood_chars]
    surname_chars = {c for s in raw.surnames for c in s}
    free = [c for c in raw.charset if c not in stop and c not in marked and c not in surname_chars]
    pools: dict[str, tuple[list[str], list[str]]] = {"train": ([], []), "ood": ([], [])}
    for level, chars in enumerate((free[:LEVEL_1], free[LEVEL_1:])):
        chars = list(chars)
        rng.shuffle(chars)
        ood = [c for c in chars[: round(len(chars) * ood_fraction)] if c not in annotated_chars]
        pools["ood"][level].extend(sorted(ood))
        pools["train"][level].extend(sorted(set(chars) - set(ood)))
    male, female = [c for c in male if c not in stop], [c for c in female if c not in stop]
    ood_all = ood_chars | set(pools["ood"][0]) | set(pools["ood"][1])
    return {
        "train": NamePool(sorted(train_s), *pools["train"], male, female, set()),
        "ood": NamePool(sorted(ood_s), *pools["ood"], male, female, ood_all),
    }


def make_name(rng: random.Random, pool: NamePool, sex: str, mark: bool) -> tuple[str, bool]:
    """A name of 1-4 characters for a person of `sex`; `mark`: it must say the sex."""
    own = pool.male if sex == "m" else pool.female

    def given(p_own: float) -> str:
        r = rng.random()
        if r < p_own:
            return rng.choice(own)
        return rng.choice(pool.rare) if r < p_own + 0.07 else rng.choice(pool.common)

    form = rng.random()
    if form < 0.70:  # surname + 1-2 characters, now and then doubled (青青)
        compound = [s for s in pool.surnames if len(s) == 2]
        surname = rng.choice(compound if compound and rng.random() < 0.12 else pool.surnames)
        first = given(0.95 if mark else 0.8)
        n = rng.random()
        tail = "" if n < 0.45 else first if n < 0.52 else given(0.7)
        name = surname + (tail + first if tail and rng.random() < 0.5 and tail != first else first + tail)
    elif form < 0.82:  # a bare two-character given name (碧瑶)
        name = given(0.95 if mark else 0.8) + given(0.7)
    elif form < 0.90:  # one character (岚)
        name = given(1.0 if mark else 0.8)
    elif form < 0.95 and sex == "f":
        name = given(0.95 if mark else 0.8) + "儿"
    else:  # 小/阿 and a character, or a surname with three more
        name = rng.choice(("小", "阿")) + given(1.0 if mark else 0.8) if rng.random() < 0.5 else \
            rng.choice(pool.surnames) + given(0.95 if mark else 0.8) + given(0.7) + given(0.7)
    return name, bool(set(name) & set(own))


class Generator:
    def __init__(self, raw: RawData, params: dict[str, Any]):
        check_kinship_labels(raw)
        self.raw, self.p = raw, params
        self.pools = name_pools(raw, params["ood_fraction"], params["seed"])
        self.parts = {kind: {
            "statements": [s for s in raw.statements if s.split == kind],
            **{k: [c for c in raw.clauses if c.split == kind and c.kind == k]
               for k in ("lead", "trail", "scene", "deny", "oov")},
            # scenes that can name a pronoun's person first: one name, at the start
            "intro": [c for c in raw.clauses if c.split == kind and c.kind == "scene" and c.text.startswith("{n}")
                      and "{m}" not in c.text],
        } for kind in ("train", "ood")}
        for kind, parts in self.parts.items():
            empty = [k for k, v in parts.items() if not v]
            if empty:
                raise RawDataError(f"data/prose/: no {kind} parts of kind {', '.join(empty)}")
        self.label_sex = {r.name: r.sexes for r in raw.relations.values()}
        self.kinship = raw.kinship

    # -- people -------------------------------------------------------------------------------------
    def person(self, rng: random.Random, pool: NamePool, cast: list[Person], sex: str, mark: bool = False) -> Person:
        """A new person; no name contains another, so every labelled name can be found in the text."""
        for _ in range(MAX_ATTEMPTS):
            name, marked = make_name(rng, pool, sex, mark)
            if (mark and not marked) or (pool.held_out and not set(name) & pool.held_out):
                continue
            if not any(name in p.name or p.name in name for p in cast):
                cast.append(Person(name, sex, marked))
                return cast[-1]
        raise RuntimeError("no new name in 100 draws; the name pools are too small")

    def pick(self, rng, pool, cast, sex: str, mark: bool, avoid: list[Person]) -> Person:
        """Someone already in the passage (so relations chain: 田不易, his wife and their daughter) or a new person."""
        known = [p for p in cast if p not in avoid and p.sex == sex and (p.marked or not mark)]
        if known and rng.random() < self.p["reuse_rate"]:
            return rng.choice(known)
        return self.person(rng, pool, cast, sex, mark)

    # -- one relation -------------------------------------------------------------------------------
    def sexes(self, rng: random.Random, st: Statement, label: str) -> tuple[str, str] | None:
        options = [pair for pair in sex_pairs(st.sex) if pair in self.label_sex.get(label, ANY_SEXES)]
        return rng.choice(options) if options else None

    def relation(self, rng, pool, cast, st: Statement) -> tuple[str, list[Person], str | None] | None:
        """(text, [x, y], label line or None) of one statement, or None where its wording fits no label drawn."""
        fields, word, flip, mark = st.fields, "", False, (False, False)
        if "k" in fields:
            kin: KinWord = rng.choice(self.kinship)
            xs = kin.holder_sex if kin.holder_sex != "-" else st.sex[0] if st.sex[0] != "-" else rng.choice("mf")
            if st.sex[0] not in ("-", xs):
                return None
            if kin.kind == "spouse":
                ys = "f" if xs == "m" else "m"
            elif kin.kind == "sibling" and rng.random() < 0.8:
                ys = xs
            else:
                ys = st.sex[1] if st.sex[1] != "-" else rng.choice("mf")
            if st.sex[1] not in ("-", ys):
                return None
            word, label = kin.word, None
            if kin.kind == "parent":   # x is y's father: the label needs y's sex
                label, mark = PARENT_CHILD[(xs, ys)], (False, True)
            elif kin.kind == "child":  # x is y's daughter: y-x, and y's sex decides 父 or 母
                label, flip, mark = PARENT_CHILD[(ys, xs)], True, (False, True)
            elif kin.kind == "spouse":
                label = SPOUSES
            elif kin.kind == "sibling":
                label = SIBLINGS.get((xs, ys))
        else:
            label = rng.choice(st.relations)
            sexes = self.sexes(rng, st, label)
            if sexes is None:
                return None
            xs, ys = sexes
            if "r" in fields:
                word = label
            # 兄弟 / 姐妹 / 父女 ...: a reader tells the label from the names' sexes
            need = self.label_sex.get(label, ANY_SEXES)
            mark = (len({a for a, _ in need}) == 1 and label not in word, len({b for _, b in need}) == 1 and label not in word)
        x = self.pick(rng, pool, cast, xs, mark[0], [])
        y = self.pick(rng, pool, cast, ys, mark[1], [x])
        text = st.text.format(x=x.name, y=y.name, X=PRONOUN[x.sex], Y=PRONOUN[y.sex], r=word, k=word)
        line = None
        if label is not None:
            a, b = (y, x) if flip else (x, y)
            line = f"{a.name}-{b.name}:{label}"
        return text, [x, y], line

    # -- a passage ----------------------------------------------------------------------------------
    def fill(self, rng, pool, cast, clause: Clause, name: Person | None = None) -> str:
        n = name or (rng.choice(cast) if cast and rng.random() < 0.5 else self.person(rng, pool, cast, rng.choice("mf")))
        m = self.person(rng, pool, cast, rng.choice("mf"))
        return clause.text.format(n=n.name, m=m.name, r=rng.choice(list(self.raw.relations)))

    def statement_unit(self, rng, pool, cast, parts) -> tuple[list[str], str | None, Person, Person] | None:
        """The sentences of one relation (an introduction first where it refers by pronoun) and its label."""
        st: Statement = rng.choice(parts["statements"])
        made = self.relation(rng, pool, cast, st)
        if made is None:
            return None
        text, (x, y), line = made
        referent = y if "Y" in st.fields else x if "X" in st.fields else None
        intro = None
        lead = rng.choice(parts["lead"]) if rng.random() < self.p["lead_rate"] else None
        if referent is not None:
            if lead is not None and "{n}" in lead.text:
                lead_text = self.fill(rng, pool, cast, lead, referent)  # 多年后，沈寒才知道，楚云是他的师兄
                text = lead_text + "，" + text
                lead = None
            else:  # name the person in the sentence before: 沈寒推开门。她的师父…
                intro = self.fill(rng, pool, cast, rng.choice(parts["intro"]), referent)
        if lead is not None:
            text = self.fill(rng, pool, cast, lead) + "，" + text
        if not text.endswith(SENTENCE_END) and rng.random() < self.p["trail_rate"]:
            text += "，" + self.fill(rng, pool, cast, rng.choice(parts["trail"]))
        if not ended(text):
            text += "。"
        return ([intro] if intro else []) + [text], line, x, y

    def example(self, rng: random.Random, kind: str) -> dict[str, str]:
        pool, parts = self.pools[kind], self.parts[kind]
        n_rel = rng.choices(range(len(self.p["relation_weights"])), weights=self.p["relation_weights"])[0]
        cast: list[Person] = []
        units: list[tuple[list[str], list[str]]] = []  # sentences, label lines
        pairs: set[frozenset[str]] = set()
        for _ in range(MAX_ATTEMPTS):
            if len(pairs) == n_rel:
                break
            unit = self.statement_unit(rng, pool, cast, parts)
            if unit is None:
                continue
            sentences, line, x, y = unit
            if frozenset((x.name, y.name)) in pairs:
                continue  # one relation per pair
            if count_sentences("".join(s for u, _ in units for s in u) + "".join(sentences)) > MAX_SENTENCES:
                break
            pairs.add(frozenset((x.name, y.name)))
            joinable = units and len(sentences) == 1 and len(units[-1][0]) == 1 and "。" not in sentences[0][:-1] \
                and "。" not in units[-1][0][0][:-1] and not units[-1][0][0][:-1].endswith(SENTENCE_END)
            if joinable and rng.random() < self.p["join_rate"]:  # two relations in one sentence
                prev, labels = units[-1]
                units[-1] = ([prev[0][:-1] + rng.choice("，；") + sentences[0]], labels + ([line] if line else []))
            else:
                units.append((sentences, [line] if line else []))
        n_other = rng.choices(range(len(self.p["distractor_weights"])), weights=self.p["distractor_weights"])[0]
        if not units:
            n_other = max(1, n_other)
        kinds = rng.choices(("scene", "deny", "oov"), weights=self.p["distractor_kinds"], k=n_other)
        for other in kinds:
            sentence = self.fill(rng, pool, cast, rng.choice(parts[other]))
            if count_sentences("".join(s for u, _ in units for s in u) + sentence) > MAX_SENTENCES:
                break
            units.insert(rng.randint(0, len(units)), ([sentence], []))
        text = "".join(s for sentences, _ in units for s in sentences)
        if rng.random() < self.p["curly_quotes"]:
            text = text.translate(CURLY_QUOTES)
        lines = [self.reading_order(line, text) for _, labels in units for line in labels]
        return {"text": text, "output": "\n".join(lines)}

    def reading_order(self, line: str, text: str) -> str:
        """Symmetric pairs are labelled in reading order."""
        pair, rel = line.rsplit(":", 1)
        a, b = pair.split("-")
        rt = self.raw.relations.get(rel)
        if rt is not None and rt.symmetric and 0 <= text.find(b) < text.find(a):
            a, b = b, a
        return f"{a}-{b}:{rel}"


def check_kinship_labels(raw: RawData) -> None:
    """The labels kinship words imply must be in the vocabulary."""
    missing = sorted({*PARENT_CHILD.values(), *SIBLINGS.values(), SPOUSES} - set(raw.relations))
    if missing and raw.kinship:
        raise RawDataError(f"data/relations.tsv: kinship words imply {', '.join(missing)}, which it lacks; "
                           "add them or remove the kinship words of data/prose/kinship.tsv")


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()


def generate(data_dir: str | Path, out_dir: str | Path, params: dict[str, Any]) -> dict[str, int]:
    raw = load_raw(data_dir)
    gen = Generator(raw, params)
    out_dir = Path(out_dir)
    seen: set[bytes] = set()
    counts = {}
    # Held-out splits first, so train is the one that skips an input already used elsewhere.
    for split in ("test_ood", "test", "val", "train"):
        kind = "ood" if split == "test_ood" else "train"
        n = params["sizes"][split]
        with atomic_file(out_dir / f"{split}.jsonl") as f:
            for i in tqdm(range(n), desc=f"generate {split}", unit="ex", mininterval=1.0, disable=n < 5000):
                for attempt in range(MAX_ATTEMPTS):
                    ex = gen.example(random.Random(f"{params['seed']}:{split}:{i}:{attempt}"), kind)
                    key = _digest(ex["text"])
                    if key not in seen:
                        break
                else:
                    raise RuntimeError(f"{split}[{i}]: no unique input in {MAX_ATTEMPTS} draws; the raw inputs are too small")
                seen.add(key)
                f.write(jsonl_line({"id": f"{split}-{i:07d}", **ex}))
            extra = 0
            if split == "train":
                # Unreadable records pass through (output empty) for validate to report with file and line.
                records = load_annotated(data_dir, params.get("relation_map"))
                for k in range(repeats(len(records), n, params.get("annotated_share", 0.0))):
                    for j, r in enumerate(records):
                        row_id = f"annotated-{j:05d}" + (f".{k}" if k else "")  # .k: the k-th repeat
                        f.write(jsonl_line({"id": row_id, "text": r.text, "output": "" if r.problem else r.output}))
                        extra += 1
        counts[split] = n + extra
    write_json(out_dir / "stats.json", {"examples": counts, "pools": {
        k: {"surnames": len(p.surnames), "common_chars": len(p.common), "rare_chars": len(p.rare)}
        for k, p in gen.pools.items()}})
    return counts
