"""Pretrained base models, offline: hub-like Qwen directories (real Qwen3 tokenizer, tiny weights) through
the whole tiny pipeline, a GGUF file, and multi-process training under `accelerate launch`. What the base
stage does with them without training is tests/unit/test_pretrained_base.py.

Each hub-like model runs the whole tiny pipeline through `base.model: <dir>`, is taught one-relation
answers a little more (as the serving tests teach theirs) and is served by a real vLLM on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from helpers import deep_update, make_project, run
from qwen_like import IM_END, pretrained_params, qwen3_base_like, qwen25_instruct_like, write_gguf
from taught import teach_one_relation
from relsft.chat import SAMPLING_KEYS, render_prompt
from relsft.client import RelationClient
from relsft.relations import user_messages
from relsft.serve import ServeSettings, VLLMServer, free_port, vllm_command

EXPORT = "export/relsft-model"
API_KEY = "test-key-pretrained"
FIXTURES = {"qwen3-base-like": qwen3_base_like, "qwen2.5-instruct-like": qwen25_instruct_like}


@pytest.fixture(scope="module", params=list(FIXTURES))
def hub_like(request, tmp_path_factory) -> tuple[str, Path]:
    name = request.param
    return name, FIXTURES[name](tmp_path_factory.mktemp(name) / "model")


@pytest.fixture(scope="module")
def pretrained_project(hub_like, tiny_params, tmp_path_factory) -> Path:
    name, model_dir = hub_like
    proj = make_project(tmp_path_factory.mktemp(f"{name}-pipeline") / "proj",
                        pretrained_params(tiny_params, str(model_dir)))
    run(["dvc", "repro"], proj, timeout=1800)
    return proj


def test_base_stage_makes_end_of_turn_the_eos_and_decoding_greedy(pretrained_project):
    from transformers import AutoConfig, AutoTokenizer

    base = pretrained_project / "models/base"
    tok = AutoTokenizer.from_pretrained(base)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert AutoConfig.from_pretrained(base).eos_token_id == IM_END
    generation = json.loads((base / "generation_config.json").read_text())
    assert generation["eos_token_id"] == IM_END and not set(generation) & set(SAMPLING_KEYS)
    prompt = render_prompt(tok, "韩立与紫灵是师徒关系。")
    assert prompt == "<|im_start|>user\n从以下小说内容中提取人物关系:韩立与紫灵是师徒关系。<|im_end|>\n<|im_start|>assistant\n"
    provenance = json.loads((base / "relsft_base.json").read_text())
    assert provenance["source"] == "directory" and provenance["end_of_turn"] == "<|im_end|>"


def test_formatted_completion_is_the_answer_and_end_of_turn(pretrained_project):
    gold = {json.loads(line)["id"]: json.loads(line)["output"]
            for line in (pretrained_project / "datasets/train.jsonl").read_text(encoding="utf-8").splitlines()}
    records = [json.loads(line) for line in (pretrained_project / "formatted/train.jsonl").read_text().splitlines()]
    assert records and all(r["completion"] == gold[r["id"]] + "<|im_end|>" for r in records)
    assert all("<think>" not in r["prompt"] + r["completion"] for r in records)


def test_exported_model_stops_at_end_of_turn_and_sets_no_sampling(pretrained_project):
    export = pretrained_project / EXPORT
    generation = json.loads((export / "generation_config.json").read_text())
    assert generation["eos_token_id"] == IM_END and not set(generation) & set(SAMPLING_KEYS)
    assert json.loads((export / "config.json").read_text())["eos_token_id"] == IM_END
    metrics = json.loads((pretrained_project / "metrics/eval.json").read_text())
    assert set(metrics["finetuned"]) == {"test", "test_ood", "gold"}
    assert "--default-chat-template-kwargs" not in vllm_command(ServeSettings(model=str(export)))


@pytest.fixture(scope="module")
def taught(pretrained_project, tiny_params, tmp_path_factory) -> Path:
    params = pretrained_params(tiny_params, "unused")
    return teach_one_relation(pretrained_project / EXPORT, pretrained_project / "data", params,
                              tmp_path_factory.mktemp("taught"), steps=300)


def test_served_answers_stop_without_think_and_equal_inprocess(taught, tiny_params, tmp_path):
    from relsft.decoding import greedy_generate, load_for_inference

    texts = [json.loads(line)["text"] for line in (taught.parent / "datasets/test.jsonl").read_text().splitlines()][:16]
    model, tok = load_for_inference(taught)
    expected = greedy_generate(model, tok, texts, tiny_params["evaluate"]["max_new_tokens"], 16)
    assert sum(r["stopped"] for r in expected) >= len(texts) // 2  # it was taught to stop
    settings = ServeSettings.from_params(tiny_params, model=str(taught), port=free_port(), enforce_eager=True)
    with VLLMServer(settings, api_key=API_KEY, log_path=tmp_path / "vllm.log") as server:
        client = RelationClient(server.base_url, api_key=API_KEY, max_tokens=tiny_params["evaluate"]["max_new_tokens"])
        served = [client.stream_extract(t) for t in texts]
        # The prompt vLLM renders for a request is, token for token, the one the model was trained on.
        for text in texts[:4]:
            r = httpx.post(f"http://127.0.0.1:{settings.port}/tokenize", timeout=30,
                           headers={"Authorization": f"Bearer {API_KEY}"},
                           json={"model": "relsft", "messages": user_messages(text), "add_generation_prompt": True})
            assert r.json()["tokens"] == tok(render_prompt(tok, text), add_special_tokens=False)["input_ids"]
    assert [s.answer for s in served] == [e["answer"] for e in expected]
    assert all(s.finish_reason == ("stop" if e["stopped"] else "length") for s, e in zip(served, expected))
    assert all("<think>" not in s.answer for s in served)


def test_a_gguf_file_loads_as_the_base(tmp_path, tiny_params):
    """A GGUF written as llama.cpp writes one (float32 tensors) converts into the same model and tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from relsft.base import build_base

    hf = qwen25_instruct_like(tmp_path / "hf")
    gguf_file = write_gguf(hf, tmp_path / "qwen2-tiny-f32.gguf")
    out = build_base(pretrained_params(tiny_params, str(gguf_file)), tmp_path / "base")
    original, converted = AutoModelForCausalLM.from_pretrained(hf), AutoModelForCausalLM.from_pretrained(out)
    ids = AutoTokenizer.from_pretrained(hf)("韩立与紫灵是师徒关系。萧炎是林清的好友。", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(original(ids).logits, converted(ids).logits)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok("陆青青与慕容复是同门。")["input_ids"] == AutoTokenizer.from_pretrained(hf)("陆青青与慕容复是同门。")["input_ids"]
    assert tok.eos_token == "<|im_end|>"
    provenance = json.loads((out / "relsft_base.json").read_text())
    assert provenance["source"] == "gguf" and len(provenance["sha256"]) == 64
    # a plain float model: the trainer refuses one whose config still names the GGUF quantization
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert getattr(converted, "hf_quantizer", None) is None


def test_accelerate_two_processes_train_one_valid_adapter(tmp_path, tiny_params, raw_data_dir):
    """Two data-parallel processes (gloo on CPU) train one adapter, written once by the main process.

    `accelerate launch --multi_gpu` is accelerate's torchrun launcher, which also runs on CPUs (the
    train stage then asks for gloo); `accelerate launch --cpu --num_processes 2` starts a single
    process unless given an MPI hostfile (accelerate 1.15), so it would test nothing here."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from relsft.base import build_base
    from relsft.formatting import format_dataset
    from relsft.synthetic.passages import generate

    params = deep_update(json.loads(json.dumps(tiny_params)), {
        "data": {"dir": str(raw_data_dir)},
        "train": {"sft": {"max_steps": 6, "eval_steps": 3, "save_steps": 3}, "num_threads": 1}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    build_base(params, tmp_path / "models/base")
    generate(raw_data_dir, tmp_path / "datasets", params["generate"])
    format_dataset(tmp_path / "models/base", tmp_path / "datasets", tmp_path / "formatted", params["format"])
    launcher = Path(sys.executable).parent / "accelerate"
    proc = subprocess.run([str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "relsft.stages.train", "--base",
                           "models/base", "--formatted", "formatted", "--out", "models/adapter", "--live", "reports/training"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES=""))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    # two ranks, one group; the recipe's train.precision (fp32) on the CPU, whatever its bf16 support
    assert len(re.findall(r"^train: fp32 on CPU( with native bf16)?, 2 process\(es\)$", proc.stdout, re.M)) == 2, \
        proc.stdout[-2000:]
    siblings = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert siblings == ["adapter", "base"]  # one adapter, no half-renamed copy of a second writer
    summary = json.loads((tmp_path / "reports/training/metrics.json").read_text())
    assert summary["steps"] == 6
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "models/base"),
                                      tmp_path / "models/adapter")
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())
