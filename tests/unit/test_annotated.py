"""data/annotated/: each accepted format round-trips into train; bad rows stop validate with file, line, reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from relsft.synthetic.passages import generate
from relsft.files import read_jsonl
from relsft.relations import INSTRUCTION
from relsft.validate import ValidationError, validate

# The same passages in the four shapes a user may have them in.
PASSAGES = [("蓝孤舟收冷千秋为徒，传他华山剑法。", [["蓝孤舟", "冷千秋", "师徒"]]),
            ("白砚秋嫁给了冷千秋，从此笑傲江湖。", [["白砚秋", "冷千秋", "夫妻"]]),
            ("沈听澜与陶望舒是死敌。孟折枝是沈听澜的好友。", [["沈听澜", "陶望舒", "敌对"], ["孟折枝", "沈听澜", "好友"]])]


def answer(rels) -> str:
    return "\n".join(f"{a}-{b}:{r}" for a, b, r in rels)


def dump_jsonl(rows) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


FORMATS = {
    "alpaca.json": lambda ps: json.dumps([{"instruction": INSTRUCTION, "input": t, "output": answer(r)} for t, r in ps],
                                         ensure_ascii=False, indent=2),
    "text_output.jsonl": lambda ps: dump_jsonl({"text": t, "output": answer(r)} for t, r in ps),
    "text_relations.jsonl": lambda ps: dump_jsonl({"text": t, "relations": r} for t, r in ps),
    "chat.jsonl": lambda ps: dump_jsonl({"messages": [{"role": "system", "content": "你是助手"},
                                                      {"role": "user", "content": INSTRUCTION + t},
                                                      {"role": "assistant", "content": answer(r)}]} for t, r in ps),
}


def project_data(tmp_path: Path, raw_data_dir: Path, files: dict[str, str]) -> Path:
    data = tmp_path / "data"
    shutil.copytree(raw_data_dir, data)
    shutil.rmtree(data / "annotated")
    (data / "annotated").mkdir()
    for name, content in files.items():
        (data / "annotated" / name).write_text(content, encoding="utf-8")
    return data


def annotated_rows(ds: Path) -> list[dict]:
    return [r for r in read_jsonl(ds / "train.jsonl") if r["id"].startswith("annotated-")]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_round_trips_into_train(tmp_path, raw_data_dir, tiny_params, fmt):
    data = project_data(tmp_path, raw_data_dir, {fmt: FORMATS[fmt](PASSAGES)})
    generate(data, tmp_path / "ds", dict(tiny_params["generate"], annotated_share=0.0))  # each once
    rows = annotated_rows(tmp_path / "ds")
    assert [(r["text"], r["output"]) for r in rows] == [(t, answer(rels)) for t, rels in PASSAGES]
    validate(data, tmp_path / "ds", tmp_path / "docs", tmp_path / "v.json", tiny_params["validate"])


def test_share_repeats_them_and_a_relation_map_renames_labels(tmp_path, raw_data_dir, tiny_params):
    renamed = [(t, [[a, b, "老师" if r == "师徒" else r] for a, b, r in rels]) for t, rels in PASSAGES]
    data = project_data(tmp_path, raw_data_dir, {"mine.jsonl": FORMATS["text_relations.jsonl"](renamed)})
    n = tiny_params["generate"]["sizes"]["train"]
    cfg = dict(tiny_params["generate"], annotated_share=0.2, relation_map={"老师": "师徒"})
    generate(data, tmp_path / "ds", cfg)
    rows = annotated_rows(tmp_path / "ds")
    assert abs(len(rows) / (len(rows) + n) - 0.2) < 0.02           # a fifth of train
    assert rows[0]["output"] == "蓝孤舟-冷千秋:师徒"                  # mapped on the way in
    validate(data, tmp_path / "ds", tmp_path / "docs", tmp_path / "v.json", tiny_params["validate"])


BAD = {  # a file per format, its bad record on a known line, and what the message must say
    "alpaca.json": (lambda: json.dumps([{"instruction": INSTRUCTION, "input": "蓝孤舟收冷千秋为徒。", "output": "蓝孤舟-冷千秋:师徒"},
                                        {"instruction": INSTRUCTION, "input": "蓝孤舟是霍青衫的老师。",
                                         "output": "蓝孤舟-霍青衫:老师"}], ensure_ascii=False, indent=2),
                    ["alpaca.json:7", "relations are in relations.tsv", "老师", "relation_map"]),
    "rels.jsonl": (lambda: dump_jsonl([{"text": "白砚秋嫁给了冷千秋。", "relations": [["白砚秋", "冷千秋", "夫妻"]]},
                                       {"text": "她嫁给了冷千秋。", "relations": [["白砚秋", "冷千秋", "夫妻"]]}]),
                   ["rels.jsonl:2", "every labelled name occurs in the text", "白砚秋"]),
    "chat.jsonl": (lambda: dump_jsonl([{"messages": [{"role": "user", "content": "陶望舒是白砚秋的父亲。"}]}]),
                   ["chat.jsonl:1", "messages need exactly one user and one assistant turn"]),
    "text.jsonl": (lambda: '{"text": "孟折枝是沈听澜的好友。", "output": "孟折枝-沈听澜:好友"}\n{"text": "broken\n',
                   ["text.jsonl:2", "not JSON"]),
}


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_record_names_file_line_and_reason(tmp_path, raw_data_dir, tiny_params, name):
    content, expected = BAD[name]
    data = project_data(tmp_path, raw_data_dir, {name: content()})
    generate(data, tmp_path / "ds", tiny_params["generate"])
    with pytest.raises(ValidationError) as err:
        validate(data, tmp_path / "ds", tmp_path / "docs", tmp_path / "v.json", tiny_params["validate"])
    for part in expected:
        assert part in str(err.value), (part, str(err.value))
    assert not (tmp_path / "v.json").exists()
