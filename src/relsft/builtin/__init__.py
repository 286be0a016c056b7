"""The builtin base model: built offline and deterministically, the project's fully offline recipe and
the tests' model. A byte-level BPE tokenizer trained on the project's own text (`tokenizer.py`) and a
small Qwen2 causal LM whose weights are random except for a copying circuit written into them
(`circuit.py`): fine-tuning learns the task, not the mechanism for copying unseen names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..synthetic.inputs import load_raw
from .circuit import install_copy_circuit
from .tokenizer import check_ood_wording, tokenizer_corpus, train_tokenizer


def build_builtin(data_dir: str | Path, cfg: dict[str, Any]):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    raw = load_raw(data_dir)
    check_ood_wording(raw)
    tok = train_tokenizer(tokenizer_corpus(raw), cfg["vocab_size"])
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_layers"],
        num_attention_heads=cfg["num_heads"],
        num_key_value_heads=cfg["num_kv_heads"],
        max_position_embeddings=cfg["max_position_embeddings"],
        rope_theta=float(cfg["rope_theta"]),
        initializer_range=cfg["initializer_range"],
        tie_word_embeddings=not cfg["copy_circuit"],
        bos_token_id=None,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(cfg["seed"])
    model = Qwen2ForCausalLM(config)
    if cfg["copy_circuit"]:
        install_copy_circuit(model, cfg["seed"], cfg["free_write"])
    return model, tok
