"""Stage `merge`: fold the LoRA adapter into the base weights, then prove it changed nothing.

The merged model is saved, reloaded from its safetensors, and must give the same greedy
answers as base+adapter on the test prompts; otherwise the stage fails and writes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .decoding import greedy_generate, load_for_inference
from .files import atomic_dir, read_jsonl, write_json


class MergeParityError(RuntimeError):
    pass


def parity_mismatches(texts, expected, got) -> list[dict[str, str]]:
    return [{"text": t, "adapter": e["answer"], "merged": g["answer"]}
            for t, e, g in zip(texts, expected, got) if e["answer"] != g["answer"]]


def merge(base_dir: str | Path, adapter_dir: str | Path, dataset_dir: str | Path, out_dir: str | Path,
          cfg: dict[str, Any]) -> dict[str, Any]:
    texts = [e["text"] for e in read_jsonl(Path(dataset_dir) / "test.jsonl")][: cfg["parity_examples"]]
    model, tok = load_for_inference(base_dir, adapter_dir)
    expected = greedy_generate(model, tok, texts, cfg["max_new_tokens"], cfg["batch_size"], desc="parity adapter")
    merged = model.merge_and_unload()
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        reloaded, tok2 = load_for_inference(tmp)
        got = greedy_generate(reloaded, tok2, texts, cfg["max_new_tokens"], cfg["batch_size"], desc="parity merged")
        bad = parity_mismatches(texts, expected, got)
        if bad:
            raise MergeParityError(
                f"merged model differs from base+adapter on {len(bad)}/{len(texts)} test prompts; "
                f"first: {bad[0]}. The adapter was not merged faithfully; nothing was written."
            )
        report = {"prompts": len(texts), "mismatches": 0}
        write_json(tmp / "merge_parity.json", report)
    print(f"merge: greedy outputs identical on {len(texts)} test prompts -> {out_dir}")
    return report
