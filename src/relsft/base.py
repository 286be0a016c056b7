"""Stage `base`: the base model every later stage starts from.

`model.base: builtin` builds the embedded default offline and deterministically: a byte-level
BPE tokenizer trained here with `tokenizers` on the project's own fixed text, and a small
Qwen2 causal LM whose weights are random except for a copying circuit written into them
(`circuit.py`): fine-tuning learns the task, not the mechanism for copying unseen names.
Any other value (a hub id such as `Qwen/Qwen2.5-0.5B-Instruct`, or a local directory) is loaded
with the Auto classes and saved, so that every later stage reads one local directory whatever
the source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .circuit import install_copy_circuit
from .io import atomic_dir
from .rawdata import load_raw
from .relations import INSTRUCTION

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# ChatML, as Qwen2 uses it, without a default system prompt (every token costs on CPU).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Qwen2's own pre-tokenizer pattern. transformers rebuilds any `model_type: qwen2` tokenizer with it
# on load, so the trainer must see the same pieces or the saved merges would not round-trip.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Training additionally isolates every CJK character, so no merge ever spans two characters: a
# character encodes the same way whatever surrounds it, and a name is copied token for token.
HAN_PATTERN = r"\p{Han}"


def train_tokenizer(corpus: list[str], vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(HAN_PATTERN), behavior="isolated"),
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        additional_special_tokens=["<|im_start|>"],
        model_max_length=2048,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tokenizer_corpus(data_dir: str | Path) -> list[str]:
    """The project's fixed text plus its character inventory: every common character becomes one
    token (a name is copied character by character); anything else falls back to bytes."""
    raw = load_raw(data_dir)
    rel_lines = [f"-:{r}" for r in raw.relations]
    chars = "".join(raw.given_chars) + "".join(raw.surnames)
    return [*raw.fixed_text().splitlines(), INSTRUCTION, "system", "user", "assistant", *rel_lines, chars]


def build_builtin(data_dir: str | Path, cfg: dict[str, Any]):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = train_tokenizer(tokenizer_corpus(data_dir), cfg["vocab_size"])
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


def load_pretrained(name_or_path: str, dtype: str = "auto"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.chat_template is None:
        tok.chat_template = CHAT_TEMPLATE
    return model, tok


def build_base(params: dict[str, Any], out_dir: str | Path) -> Path:
    cfg = params["base"]
    if cfg["model"] == "builtin":
        model, tok = build_builtin(params["data"]["dir"], cfg["builtin"])
    else:
        model, tok = load_pretrained(cfg["model"], cfg.get("dtype", "auto"))
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    n = sum(p.numel() for p in model.parameters())
    print(f"base model {cfg['model']}: {n / 1e6:.2f}M parameters, vocab {len(tok)} -> {out_dir}")
    return Path(out_dir)
