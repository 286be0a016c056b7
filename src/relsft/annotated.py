"""Your own annotated passages: every file under data/annotated/, in the formats users already have,
becomes train rows `{text, output}` (generate mixes them in; validate judges them).

- `*.json`: a JSON list of alpaca records `{"instruction", "input", "output"}` (the classic generator's
  format); the passage is `input`, or the instruction less our instruction prefix when `input` is empty.
- `*.jsonl`, one record a line, any of:
  `{"text", "output"}` — the answer as `A-B:rel` lines;
  `{"text", "relations": [[a, b, rel], ...]}`;
  `{"messages": [...]}` — chat (sharegpt / OpenAI style): the user turn is the passage (our instruction
  prefix is dropped if present), the assistant turn the answer; a system turn is ignored.

`relation_map` (params.yaml `generate.relation_map`, e.g. `{老师: 师父}`) renames labels on the way in.
A record that cannot be read is kept with the reason why, so that validate names file, line and reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .relations import INSTRUCTION, parse_output

DIR = "annotated"
SHAPES = "text+output, text+relations, messages, or instruction+input+output"


@dataclass(frozen=True)
class Record:
    source: str          # "data/annotated/mine.jsonl:3"
    text: str
    output: str
    problem: str | None  # why the record could not be read; None when it could


def _passage(text: str) -> str:
    return text.removeprefix(INSTRUCTION).strip()


def _relabel(output: str, relation_map: dict[str, str]) -> str:
    if not relation_map:
        return output
    parsed = parse_output(output)
    if parsed.failed:  # keep it as written: validate reports the malformed line
        return output
    return "\n".join(f"{r.a}-{r.b}:{relation_map.get(r.rel, r.rel)}" for r in parsed.relations)


def from_record(rec: Any) -> tuple[str, str]:
    """(passage, answer) of one record of any accepted shape; ValueError says what is wrong."""
    if not isinstance(rec, dict):
        raise ValueError(f"not a JSON object (expected {SHAPES})")
    if "messages" in rec:
        turns = rec["messages"]
        if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
            raise ValueError("messages must be a list of {role, content}")
        by_role = {role: [t.get("content") for t in turns if t.get("role") in names]
                   for role, names in (("user", ("user", "human")), ("assistant", ("assistant", "gpt")))}
        if len(by_role["user"]) != 1 or len(by_role["assistant"]) != 1:
            raise ValueError("messages need exactly one user and one assistant turn")
        text, output = by_role["user"][0], by_role["assistant"][0]
        if not isinstance(text, str) or not isinstance(output, str):
            raise ValueError("message contents must be strings")
        return _passage(text), output.strip()
    if "instruction" in rec and "output" in rec:
        text = rec.get("input") or rec["instruction"]
        if not isinstance(text, str) or not isinstance(rec["output"], str):
            raise ValueError("instruction, input and output must be strings")
        return _passage(text), rec["output"].strip()
    if "text" in rec and "relations" in rec:
        rels = rec["relations"]
        if not isinstance(rels, list) or not all(isinstance(r, list) and len(r) == 3 and all(isinstance(x, str) for x in r)
                                                 for r in rels):
            raise ValueError("relations must be a list of [name, name, relation]")
        return rec["text"], "\n".join(f"{a}-{b}:{rel}" for a, b, rel in rels)
    if "text" in rec and "output" in rec:
        if not isinstance(rec["text"], str) or not isinstance(rec["output"], str):
            raise ValueError("text and output must be strings")
        return rec["text"], rec["output"]
    raise ValueError(f"keys {sorted(rec)}: expected {SHAPES}")


def _json_list_items(raw: str) -> list[tuple[int, Any]]:
    """The items of a top-level JSON list, each with the line it starts on."""
    decoder, items = json.JSONDecoder(), []
    i = raw.index("[") + 1 if raw.lstrip().startswith("[") else None
    if i is None:
        raise ValueError("a .json file must hold a JSON list of records")
    while True:
        while i < len(raw) and raw[i] in " \t\r\n,":
            i += 1
        if i >= len(raw):
            raise ValueError("the JSON list is not closed")
        if raw[i] == "]":
            return items
        obj, end = decoder.raw_decode(raw, i)
        items.append((raw.count("\n", 0, i) + 1, obj))
        i = end


def read_file(path: Path, relation_map: dict[str, str]) -> list[Record]:
    raw = path.read_text(encoding="utf-8")
    entries: list[tuple[int, Any, str | None]] = []
    if path.suffix == ".json":
        try:
            entries = [(line, obj, None) for line, obj in _json_list_items(raw)]
        except (ValueError, json.JSONDecodeError) as e:
            line = raw.count("\n", 0, getattr(e, "pos", 0)) + 1
            return [Record(f"{path}:{line}", "", "", f"not a JSON list of records: {e}")]
    else:
        for no, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entries.append((no, json.loads(line), None))
            except json.JSONDecodeError as e:
                entries.append((no, line, f"not JSON: {e.msg} at column {e.colno}"))
    records = []
    for no, obj, problem in entries:
        text, output = (obj if isinstance(obj, str) else ""), ""
        if problem is None:
            try:
                text, output = from_record(obj)
                output = _relabel(output, relation_map)
            except ValueError as e:
                problem = str(e)
        records.append(Record(f"{path}:{no}", text, output, problem))
    return records


def files(data_dir: str | Path) -> list[Path]:
    d = Path(data_dir) / DIR
    return sorted(p for p in d.rglob("*") if p.suffix in (".json", ".jsonl")) if d.is_dir() else []


def load_annotated(data_dir: str | Path, relation_map: dict[str, str] | None = None) -> list[Record]:
    """Every record of data/annotated/*.json(l), in file and line order."""
    return [r for f in files(data_dir) for r in read_file(f, relation_map or {})]


def repeats(n_annotated: int, n_generated: int, share: float) -> int:
    """Passes over the annotated records so that they make up about `share` of train (at least one)."""
    if share <= 0 or n_annotated == 0:
        return 1
    if not share < 1:
        raise ValueError(f"generate.annotated_share must be in [0, 1), got {share}")
    return max(1, round(share * n_generated / ((1 - share) * n_annotated)))
