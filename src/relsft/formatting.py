"""Stage `format`: examples -> prompt/completion text records through the tokenizer's chat template.

The prompt ends with the assistant header and the completion is the answer plus the template's
end-of-turn token (`<|im_end|>` for ChatML, whatever the tokenizer's eos), so TRL computes the loss
on the answer only and the model learns to stop there. Serving uses the same template, saved with
the exported tokenizer (`chat.py`).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .chat import end_of_turn, render_completion, render_prompt
from .files import atomic_dir, jsonl_line, read_jsonl, write_json


class FormatError(ValueError):
    pass


def format_split(tokenizer, src: Path, dst: Path, max_length: int) -> dict[str, Any]:
    lengths, too_long = [], []
    eot = end_of_turn(tokenizer)
    with dst.open("w", encoding="utf-8") as f:
        for ex in read_jsonl(src):
            prompt = render_prompt(tokenizer, ex["text"])
            completion = render_completion(tokenizer, ex["text"], ex["output"], eot)
            n = len(tokenizer(prompt + completion, add_special_tokens=False)["input_ids"])
            if n > max_length:
                too_long.append((ex["id"], n))
            lengths.append(n)
            f.write(jsonl_line({"id": ex["id"], "prompt": prompt, "completion": completion}))
    if too_long:
        raise FormatError(
            f"{src}: {len(too_long)} example(s) exceed format.max_length={max_length} tokens "
            f"(first: {too_long[:3]}); raise max_length or shorten the examples"
        )
    return {"examples": len(lengths), "tokens": sum(lengths), "mean_tokens": round(statistics.fmean(lengths), 2),
            "max_tokens": max(lengths)}


def format_dataset(base_dir: str | Path, dataset_dir: str | Path, out_dir: str | Path, params: dict[str, Any],
                   splits=("train", "val")) -> dict[str, Any]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    print(f"format: answers end with {end_of_turn(tok)!r} (the chat template's end of turn)")
    stats = {}
    with atomic_dir(out_dir) as tmp:
        for split in splits:
            stats[split] = format_split(tok, Path(dataset_dir) / f"{split}.jsonl", tmp / f"{split}.jsonl",
                                        params["max_length"])
        write_json(tmp / "stats.json", stats)
    for split, s in stats.items():
        print(f"format {split}: {s['examples']} examples, {s['tokens']} tokens (mean {s['mean_tokens']}, max {s['max_tokens']})")
    return stats
