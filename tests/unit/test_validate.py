"""validate: the Great Expectations suite passes clean data and stops on each kind of bad row."""

from __future__ import annotations

import json
import shutil

import pytest

from relsft.synthetic.passages import generate
from relsft.validate import ValidationError, validate


def make(tmp_path, raw_data_dir, params, mutate=None):
    data = tmp_path / "data"
    shutil.copytree(raw_data_dir, data)
    if mutate:
        mutate(data)
    generate(data, tmp_path / "ds", params["generate"])
    return data, tmp_path / "ds"


def append(path, line):
    with path.open("a", encoding="utf-8") as f:
        f.write(line + "\n")


def test_clean_data_passes_and_builds_data_docs(tmp_path, raw_data_dir, tiny_params):
    data, ds = make(tmp_path, raw_data_dir, tiny_params)
    summary = validate(data, ds, tmp_path / "docs", tmp_path / "validation.json", tiny_params["validate"])
    assert set(summary) == {"train", "val", "test", "test_ood", "gold"}
    assert all(s["passed"] == s["expectations"] > 10 for s in summary.values())
    assert json.loads((tmp_path / "validation.json").read_text()) == summary
    index = (tmp_path / "docs" / "index.html").read_text(encoding="utf-8")
    assert "test_ood" in index


BAD_ROWS = {
    "relation outside the vocabulary": (
        lambda d: append(d / "annotated" / "examples.jsonl", json.dumps({"text": "韩立与紫灵是朋友。", "output": "韩立-紫灵:朋友"},
                                                           ensure_ascii=False)),
        ["relations are in relations.tsv", "train", "1 unexpected", "朋友"]),
    "malformed output line": (
        lambda d: append(d / "annotated" / "examples.jsonl", json.dumps({"text": "萧炎与林动是好友。", "output": "萧炎林动好友"},
                                                           ensure_ascii=False)),
        ["every output line is `A-B:rel`", "train", "1 unexpected", "萧炎林动好友"]),
    "line that is not JSON": (
        lambda d: append(d / "annotated" / "examples.jsonl", "萧炎与林动是好友 -> 萧炎-林动:好友"),
        ["annotated/examples.jsonl:8: not JSON"]),
    "annotated answer naming someone not in the text": (
        lambda d: train_on(d, "他们二人是好友。", "萧炎-林动:好友"),
        ["every labelled name occurs in the text", "train", "unexpected row(s)", "萧炎,林动"]),
    # A part of the generator's own may be wrong too: a statement labelled with a word outside the vocabulary.
    "statement with a relation outside the vocabulary": (
        lambda d: append(d / "prose" / "statements.tsv", "\n".join(["train\t知己\t--\t{x}与{y}相识多年"] * 300)),
        ["relations are in relations.tsv", "train", "知己"]),
}


def first_gold(d):
    return json.loads((d / "gold.jsonl").read_text(encoding="utf-8").splitlines()[0])


def first_gold_with_relation(d):
    return next(r for r in map(json.loads, (d / "gold.jsonl").read_text(encoding="utf-8").splitlines()) if r["output"])


def train_on(d, text, output):
    append(d / "annotated" / "examples.jsonl", json.dumps({"text": text, "output": output}, ensure_ascii=False))


def rewrite_first_gold(d, **changes):
    lines = (d / "gold.jsonl").read_text(encoding="utf-8").splitlines()
    lines[0] = json.dumps({**json.loads(lines[0]), **changes}, ensure_ascii=False)
    (d / "gold.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


# The gold split is never trained on: an annotated passage (it goes into train) may share neither
# a gold text nor a gold pair of names.
BAD_ROWS.update({
    "gold text in train": (
        lambda d: train_on(d, "他想起一件旧事。" + first_gold_with_relation(d)["text"], first_gold_with_relation(d)["output"]),
        ["gold: ", "no train text contains a gold text", "1 unexpected"]),
    "gold pair of names in train": (
        lambda d: train_on(d, "{0}与{1}是好友。".format(*first_gold_with_relation(d)["output"].split(":")[0].split("-")),
                           first_gold_with_relation(d)["output"].split(":")[0] + ":好友"),
        ["gold: ", "no gold pair of names is a pair in train", "1 unexpected"]),
    "gold tag outside the list": (
        lambda d: rewrite_first_gold(d, phenomena=["metaphor"]),
        ["gold: ", "phenomena are tags of", "metaphor"]),
    "gold empty answer without no_relation": (
        lambda d: rewrite_first_gold(d, output="", phenomena=["dialogue"]),
        ["gold: ", "the output is empty exactly where the passage is tagged no_relation"]),
})


@pytest.mark.parametrize("kind", list(BAD_ROWS))
def test_bad_rows_stop_with_an_actionable_message(tmp_path, raw_data_dir, tiny_params, kind):
    mutate, expected = BAD_ROWS[kind]
    data, ds = make(tmp_path, raw_data_dir, tiny_params, mutate)
    summary = tmp_path / "validation.json"
    summary.write_text("last good\n")
    with pytest.raises(ValidationError) as err:
        validate(data, ds, tmp_path / "docs", summary, tiny_params["validate"])
    message = str(err.value)
    for part in expected:
        assert part in message, (part, message)
    # A row names its id; a record that could not be read at all, its file and line.
    assert ("id=" in message or "annotated/examples.jsonl:" in message) and "Data Docs" in message
    assert summary.read_text() == "last good\n"  # a failed validation overwrites nothing
