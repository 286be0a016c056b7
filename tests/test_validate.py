"""validate: the Great Expectations suite passes clean data and stops on each kind of bad row."""

from __future__ import annotations

import json
import shutil

import pytest

from relsft.generate import generate
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
    assert set(summary) == {"train", "val", "test", "test_ood"}
    assert all(s["passed"] == s["expectations"] > 10 for s in summary.values())
    assert json.loads((tmp_path / "validation.json").read_text()) == summary
    index = (tmp_path / "docs" / "index.html").read_text(encoding="utf-8")
    assert "test_ood" in index


BAD_ROWS = {
    "relation outside the vocabulary": (
        lambda d: append(d / "annotated.jsonl", json.dumps({"text": "韩立与紫灵是朋友。", "output": "韩立-紫灵:朋友"},
                                                           ensure_ascii=False)),
        ["relations are in relations.tsv", "train", "1 unexpected", "朋友"]),
    "malformed output line": (
        lambda d: append(d / "annotated.jsonl", json.dumps({"text": "萧炎与林动是好友。", "output": "萧炎林动好友"},
                                                           ensure_ascii=False)),
        ["every output line is `A-B:rel`", "train", "1 unexpected", "萧炎林动好友"]),
    "line that is not JSON": (
        lambda d: append(d / "annotated.jsonl", "萧炎与林动是好友 -> 萧炎-林动:好友"),
        ["output is not empty", "train"]),
    "template whose names do not appear": (
        lambda d: append(d / "templates.tsv", "train\tpair\t*\t他们二人是{r}关系。"),
        ["every labelled name occurs in the text", "train", "unexpected row(s)"]),
    # The classic generator's bug: a template that states 师徒 whatever relation was drawn.
    "template stating another relation": (
        lambda d: append(d / "templates.tsv", "train\trole\t徒弟\t{y}收{x}入门,师徒关系牢固。"),
        ["the labelled relation word occurs in the text", "train", "徒弟"]),
}


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
    assert "id=" in message and "Data Docs" in message
    assert summary.read_text() == "last good\n"  # a failed validation overwrites nothing
