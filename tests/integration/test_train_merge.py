"""format, train and merge on the real embedded model: loss masking, resume after a kill, parity."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from relsft.base import build_base
from relsft.formatting import format_dataset
from relsft.synthetic.passages import generate


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_params, raw_data_dir) -> Path:
    """A directory laid out as the pipeline leaves it after `format`."""
    d = tmp_path_factory.mktemp("work")
    params = dict(tiny_params, data={"dir": str(raw_data_dir)})
    (d / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    build_base(params, d / "models/base")
    generate(raw_data_dir, d / "datasets", params["generate"])
    format_dataset(d / "models/base", d / "datasets", d / "formatted", params["format"])
    return d


def test_loss_is_on_the_answer_and_its_end_of_turn_only(workdir, tiny_params):
    from relsft.train import build_trainer

    cfg = dict(tiny_params["train"], max_length=tiny_params["format"]["max_length"])
    trainer = build_trainer(workdir / "models/base", workdir / "formatted", cfg, workdir / "ckpt-probe")
    tok = trainer.processing_class
    example = trainer.train_dataset[0]
    batch = trainer.data_collator([example])
    labels = batch["labels"][0]
    trained = tok.decode([t for t, lab in zip(batch["input_ids"][0].tolist(), labels.tolist()) if lab != -100])
    import json

    first = json.loads((workdir / "formatted/train.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert trained == first["completion"] and trained.endswith("<|im_end|>")
    assert first["prompt"].endswith("<|im_start|>assistant\n")
    assert (labels == -100).sum() == len(tok(first["prompt"], add_special_tokens=False)["input_ids"])


def test_a_bf16_base_trains_float32_adapters_to_the_same_loss(workdir, tiny_params):
    """train.base_dtype: bfloat16 holds the frozen base in bf16 under bf16 autocast; the adapters the
    optimizer steps stay float32, and the loss is autocast's over a float32 base within bf16's rounding."""
    import torch

    from relsft.train import build_trainer

    losses = {}
    for dtype in ("float32", "bfloat16"):
        cfg = dict(tiny_params["train"], max_length=tiny_params["format"]["max_length"], precision="bf16",
                   base_dtype=dtype)
        trainer = build_trainer(workdir / "models/base", workdir / "formatted", cfg, workdir / f"ckpt-{dtype}")
        frozen = {p.dtype for p in trainer.model.parameters() if not p.requires_grad}
        trained = [p for p in trainer.model.parameters() if p.requires_grad]
        assert frozen == {getattr(torch, dtype)} and trained and {p.dtype for p in trained} == {torch.float32}
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
        with trainer.autocast_smart_context_manager():
            loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained)
        losses[dtype] = loss.item()
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=0.02), losses


def test_scoring_only_the_answer_positions_leaves_loss_and_gradients_unchanged(workdir, tiny_params):
    """The train stage makes TRL's fused LM head skip the prompt positions on CPU (train.py): a pure
    speed-up, so the loss and every LoRA gradient must equal those of TRL's all-position path."""
    import torch
    import trl.trainer.utils as trl_utils

    from relsft.train import build_trainer, score_only_completion_tokens_on_cpu

    cfg = dict(tiny_params["train"], max_length=tiny_params["format"]["max_length"])
    trainer = build_trainer(workdir / "models/base", workdir / "formatted", cfg, workdir / "ckpt-compact")
    assert trl_utils._use_triton(torch.device("cpu"))  # the stage switched the compact path on
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    assert (batch["labels"] == -100).float().mean() > 0.5  # mostly prompt: the case the speed-up is for

    def loss_and_grads():
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        return loss.detach(), grads

    compact_loss, compact_grads = loss_and_grads()
    score_only_completion_tokens_on_cpu(enabled=False)  # TRL's own CPU path: every position scored
    try:
        assert not trl_utils._use_triton(torch.device("cpu"))
        full_loss, full_grads = loss_and_grads()
    finally:
        score_only_completion_tokens_on_cpu()
    assert torch.allclose(compact_loss, full_loss, rtol=1e-5, atol=1e-6)
    assert compact_grads.keys() == full_grads.keys() and len(full_grads) > 0
    assert any(g.abs().sum() > 0 for g in full_grads.values())  # LoRA's B gets a real gradient
    for name, g in full_grads.items():
        assert torch.allclose(compact_grads[name], g, rtol=1e-4, atol=1e-6), name


# No dvc.yaml in the work directory: the stage module takes the paths dvc.yaml would pass.
TRAIN = ["--base", "models/base", "--formatted", "formatted", "--out", "models/adapter", "--live", "reports/training"]


def train_stage(args, cwd, **kw):
    return subprocess.Popen([sys.executable, "-m", "relsft.stages.train", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def steps_into_second_epoch(workdir: Path, cfg: dict, multiple: int) -> int:
    """A step count 10+ batches past one pass over the workdir's train split (composed passages and the
    annotated ones), rounded up to a multiple of `multiple` (the logging or saving interval)."""
    rows = (workdir / "formatted/train.jsonl").read_text(encoding="utf-8").splitlines()
    steps = -(-len(rows) // cfg["sft"]["per_device_train_batch_size"]) + 10
    return steps + -steps % multiple


def test_evaluating_more_often_does_not_change_what_training_sees(workdir, tiny_params):
    """The losses into the second epoch are identical whatever `eval_steps` is (relsft/sampling.py)."""
    from relsft.train import build_trainer

    cfg = dict(tiny_params["train"], max_length=tiny_params["format"]["max_length"])
    steps = steps_into_second_epoch(workdir, cfg, 5)
    curves, evaluations = {}, {}
    for every in (5, 30):
        trainer = build_trainer(workdir / "models/base", workdir / "formatted", cfg, workdir / f"order-{every}",
                                max_steps=steps, eval_steps=every, save_strategy="no", logging_steps=5,
                                disable_tqdm=True)
        assert len(trainer.train_dataset) // cfg["sft"]["per_device_train_batch_size"] < steps  # the run crosses an epoch boundary
        trainer.train()
        curves[every] = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
        evaluations[every] = sum(1 for e in trainer.state.log_history if "eval_loss" in e)
    assert len(curves[5]) == steps // 5 and evaluations[5] > evaluations[30]
    assert curves[5] == curves[30]


def test_a_killed_training_run_resumes_from_its_checkpoint(workdir):
    params = yaml.safe_load((workdir / "params.yaml").read_text(encoding="utf-8"))
    steps = steps_into_second_epoch(workdir, params["train"], 10)
    params["train"]["sft"].update(max_steps=steps, save_steps=10, eval_steps=20)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    ckpts = workdir / "checkpoints"
    shutil.rmtree(ckpts, ignore_errors=True)
    proc = train_stage(TRAIN, workdir)
    deadline = time.time() + 300
    while not list(ckpts.glob("*/checkpoint-*/trainer_state.json")):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() else "timeout"
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (workdir / "models/adapter").exists()  # killed before the end: nothing half-written
    done = train_stage(TRAIN, workdir)
    out, _ = done.communicate(timeout=600)
    assert done.returncode == 0, out
    assert "resuming from" in out and "checkpoint-" in out
    import json

    summary = json.loads((workdir / "reports/training/metrics.json").read_text())
    assert summary["steps"] == steps
    assert (workdir / "models/adapter/adapter_model.safetensors").exists()
    # ... and it continues as if it had never been killed: same batches, same losses.
    resumed = (workdir / "reports/training/plots/metrics/train/loss.tsv").read_text()
    shutil.rmtree(ckpts)
    fresh = train_stage(TRAIN, workdir)
    out, _ = fresh.communicate(timeout=600)
    assert fresh.returncode == 0 and "resuming from" not in out, out
    assert (workdir / "reports/training/plots/metrics/train/loss.tsv").read_text() == resumed


def test_merge_fails_loudly_when_the_merge_changes_answers(workdir, monkeypatch, tiny_params):
    """Break the merge on purpose (drop the adapter instead of folding it in): parity must catch it."""
    from peft.tuners.tuners_utils import BaseTuner

    from relsft.merge import MergeParityError, merge

    adapter = workdir / "models/adapter"
    if not adapter.exists():  # when run on its own, without the resume test before it
        out, _ = train_stage(TRAIN, workdir).communicate(timeout=600)
        assert adapter.exists(), out
    # PeftModel forwards merge_and_unload to its tuner (BaseTuner); break it there: hand back the
    # base weights as if nothing had been trained (`unload()` would keep the trained embeddings).
    def drop_the_training(self, *args, **kwargs):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(workdir / "models/base")

    monkeypatch.setattr(BaseTuner, "merge_and_unload", drop_the_training)
    out = workdir / "models/merged-broken"
    with pytest.raises(MergeParityError, match="differs from base\\+adapter"):
        merge(workdir / "models/base", adapter, workdir / "datasets", out,
              dict(tiny_params["merge"], max_new_tokens=tiny_params["evaluate"]["max_new_tokens"]))
    assert not out.exists()
