"""generate: determinism, label correctness, the clause-level phenomena, OOD isolation, streaming scale."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys

import pytest

from relsft.synthetic.passages import PRONOUN, Generator, count_sentences, generate, name_pools, sex_marks, shared_name_chars
from relsft.synthetic.inputs import PLACEHOLDER_RE, KinWord, RawDataError, Statement, load_raw
from relsft.relations import parse_output


@pytest.fixture(scope="module")
def generated(tmp_path_factory, raw_data_dir, tiny_params):
    out = tmp_path_factory.mktemp("gen")
    generate(raw_data_dir, out, dict(tiny_params["generate"], sizes={"train": 2000, "val": 20, "test": 200,
                                                                      "test_ood": 300}))
    return out


def read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_byte_identical_with_same_params(raw_data_dir, tiny_params, tmp_path):
    for out in ("a", "b"):
        generate(raw_data_dir, tmp_path / out, tiny_params["generate"])
    for split in ("train", "val", "test", "test_ood"):
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (tmp_path / "b" / f"{split}.jsonl").read_bytes()


def test_other_seed_gives_other_data(raw_data_dir, tiny_params, tmp_path):
    generate(raw_data_dir, tmp_path / "a", tiny_params["generate"])
    generate(raw_data_dir, tmp_path / "b", dict(tiny_params["generate"], seed=7))
    assert (tmp_path / "a" / "train.jsonl").read_bytes() != (tmp_path / "b" / "train.jsonl").read_bytes()


def test_labels_are_consistent_with_text(generated, raw_data_dir, tiny_params):
    vocab = load_raw(raw_data_dir).relations
    weights = tiny_params["generate"]["relation_weights"]
    for split in ("train", "test", "test_ood"):
        rows = [ex for ex in read(generated / f"{split}.jsonl") if not ex["id"].startswith("annotated-")]
        for ex in rows:
            parsed = parse_output(ex["output"])
            assert not parsed.failed and len(parsed.relations) <= 4, ex
            for r in parsed.relations:
                assert r.rel in vocab and r.a in ex["text"] and r.b in ex["text"] and r.a != r.b, ex
        sentences = [count_sentences(ex["text"]) for ex in rows]
        assert max(sentences) <= 8 and min(sentences) >= 1
        empty = sum(not ex["output"] for ex in rows)
        # passages that state no relation answer "", as often as relation_weights[0] says
        assert abs(empty / len(rows) - weights[0] / sum(weights)) < 0.1, empty


def test_passages_read_like_prose_not_like_one_template(generated):
    """Many sentence shapes, most passages longer than one statement, real punctuation."""
    rows = read(generated / "train.jsonl")
    composed = [ex for ex in rows if not ex["id"].startswith("annotated-")]
    texts = [ex["text"] for ex in composed]
    assert all("," not in t for t in texts)  # full-width punctuation only
    assert sum(len(t) for t in texts) / len(texts) > 40
    multi = sum(len(parse_output(ex["output"]).relations) >= 2 for ex in composed) / len(composed)
    assert multi > 0.3
    assert any("「" in t for t in texts) and any("；" in t for t in texts)
    # Both typesettings of quotations, each passage in one of them.
    assert any("“" in t for t in texts)
    assert not any(set("「」") & set(t) and set("“”") & set(t) for t in texts)


def fixed_generator(raw, statement: str, relations: tuple[str, ...], sex: str = "--", kin: KinWord | None = None,
                    **params):
    p = {"ood_fraction": 0.15, "seed": 0, "relation_weights": [0, 1], "distractor_weights": [1], "distractor_kinds":
         [1, 0, 0], "lead_rate": 0.0, "trail_rate": 0.0, "join_rate": 0.0, "reuse_rate": 0.0, "curly_quotes": 0.0,
         **params}
    gen = Generator(raw, p)
    gen.parts["train"]["statements"] = [Statement("train", relations, sex, statement, 0)]
    gen.kinship = [kin] if kin else gen.kinship
    return gen


def one(gen, seed=0):
    ex = gen.example(random.Random(seed), "train")
    (rel,) = parse_output(ex["output"]).relations
    return ex["text"], rel


@pytest.mark.parametrize("template", ["{x}是{y}的{r}", "{y}的{r}是{x}", "{y}有一位{r}，名叫{x}",
                                      "身为{y}的{r}，{x}从不退缩", "{y}的{r}{x}一早便下了山"])
def test_asymmetric_direction_follows_meaning_not_word_order(raw_data_dir, template):
    """`{y}的{r}是{x}` names y first, yet x holds the relation: the label must say x-y."""
    text, rel = one(fixed_generator(load_raw(raw_data_dir), template, ("师父",)))
    assert template.format(x=rel.a, y=rel.b, r="师父") + "。" == text


@pytest.mark.parametrize("word,kind,holder,label_of", [
    ("父亲", "parent", "m", lambda x, y: ("父女" if y == "f" else "父子", "x-y")),
    ("母亲", "parent", "f", lambda x, y: ("母女" if y == "f" else "母子", "x-y")),
    ("女儿", "child", "f", lambda x, y: ("父女" if y == "m" else "母女", "y-x")),
    ("儿子", "child", "m", lambda x, y: ("父子" if y == "m" else "母子", "y-x")),
    ("妻子", "spouse", "f", lambda x, y: ("夫妻", "x-y")),
])
def test_a_kinship_word_implies_its_label_by_the_sexes(raw_data_dir, word, kind, holder, label_of):
    """`{x}是{y}的父亲`: 父子 or 父女 by y's sex, which y's name shows; `女儿` turns the pair round."""
    raw = load_raw(raw_data_dir)
    marked = dict(zip("mf", map(set, sex_marks(raw))))
    seen = set()
    for seed in range(40):
        gen = fixed_generator(raw, "{x}是{y}的{k}", ("kin",), kin=KinWord(word, holder, kind))
        ex = gen.example(random.Random(seed), "train")
        x, y = re.fullmatch(rf"(.+)是(.+)的{word}。", ex["text"]).groups()
        y_sex = next(s for s in "mf" if set(y) & marked[s]) if kind in ("parent", "child") else None
        label, order = label_of(holder, y_sex)
        a, b = (x, y) if order == "x-y" else (y, x)
        assert ex["output"] == f"{a}-{b}:{label}" or (label == "夫妻" and ex["output"] == f"{b}-{a}:{label}")
        seen.add(label)
    assert len(seen) == (1 if kind == "spouse" else 2)


def test_a_brother_and_a_sister_and_oov_kinship_are_not_answered(raw_data_dir):
    raw = load_raw(raw_data_dir)
    outputs = [fixed_generator(raw, "{x}是{y}的{k}", ("kin",), kin=KinWord("表哥", "m", "oov"))
               .example(random.Random(s), "train")["output"] for s in range(10)]
    assert outputs == [""] * 10
    siblings = [fixed_generator(raw, "{x}是{y}的{k}", ("kin",), kin=KinWord("哥哥", "m", "sibling"))
                .example(random.Random(s), "train")["output"] for s in range(60)]
    assert {o.split(":")[-1] for o in siblings} == {"兄弟", ""}  # 兄妹 is outside the vocabulary


def test_a_pronoun_follows_a_sentence_that_names_its_person(raw_data_dir):
    """`{Y}的{r}是{x}`: y is named in the sentence before and referred to as 他/她; the label names y."""
    raw = load_raw(raw_data_dir)
    for seed in range(20):
        text, rel = one(fixed_generator(raw, "{Y}的{r}是{x}", ("师父",)), seed)
        x, y = rel.a, rel.b
        before, statement = text[:-1].rsplit("。", 1)
        assert y in before and y not in statement and x in statement
        assert re.fullmatch(rf"[他她]的师父是{re.escape(x)}", statement), text


def test_the_sex_a_label_needs_is_respected(raw_data_dir):
    """师姐 is a woman: `{X}是{y}的{r}` with 师姐 always refers to x as 她."""
    raw = load_raw(raw_data_dir)
    for seed in range(20):
        text, rel = one(fixed_generator(raw, "{X}是{y}的{r}", ("师姐",)), seed)
        assert text.endswith(f"{PRONOUN['f']}是{rel.b}的师姐。") and rel.a in text.split("。")[0], text


def test_ood_names_and_wording_never_occur_in_train(generated, raw_data_dir):
    raw = load_raw(raw_data_dir)
    marked = shared_name_chars(raw)
    train = read(generated / "train.jsonl")
    train_name_chars = {c for ex in train for r in parse_output(ex["output"]).relations for c in r.a + r.b}
    for ex in read(generated / "test_ood.jsonl"):
        for r in parse_output(ex["output"]).relations:
            for name in (r.a, r.b):
                own = set(name) - marked
                assert own and not own & train_name_chars, (name, "OOD name characters in train names")
    train_text = "\n".join(ex["text"] for ex in train)
    # Each held-out statement's longest fixed piece never occurs in train text.
    pieces = [max(PLACEHOLDER_RE.split(s.text), key=len) for s in raw.statements if s.split == "ood"]
    assert len(pieces) >= 20
    leaked = [p for p in pieces if len(p) >= 6 and p in train_text]
    assert not leaked, leaked[:5]
    ood_text = "\n".join(ex["text"] for ex in read(generated / "test_ood.jsonl"))
    assert sum(p in ood_text for p in pieces if len(p) >= 6) > 5  # the check does see them where they belong


def test_common_surnames_stay_in_train_and_ood_ones_come_from_the_rarer_half(generated, raw_data_dir):
    raw = load_raw(raw_data_dir)
    half = len(raw.surnames) // 2
    pools = name_pools(raw, 0.15, seed=0)
    assert pools["ood"].surnames and not set(pools["ood"].surnames) & set(raw.surnames[:half])
    assert {"王", "陈", "欧阳", "慕容"} <= set(pools["train"].surnames)
    train_names = {n for ex in read(generated / "train.jsonl") for r in parse_output(ex["output"]).relations
                   for n in (r.a, r.b)}
    assert any(n.startswith("陈") for n in train_names) and any(n.startswith("欧阳") for n in train_names)


def test_malformed_statement_file_is_reported_with_its_line(raw_data_dir, tmp_path):
    d = tmp_path / "data"
    shutil.copytree(raw_data_dir, d)
    with (d / "prose" / "statements.tsv").open("a", encoding="utf-8") as f:
        f.write("train\tpair\t--\t{x}和他们\n")
    with pytest.raises(RawDataError, match=r"statements.tsv:\d+: a statement names x .* and y"):
        load_raw(d)


def test_a_held_out_part_with_a_character_no_training_part_has_is_refused_by_the_builtin(raw_data_dir, tmp_path):
    """The builtin model knows only the Chinese of the training parts: its base stage refuses such a part."""
    from relsft.builtin.tokenizer import check_ood_wording

    d = tmp_path / "data"
    shutil.copytree(raw_data_dir, d)
    assert "曰" not in load_raw(d).fixed_text()
    with (d / "prose" / "statements.tsv").open("a", encoding="utf-8") as f:
        f.write("ood\tpair\t--\t{x}与{y}曰{r}\n")
    with pytest.raises(RawDataError, match=r"statements.tsv:\d+: .*'曰'.*add a train part"):
        check_ood_wording(load_raw(d))


def test_old_template_files_get_a_clear_error(raw_data_dir, tmp_path):
    d = tmp_path / "data"
    shutil.copytree(raw_data_dir, d)
    (d / "templates.tsv").write_text("train\tpair\t*\t{x}与{y}是{r}。\n", encoding="utf-8")
    with pytest.raises(RawDataError, match=r"templates.tsv: .*prose/.*init-data --force"):
        load_raw(d)


def test_a_million_examples_stream_in_bounded_memory(raw_data_dir, tiny_params, tmp_path):
    """Generation streams: memory stays flat while the file grows (100k examples here, ~1/10 of the 1M goal)."""
    p = dict(tiny_params["generate"])
    code = f"""
import resource, sys
from relsft.synthetic.passages import generate
p = {p!r}
p["sizes"] = {{"train": int(sys.argv[1]), "val": 10, "test": 10, "test_ood": 10}}
generate({str(raw_data_dir)!r}, {str(tmp_path)!r}, p)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""
    small = int(subprocess.run([sys.executable, "-c", code, "2000"], capture_output=True, text=True, check=True).stdout)
    big = int(subprocess.run([sys.executable, "-c", code, "100000"], capture_output=True, text=True, check=True).stdout)
    size_mb = (tmp_path / "train.jsonl").stat().st_size / 2**20
    assert size_mb > 20
    # Only 8-byte digests are kept per example: far less than the data itself.
    assert big - small < size_mb / 2, (small, big, size_mb)
