"""Stage `format`: examples -> prompt/completion text records through the tokenizer's chat template.

The prompt ends with the assistant header and the completion ends with the end-of-turn token
(`<|im_end|>` for ChatML), so TRL computes the loss on the answer only and the model learns to
stop. Serving uses the same template, saved with the exported tokenizer.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .io import atomic_dir, jsonl_line, read_jsonl, write_json
from .relations import user_messages


class FormatError(ValueError):
    pass


def render_prompt(tokenizer, text: str) -> str:
    return tokenizer.apply_chat_template(user_messages(text), add_generation_prompt=True, tokenize=False)


def render_completion(tokenizer, text: str, output: str) -> str:
    """The template's own rendering of the assistant turn, cut at its end-of-turn token."""
    prompt = render_prompt(tokenizer, text)
    full = tokenizer.apply_chat_template(
        user_messages(text) + [{"role": "assistant", "content": output}], tokenize=False
    )
    if not full.startswith(prompt):
        raise FormatError("the chat template renders the prompt differently with an answer; cannot split it")
    completion = full[len(prompt) :]
    eos = tokenizer.eos_token
    end = completion.rfind(eos)
    if end < 0:
        raise FormatError(f"the chat template's assistant turn does not contain the eos token {eos!r}")
    return completion[: end + len(eos)]


def format_split(tokenizer, src: Path, dst: Path, max_length: int) -> dict[str, Any]:
    lengths, too_long = [], []
    with dst.open("w", encoding="utf-8") as f:
        for ex in read_jsonl(src):
            prompt = render_prompt(tokenizer, ex["text"])
            completion = render_completion(tokenizer, ex["text"], ex["output"])
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
    stats = {}
    with atomic_dir(out_dir) as tmp:
        for split in splits:
            stats[split] = format_split(tok, Path(dataset_dir) / f"{split}.jsonl", tmp / f"{split}.jsonl",
                                        params["max_length"])
        write_json(tmp / "stats.json", stats)
    for split, s in stats.items():
        print(f"format {split}: {s['examples']} examples, {s['tokens']} tokens (mean {s['mean_tokens']}, max {s['max_tokens']})")
    return stats
