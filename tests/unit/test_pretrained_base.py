"""Pretrained base models through the base stage, without training: the hub-like Qwen fixtures as the hub ships
them, Qwen3's own template with thinking off, a hub id with no network, a missing directory or GGUF. The
whole pipeline on them (trained, served) is tests/integration/test_pretrained.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qwen_like import pretrained_params, qwen3_base_like, qwen25_instruct_like
from relsft.chat import end_of_turn, render_completion, render_prompt
from relsft.relations import user_messages
from relsft.serve import ServeSettings, vllm_command


def test_the_checkpoints_disagree_on_eos_and_sample_by_default(tmp_path):
    """What the base stage has to mend: the fixtures are as the hub ships them."""
    from transformers import AutoTokenizer

    base = qwen3_base_like(tmp_path / "q3")
    tok = AutoTokenizer.from_pretrained(base)
    assert tok.eos_token == "<|endoftext|>" and end_of_turn(tok) == "<|im_end|>"
    prompt = tok.apply_chat_template(user_messages("x"), add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template(user_messages("x") + [{"role": "assistant", "content": "a-b:师徒"}], tokenize=False)
    assert "<think>" in full[len(prompt):]  # Qwen3's template: the answer would be trained after a think block
    instruct = qwen25_instruct_like(tmp_path / "q25")
    assert "You are Qwen" in AutoTokenizer.from_pretrained(instruct).apply_chat_template(
        user_messages("x"), add_generation_prompt=True, tokenize=False)
    assert {"do_sample", "repetition_penalty"} <= set(json.loads((instruct / "generation_config.json").read_text()))


def test_qwen3_own_template_keeps_thinking_off_everywhere(tmp_path, tiny_params):
    """base.chat_template: model keeps Qwen3's template; format renders it with thinking off, and the
    server is told to render it so too."""
    from transformers import AutoTokenizer

    from relsft.base import build_base

    out = build_base(pretrained_params(tiny_params, str(qwen3_base_like(tmp_path / "q3")), chat_template="model"),
                     tmp_path / "base")
    tok = AutoTokenizer.from_pretrained(out)
    assert render_prompt(tok, "x").endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert render_completion(tok, "x", "甲-乙:师徒") == "甲-乙:师徒<|im_end|>"
    cmd = vllm_command(ServeSettings(model=str(out)))
    assert cmd[cmd.index("--default-chat-template-kwargs") + 1] == '{"enable_thinking": false}'


def _stage(name: str, args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"relsft.stages.{name}", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("offline", ["", "1"])
def test_hub_id_without_network_fails_in_one_clear_line(tmp_path, tiny_params, offline):
    params = pretrained_params(tiny_params, "Qwen/Qwen3-0.6B-Base", revision="main")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE=offline)
    proc = _stage("base", ["--data", "data", "--out", "models/base"], tmp_path, env)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert errors == [line for line in proc.stderr.splitlines() if line.startswith("stage base: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert "hf download Qwen/Qwen3-0.6B-Base --revision main" in errors[0]
    assert not (tmp_path / "models/base").exists()


def test_a_missing_local_model_or_gguf_is_named(tmp_path, tiny_params):
    from relsft.base import build_base

    for missing in (tmp_path / "nowhere.gguf", tmp_path / "no/such/dir"):
        with pytest.raises(FileNotFoundError, match=str(missing.name)):
            build_base(pretrained_params(tiny_params, str(missing)), tmp_path / "base")
