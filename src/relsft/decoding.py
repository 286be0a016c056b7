"""Greedy answers for many passages: transformers (batched `generate`) or vLLM's offline engine.

`evaluate` and `promote` decode with the recipe's `evaluate.engine` in `evaluate.dtype`, the precision
`relsft serve` serves: vLLM's offline engine is the served engine itself, so its answers are the
served ones; transformers is the reference that merge's parity check uses.

Decoding stops at the chat template's end-of-turn token and uses a generation config built here
(greedy, nothing else), whatever a hub model's generation_config.json says: evaluation, the merge
parity check and the exported model (which vLLM serves) decode alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .chat import end_of_turn, render_prompt


def inference_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_for_inference(model_dir, adapter_dir=None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(adapter_dir or model_dir)
    tok.padding_side = "left"
    # float32 on either device: the precision `relsft serve` serves (serve.dtype), so answers match.
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    model.to(inference_device()).eval()
    return model, tok


def greedy_generate(model, tok, texts: list[str], max_new_tokens: int, batch_size: int,
                    desc: str = "generate") -> list[dict[str, Any]]:
    """Return, per input text, the decoded answer and whether it ended on the end-of-turn token."""
    import torch
    from transformers import GenerationConfig

    eos = tok.convert_tokens_to_ids(end_of_turn(tok))
    greedy = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                              pad_token_id=tok.pad_token_id, bos_token_id=model.config.bos_token_id)
    prompts = [render_prompt(tok, t) for t in texts]
    # Longest first: batches hold prompts of similar length, so little padding is computed.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list[dict[str, Any]] = [{}] * len(prompts)
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
            idx = order[start : start + batch_size]
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**enc.to(model.device), generation_config=greedy).cpu()
            for row, i in enumerate(idx):
                ids = out[row, enc["input_ids"].shape[1] :].tolist()
                stopped = eos in ids
                if stopped:
                    ids = ids[: ids.index(eos)]
                ids = [t for t in ids if t != tok.pad_token_id]
                # A character whose bytes the answer did not finish decodes as U+FFFD; vLLM's streaming
                # detokenizer holds such bytes back and never sends them, so served answers end before it.
                answer = tok.decode(ids, skip_special_tokens=True).rstrip("\ufffd")
                results[i] = {"answer": answer, "stopped": stopped, "tokens": len(ids)}
    return results


def vllm_greedy(model_dir, texts: list[str], max_new_tokens: int, dtype: str, max_model_len: int,
                desc: str = "generate", enforce_format: bool = False) -> list[dict[str, Any]]:
    """The same answers as `greedy_generate`'s, from vLLM's offline engine: what `relsft serve` answers
    (same engine, weights, dtype and chat template). Needs vLLM (`serve-cpu` / `serve-gpu` extra).
    With `enforce_format`, decoding is held to the answer format (`relations.ANSWER_REGEX`, vLLM's
    structured outputs), as a client of `relsft serve` asks with `Endpoint.enforce_format`."""
    import gc
    import os

    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from .chat import chat_template_kwargs
    from .relations import ANSWER_REGEX, user_messages

    if inference_device() == "cpu":  # unset, vLLM reserves ~90% of RAM for its KV cache
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        if len(os.sched_getaffinity(0)) <= 2:
            # vLLM keeps a core off the model for its scheduler, which offline is nearly idle: on 2 cores
            # the model's threads on both decode the same answers 1.9x faster (docs/experiments.md).
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    limit = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8")).get("max_position_embeddings")
    llm = LLM(model=str(model_dir), dtype=dtype, max_model_len=min(max_model_len, limit or max_model_len), seed=0)
    try:
        structured = StructuredOutputsParams(regex=ANSWER_REGEX) if enforce_format else None
        greedy = SamplingParams(temperature=0, max_tokens=max_new_tokens, structured_outputs=structured)
        outputs = llm.chat([user_messages(t) for t in texts], greedy,
                           chat_template_kwargs=chat_template_kwargs(model_dir) or None, use_tqdm=True)
    finally:
        engine_core = getattr(llm.llm_engine, "engine_core", None)
        if hasattr(engine_core, "shutdown"):  # free the engine's memory before the next model loads
            engine_core.shutdown()
        del llm
        gc.collect()
    results = []
    for out in outputs:
        answer = out.outputs[0]
        # As the server's streaming detokenizer: bytes of an unfinished character are never sent.
        results.append({"answer": answer.text.rstrip("\ufffd"), "stopped": answer.finish_reason == "stop",
                        "tokens": len(answer.token_ids)})
    print(f"{desc}: {len(texts)} answers from vLLM ({dtype}{', answer format enforced' if enforce_format else ''})")
    return results
