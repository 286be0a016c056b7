"""Stage `generate`: synthetic relation-extraction examples from the raw inputs.

Each example is drawn from its own RNG, seeded by (seed, split, index), and written as soon
as it is made: output is byte-deterministic and a million examples need no more memory than
the 8-byte digests used to keep inputs unique across splits.

test_ood uses held-out templates and names built only from characters that never occur in
the training split, so it measures whether the model copies names rather than recalls them.
In the other splits a share of sentences starts with a random opener (据说, 那一年, ...): an
opener then says nothing about which name holds the relation, and the model must read that from
the sentence's structure. Likewise a share gets an adverb before the 是 that follows a name or
the relation (`{y}的{r}也是{x}`), so that the character after a span does not say which span it is.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .io import atomic_file, jsonl_line, write_json
from .annotated import load_annotated, repeats
from .rawdata import RawData, RawDataError, Template, load_raw
from .relations import INSTRUCTION

SPLITS = ("train", "val", "test", "test_ood")
MAX_ATTEMPTS = 100


@dataclass(frozen=True)
class NamePool:
    surnames: list[str]
    given: list[str]


def name_pools(raw: RawData, ood_fraction: float, seed: int) -> dict[str, NamePool]:
    """Split surnames and given-name characters into disjoint train and OOD pools.

    Name characters never occur in the project's fixed text (templates, distractors, relations,
    instruction), so a name never merges with its context; OOD characters also never occur in
    the annotated passages, which all go to train.
    """
    reserved = set(raw.fixed_text()) | set(INSTRUCTION) | {c for t in raw.templates for c in t.text}
    annotated_chars = {c for r in raw.annotated for c in r.text + r.output}
    rng = random.Random(f"{seed}:pools")
    surnames = [s for s in raw.surnames if not set(s) & reserved]
    rng.shuffle(surnames)
    n_ood = max(1, round(len(surnames) * ood_fraction))
    ood_s = [s for s in surnames[:n_ood] if not set(s) & annotated_chars]
    ood_chars = {c for s in ood_s for c in s}
    # Compound surnames share characters (孙 / 公孙): a train surname may not touch an OOD one.
    train_s = [s for s in surnames if s not in ood_s and not set(s) & ood_chars]
    surname_chars = {c for s in raw.surnames for c in s}
    given = [c for c in raw.given_chars if c not in reserved and c not in surname_chars]
    rng.shuffle(given)
    n_ood = round(len(given) * ood_fraction)
    ood_g = [c for c in given[:n_ood] if c not in annotated_chars]
    train_g = [c for c in given if c not in set(ood_g)]
    return {"train": NamePool(sorted(train_s), sorted(train_g)), "ood": NamePool(sorted(ood_s), sorted(ood_g))}


def make_name(rng: random.Random, pool: NamePool) -> str:
    """1-4 characters: usually surname + 1-2 given characters, sometimes a bare given name."""
    if rng.random() < 0.85:
        surname = rng.choice(pool.surnames)
        n_given = rng.choice((1, 2)) if len(surname) == 1 else rng.choice((1, 1, 2))
        return surname + "".join(rng.choice(pool.given) for _ in range(n_given))
    return "".join(rng.choice(pool.given) for _ in range(rng.choice((1, 2, 2, 2))))


def new_name(rng: random.Random, pool: NamePool, taken: list[str]) -> str:
    # No name may contain another: the label's names must each be findable in the text.
    while True:
        name = make_name(rng, pool)
        if not any(name in t or t in name for t in taken):
            taken.append(name)
            return name


def check_ood_wording(raw: RawData) -> None:
    """A held-out template must be a new wording of words the training text uses.

    The builtin model knows only the Chinese it is trained on. A character that occurs in no
    training text looks exactly like an unseen name character, so the model copies it into the
    name ("岑馈互" from "...与岑馈互为..."): such a template would measure the vocabulary, not
    generalisation to new sentence structures.
    """
    seen = set(raw.fixed_text()) | set(INSTRUCTION) | {c for r in raw.annotated for c in r.text}
    for t in (t for t in raw.templates if t.split == "ood"):
        unseen = sorted(set(t.text.format(x="", y="", r="")) - seen)
        if unseen:
            raise RawDataError(
                f"templates.tsv:{t.line}: the held-out template {t.text!r} uses {''.join(unseen)!r}, which no "
                "training text has; add a train template, opener or distractor that uses it"
            )


class Generator:
    def __init__(self, raw: RawData, params: dict[str, Any]):
        check_ood_wording(raw)
        self.raw, self.p = raw, params
        self.pools = name_pools(raw, params["ood_fraction"], params["seed"])
        self.templates = {
            "train": [t for t in raw.templates if t.split == "train"],
            "ood": [t for t in raw.templates if t.split == "ood"],
        }
        self.ood_texts = {t.text for t in self.templates["ood"]}
        self._openers: dict[str, list[str]] = {}
        self._adverbed: dict[str, list[str]] = {}

    def openers(self, text: str) -> list[str]:
        """Openers for a training template: none if it has its own, and never one that would make
        a held-out template's text."""
        if text not in self._openers:
            own = any(text.startswith(o) for o in self.raw.openers)
            self._openers[text] = [] if own else [o for o in self.raw.openers if o + text not in self.ood_texts]
        return self._openers[text]

    def adverbed(self, text: str) -> list[str]:
        """A training template with an adverb before the 是 right after its first slot; never one that
        a held-out template ends with (an opener could complete it)."""
        if text not in self._adverbed:
            i = text.find("}是") + 1
            variants = [text[:i] + a + text[i:] for a in self.raw.adverbs] if i else []
            self._adverbed[text] = [v for v in variants if not any(o.endswith(v) for o in self.ood_texts)]
        return self._adverbed[text]

    def allowed_relations(self, t: Template) -> list[str]:
        if t.relations is not None:
            return list(t.relations)
        return [r.name for r in self.raw.relations.values() if t.form in r.forms]

    def example(self, rng: random.Random, kind: str) -> dict[str, str]:
        pool, templates = self.pools[kind], self.templates[kind]
        k = rng.randint(self.p["min_relations"], self.p["max_relations"])
        cast: list[str] = []
        n_cast = rng.choice((k + 1, 2 * k))
        for _ in range(n_cast):
            new_name(rng, pool, cast)
        pairs = [(a, b) for i, a in enumerate(cast) for b in cast[i + 1 :]]
        rng.shuffle(pairs)
        sentences, labels = [], []
        for x, y in pairs[:k]:
            if rng.random() < 0.5:
                x, y = y, x
            t = rng.choice(templates)
            r = rng.choice(self.allowed_relations(t))
            text = t.text
            if kind == "train":  # test_ood's held-out templates stay as written
                adverbed = self.adverbed(text)
                if adverbed and rng.random() < self.p["adverb_rate"]:
                    text = rng.choice(adverbed)
                openers = self.openers(text)
                if openers and rng.random() < self.p["opener_rate"]:
                    text = rng.choice(openers) + text
            sentence = text.format(x=x, y=y, r=r)
            rel = self.raw.relations.get(r)
            if rel is not None and rel.symmetric and 0 <= sentence.find(y) < sentence.find(x):
                x, y = y, x  # symmetric pairs are labelled in reading order
            sentences.append(sentence)
            labels.append(f"{x}-{y}:{r}")
        for _ in range(rng.choices((0, 1, 2), weights=self.p["distractor_weights"])[0]):
            d = rng.choice(self.raw.distractors)
            names = [rng.choice(cast) if rng.random() < 0.5 else new_name(rng, pool, cast) for _ in range(2)]
            if names[0] == names[1]:
                names[1] = new_name(rng, pool, cast)
            sentences.insert(rng.randint(0, len(sentences)), d.format(n=names[0], m=names[1]))
        return {"text": rng.choice(("", " ")).join(sentences), "output": "\n".join(labels)}


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
        k: {"surnames": len(p.surnames), "given_chars": len(p.given)} for k, p in gen.pools.items()}})
    return counts
