"""generate: determinism, label correctness, OOD isolation, streaming scale."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from relsft.generate import Generator, generate
from relsft.rawdata import RawDataError, Template, load_raw
from relsft.relations import parse_output


@pytest.fixture(scope="module")
def generated(tmp_path_factory, raw_data_dir, tiny_params):
    out = tmp_path_factory.mktemp("gen")
    generate(raw_data_dir, out, tiny_params["generate"])
    return out


def read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_byte_identical_with_same_params(generated, raw_data_dir, tiny_params, tmp_path):
    generate(raw_data_dir, tmp_path, tiny_params["generate"])
    for split in ("train", "val", "test", "test_ood"):
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (generated / f"{split}.jsonl").read_bytes()


def test_other_seed_gives_other_data(generated, raw_data_dir, tiny_params, tmp_path):
    generate(raw_data_dir, tmp_path, dict(tiny_params["generate"], seed=7))
    assert (tmp_path / "train.jsonl").read_bytes() != (generated / "train.jsonl").read_bytes()


def test_labels_are_consistent_with_text(generated, raw_data_dir):
    vocab = load_raw(raw_data_dir).relations
    for split in ("train", "test", "test_ood"):
        for ex in read(generated / f"{split}.jsonl"):
            parsed = parse_output(ex["output"])
            assert not parsed.failed and 1 <= len(parsed.relations) <= 4, ex
            for r in parsed.relations:
                assert r.rel in vocab and r.rel in ex["text"], ex
                assert r.a in ex["text"] and r.b in ex["text"] and r.a != r.b, ex


def template_pattern(template: str, raw) -> re.Pattern:
    """A held-out template as a sentence made from it would read: its fixed words in order, a relation
    in {r}, a name (a surname and one or two given-name characters) in {x} and {y}."""
    name = "(?:" + "|".join(map(re.escape, sorted(raw.surnames, key=len, reverse=True))) + ")" + \
        "[" + re.escape("".join(raw.given_chars)) + "]{1,2}"
    slots = {"{r}": "(?:" + "|".join(map(re.escape, raw.relations)) + ")", "{x}": name, "{y}": name}
    return re.compile("".join(slots.get(p, re.escape(p)) for p in re.split(r"(\{[xyr]\})", template)))


def test_template_pattern_finds_a_held_out_sentence_behind_an_opener(raw_data_dir):
    raw = load_raw(raw_data_dir)
    surname, given = raw.surnames[0], raw.given_chars[0] + raw.given_chars[1]
    pattern = template_pattern("原来{y}的{r}正是{x}。", raw)
    # What an opener plus an adverb before 是 could make of the train template {y}的{r}是{x}:
    assert pattern.search(f"那日之后,原来{surname}{given}的师父正是{surname}{given[0]}。")
    assert not pattern.search(f"原来{surname}{given}的师父也是{surname}{given[0]}。")  # another adverb
    assert not pattern.search(f"原来{surname}{given}身边的师父正是{surname}{given[0]}。")  # another template


def test_ood_names_and_templates_never_occur_in_train(generated, raw_data_dir):
    raw = load_raw(raw_data_dir)
    train = read(generated / "train.jsonl")
    train_text = "".join(ex["text"] + ex["output"] for ex in train)
    for ex in read(generated / "test_ood.jsonl"):
        for r in parse_output(ex["output"]).relations:
            assert not set(r.a + r.b) & set(train_text), (r, "OOD name characters leak into train")
    ood = read(generated / "test_ood.jsonl")
    assert any(template_pattern(t.text, raw).search(ex["text"]) for t in raw.templates if t.split == "ood"
               for ex in ood)  # the pattern does find the held-out sentences where they belong
    for t in (t for t in raw.templates if t.split == "ood"):
        pattern = template_pattern(t.text, raw)
        hits = [ex["text"] for ex in train if pattern.search(ex["text"])]
        assert not hits, (t.text, hits[:3])  # a held-out sentence, openers and adverbs included, never in train


def _render(raw, text, relation, opener_rate=0.0, seed=0, adverb_rate=0.0):
    gen = Generator(raw, {"ood_fraction": 0.15, "seed": 0, "min_relations": 1, "max_relations": 1,
                          "distractor_weights": [1, 0, 0], "opener_rate": opener_rate, "adverb_rate": adverb_rate})
    gen.templates["train"] = [Template("train", "role", (relation,), text, 0)]
    import random

    return gen.example(random.Random(seed), "train")


@pytest.mark.parametrize("template", ["{x}是{y}的{r}。", "{y}的{r}是{x}。", "{y}有一位{r},名叫{x}。",
                                      "身为{y}的{r},{x}从不退缩。"])
def test_asymmetric_direction_follows_meaning_not_word_order(raw_data_dir, template):
    """`{y}的{r}是{x}` names y first, yet x holds the relation: the label must say x-y."""
    ex = _render(load_raw(raw_data_dir), template, "师父")
    (rel,) = parse_output(ex["output"]).relations
    holder, other = rel.a, rel.b
    # Put the names back into the template: it must reproduce the text exactly.
    assert template.format(x=holder, y=other, r="师父") == ex["text"]


def test_openers_vary_training_sentences_but_never_recreate_a_held_out_template(raw_data_dir):
    """`据说{y}的{r}是{x}。` is a test_ood template: 据说 may open every other training template, not this one."""
    raw = load_raw(raw_data_dir)
    template = "{y}的{r}是{x}。"
    assert "据说" in raw.openers and "据说" + template in {t.text for t in raw.templates if t.split == "ood"}
    seen = set()
    for seed in range(300):
        ex = _render(raw, template, "师父", opener_rate=1.0, seed=seed)
        (rel,) = parse_output(ex["output"]).relations
        opener = ex["text"].removesuffix(template.format(x=rel.a, y=rel.b, r="师父"))
        assert opener in raw.openers, ex  # the label still reads the core sentence the right way round
        seen.add(opener)
    assert "据说" not in seen and len(seen) == len(raw.openers) - 1


def test_adverbs_vary_what_follows_a_span_but_never_recreate_a_held_out_template(raw_data_dir):
    """`{y}的{r}也是{x}`: after an adverb the character that follows the relation no longer says it was the
    relation. `{y}的{r}正是{x}` is never made: `原来{y}的{r}正是{x}。` is a test_ood template."""
    raw = load_raw(raw_data_dir)
    assert "原来{y}的{r}正是{x}。" in {t.text for t in raw.templates if t.split == "ood"} and "正" in raw.adverbs
    seen = set()
    for seed in range(300):
        ex = _render(raw, "{y}的{r}是{x}。", "师父", adverb_rate=1.0, seed=seed)
        (rel,) = parse_output(ex["output"]).relations
        head, tail = f"{rel.b}的师父", f"是{rel.a}。"  # the label still names x, after 是, as the 师父
        assert ex["text"].startswith(head) and ex["text"].endswith(tail), ex
        seen.add(ex["text"].removeprefix(head).removesuffix(tail))
    assert seen == set(raw.adverbs) - {"正"}


def test_receiving_a_disciple_is_labelled_as_disciple(raw_data_dir):
    """The classic bug: `X收Y为徒弟` labelled as X-Y:师徒 whatever was drawn. Here Y is X's 徒弟."""
    ex = _render(load_raw(raw_data_dir), "{y}收{x}为{r}。", "徒弟")
    (rel,) = parse_output(ex["output"]).relations
    assert ex["text"] == f"{rel.b}收{rel.a}为徒弟。" and rel.rel == "徒弟"


def test_every_template_states_the_drawn_relation(raw_data_dir):
    raw = load_raw(raw_data_dir)
    assert sum(t.split == "train" for t in raw.templates) > 8
    for t in raw.templates:
        assert "{r}" in t.text and "{x}" in t.text and "{y}" in t.text, t


def test_malformed_template_file_is_reported_with_its_line(raw_data_dir, tmp_path):
    import shutil

    d = tmp_path / "data"
    shutil.copytree(raw_data_dir, d)
    with (d / "templates.tsv").open("a", encoding="utf-8") as f:
        f.write("train\tpair\t{x}和{y}\n")
    with pytest.raises(RawDataError, match=r"templates.tsv:\d+"):
        load_raw(d)


def test_a_held_out_template_with_a_character_no_training_text_has_is_refused(raw_data_dir, tmp_path):
    import shutil

    d = tmp_path / "data"
    shutil.copytree(raw_data_dir, d)
    assert "曰" not in load_raw(d).fixed_text()
    with (d / "templates.tsv").open("a", encoding="utf-8") as f:
        f.write("ood\tpair\t*\t{x}与{y}曰{r}。\n")
    with pytest.raises(RawDataError, match=r"templates.tsv:\d+: .*'曰'.*add a train template"):
        Generator(load_raw(d), {"ood_fraction": 0.15, "seed": 0})


def test_a_million_examples_stream_in_bounded_memory(raw_data_dir, tmp_path):
    """Generation streams: memory stays flat while the file grows (200k examples here, ~1/5 of the 1M goal)."""
    code = f"""
import resource, sys
from relsft.generate import generate
p = {{"seed": 1, "ood_fraction": 0.15, "min_relations": 1, "max_relations": 4, "distractor_weights": [5, 3, 2],
     "opener_rate": 0.35, "adverb_rate": 0.3, "sizes": {{"train": int(sys.argv[1]), "val": 10, "test": 10, "test_ood": 10}}}}
generate({str(raw_data_dir)!r}, {str(tmp_path)!r}, p)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""
    small = int(subprocess.run([sys.executable, "-c", code, "2000"], capture_output=True, text=True, check=True).stdout)
    big = int(subprocess.run([sys.executable, "-c", code, "200000"], capture_output=True, text=True, check=True).stdout)
    size_mb = (tmp_path / "train.jsonl").stat().st_size / 2**20
    assert size_mb > 30
    # Only 8-byte digests are kept per example: far less than the data itself.
    assert big - small < size_mb / 2, (small, big, size_mb)
