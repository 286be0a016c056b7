"""base: the embedded default model and its tokenizer, as reloaded from disk."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

from relsft.base import build_base


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tiny_params, raw_data_dir):
    params = dict(tiny_params, data={"dir": str(raw_data_dir)})
    return build_base(params, tmp_path_factory.mktemp("base") / "base")


def test_build_is_deterministic_across_thread_counts_and_instruction_sets(base_dir, tiny_params, raw_data_dir,
                                                                         tmp_path):
    """One thread and AVX2-only MKL/oneDNN kernels, as on another machine, build the same bytes
    (a float32 QR gave 1-ulp differences in layer 1's q/k weights)."""
    params = dict(tiny_params, data={"dir": str(raw_data_dir)})
    code = "import json, sys; from relsft.base import build_base; build_base(json.loads(sys.argv[1]), sys.argv[2])"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_ENABLE_INSTRUCTIONS="AVX2", ONEDNN_MAX_CPU_ISA="AVX2")
    subprocess.run([sys.executable, "-c", code, json.dumps(params), str(tmp_path / "base")], env=env, check=True)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (tmp_path / "base" / name).read_bytes() == (base_dir / name).read_bytes(), name


def test_reloaded_tokenizer_is_lossless_on_any_chinese_text(base_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    rng = random.Random(0)
    # Common, rare (CJK extension A/B) and non-Chinese characters, none of them special.
    samples = ["韩立与紫灵是师徒关系。 萧炎是林清的好友。", "龘靐齉爨 𠀀𠀁 𪚥", "hello 123 ABC\n\t!?",
               "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(300)),
               "".join(chr(rng.randint(0x20000, 0x2A6DF)) for _ in range(50))]
    for text in samples:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text


def test_common_characters_are_single_tokens_and_specials_are_atomic(base_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    for ch in "韩立紫灵萧炎林清":
        assert len(tok(ch, add_special_tokens=False)["input_ids"]) == 1, ch
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1
    assert tok.eos_token == "<|im_end|>"


def test_chat_template_is_chatml(base_dir):
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    text = tok.apply_chat_template([{"role": "user", "content": "你好"}], add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
    config = AutoConfig.from_pretrained(base_dir)
    assert config.model_type == "qwen2" and config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")


def test_untrained_base_copies_unseen_names_through_its_circuit(base_dir, tiny_params, raw_data_dir):
    """The builtin base, before any training, continues a repeated passage by copying: on every
    position whose token has one successor in the first copy, including names made of held-out
    (test_ood) characters, it predicts that successor."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from relsft.synthetic.passages import Generator
    from relsft.synthetic.inputs import load_raw

    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    # Long passages (2-4 relations, distractors likely), so each one holds many positions to copy.
    gen = Generator(load_raw(raw_data_dir), dict(tiny_params["generate"], relation_weights=[0, 0, 1, 1, 1],
                                                 distractor_weights=[1, 1, 1]))
    hits = total = 0
    for i in range(20):
        text = gen.example(random.Random(i), "ood")["text"]
        first = tok(text + "\n", add_special_tokens=False)["input_ids"]
        ids = first + tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            pred = model(torch.tensor([ids])).logits[0].argmax(-1).tolist()
        for pos in range(len(first), len(ids) - 1):
            successors = {first[j + 1] for j in range(len(first) - 1) if first[j] == ids[pos]}
            if len(successors) == 1:
                total += 1
                hits += pred[pos] == ids[pos + 1]
    assert total > 300
    assert hits / total >= 0.95, f"copied {hits}/{total}"


@pytest.mark.parametrize("free_write", [0.0, 0.002])
def test_free_heads_get_gradient_from_the_first_step_only_when_they_write(tiny_params, raw_data_dir, free_write):
    """LoRA starts with B = 0, so a head whose output projection is zero passes no gradient to its
    query and key adapters; `free_write` gives the free heads (not the circuit's head 0) a faint
    write, and with it a gradient on step one."""
    import torch
    from peft import LoraConfig, get_peft_model

    from relsft.builtin import build_builtin

    cfg = dict(tiny_params["base"]["builtin"], free_write=free_write)
    model, tok = build_builtin(raw_data_dir, cfg)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    ids = tok("韩立与紫灵是师徒关系。韩立与紫灵", return_tensors="pt")["input_ids"]
    model(input_ids=ids, labels=ids).loss.backward()
    head_dim = cfg["hidden_size"] // cfg["num_heads"]
    for layer in model.base_model.model.model.layers:
        grad = layer.self_attn.q_proj.lora_B["default"].weight.grad
        free = grad[head_dim:].abs().sum().item()  # rows of heads 1.. (head 0 is the circuit's)
        assert (free > 0) == (free_write > 0), (free_write, free)
