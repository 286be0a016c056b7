"""Batched greedy decoding with transformers, shared by evaluate and merge's parity check."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm

from .format import render_prompt


def load_for_inference(model_dir, adapter_dir=None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(adapter_dir or model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    return model, tok


def greedy_generate(model, tok, texts: list[str], max_new_tokens: int, batch_size: int,
                    desc: str = "generate") -> list[dict[str, Any]]:
    """Return, per input text, the decoded answer and whether it ended on the eos token."""
    import torch

    eos = tok.convert_tokens_to_ids(tok.eos_token)
    prompts = [render_prompt(tok, t) for t in texts]
    # Longest first: batches hold prompts of similar length, so little padding is computed.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list[dict[str, Any]] = [{}] * len(prompts)
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
            idx = order[start : start + batch_size]
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                pad_token_id=tok.pad_token_id,
            )
            for row, i in enumerate(idx):
                ids = out[row, enc["input_ids"].shape[1] :].tolist()
                stopped = eos in ids
                if stopped:
                    ids = ids[: ids.index(eos)]
                ids = [t for t in ids if t != tok.pad_token_id]
                results[i] = {"answer": tok.decode(ids, skip_special_tokens=True), "stopped": stopped,
                              "tokens": len(ids)}
    return results
