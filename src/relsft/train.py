"""Stage `train`: TRL `SFTTrainer` + PEFT LoRA on the formatted prompt/completion records.

Checkpoints go to `<checkpoint_dir>/<run key>/`, where the key hashes the base model, the data
and the train params: a killed run started again with the same inputs resumes from its last
checkpoint (`train.resume: true`), and a changed config never resumes from a stale one. The
same code runs on GPU and on several GPUs with `accelerate launch -m relsft.cli train`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from .files import atomic_dir


def run_key(base_dir: Path, formatted_dir: Path, cfg: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
    for f in sorted([*base_dir.glob("*.json"), *base_dir.glob("*.safetensors"), *formatted_dir.glob("*.jsonl")]):
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:12]


def last_checkpoint(run_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(run_dir)) if run_dir.is_dir() else None


# The Trainer's log keys worth a curve, as DVCLive names them (runtimes and throughputs differ every run).
LOGGED = {"loss": "train/loss", "eval_loss": "eval/loss", "learning_rate": "train/learning_rate",
          "grad_norm": "train/grad_norm"}


def dvclive_callback(live_dir: Path):
    """transformers' DVCLiveCallback, logging at the optimizer step and resume-safe.

    The stock callback counts one DVCLive step per log call (train and eval logs interleave, so the
    x axis is not the training step) and a resumed run starts its curves empty. Here each log
    is written at `state.global_step`, and a resumed run first replays the history restored from
    its checkpoint, so a resumed run's curves equal an uninterrupted run's. Nothing here draws
    random numbers: training is the same with or without it.
    """
    from dvclive import Live
    from transformers.integrations import DVCLiveCallback

    class StepDVCLiveCallback(DVCLiveCallback):
        def setup(self, args, state, model):
            self._initialized = True
            if state.is_world_process_zero:
                self.live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None)
                for entry in state.log_history:  # non-empty only when resuming
                    self._log(entry, entry["step"])

        def _log(self, logs, step):
            self.live.step = step
            for key, value in logs.items():
                if key in LOGGED:
                    self.live.log_metric(LOGGED[key], value)
            self.live.make_summary()

        def on_log(self, args, state, control, model=None, logs=None, **kwargs):
            if not self._initialized:
                self.setup(args, state, model)
            if state.is_world_process_zero:
                self._log(logs, state.global_step)

    return StepDVCLiveCallback(log_model=False)


# SFTConfig fields the stage derives; a recipe sets `train.precision` instead, and the stage owns its paths.
DERIVED = {"output_dir", "bf16", "fp16", "use_cpu", "max_length", "report_to"}


def cpu_has_native_bf16() -> bool:
    """AVX512_BF16 or AMX: bf16 matrix work in hardware (on other CPUs autocast is slower than fp32)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def mixed_precision(precision: str) -> tuple[dict[str, bool], str]:
    """`train.precision` -> SFTConfig's bf16/fp16/use_cpu and the line the log says. auto: bf16 autocast
    on a GPU or CPU with native bf16, fp16 on an older GPU, else fp32."""
    import torch

    gpu = torch.cuda.is_available()
    if precision == "auto":
        if gpu:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if cpu_has_native_bf16() else "fp32"
    if precision not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"train.precision must be auto, bf16, fp16 or fp32, not {precision!r}")
    # On CPU the Trainer refuses bf16 unless told it runs on the CPU ("Your setup doesn't support bf16/gpu").
    cpu_bf16 = precision == "bf16" and not gpu
    args = {"bf16": precision == "bf16", "fp16": precision == "fp16"}
    args["use_cpu"] = not gpu and (cpu_bf16 or int(os.environ.get("WORLD_SIZE", "1")) > 1)
    device = torch.cuda.get_device_name() if gpu else "CPU" + (" with native bf16" if cpu_has_native_bf16() else "")
    said = {"bf16": "bf16 autocast", "fp16": "fp16 mixed precision", "fp32": "fp32"}[precision]
    return args, f"{said} on {device}"


def base_dtype(cfg: dict[str, Any]):
    """`train.base_dtype`: how the frozen base's weights are held while training. bfloat16 spares bf16
    autocast a cast of every weight in every forward (1.19x the examples/s of the 1.5B recipe on a
    CPU with AMX, bench/train_speed.py); the adapters stay float32 (PEFT upcasts them) but the
    residual stream is bf16 too. float32, the default, keeps it in float32. auto: bfloat16 where
    training runs in bf16, else float32."""
    import torch

    name, bf16 = cfg.get("base_dtype", "float32"), mixed_precision(cfg["precision"])[0]["bf16"]
    if name == "auto":
        name = "bfloat16" if bf16 else "float32"
    if name not in ("float32", "bfloat16"):
        raise ValueError(f"train.base_dtype must be auto, float32 or bfloat16, not {name!r}")
    if name == "bfloat16" and not bf16:
        raise ValueError("train.base_dtype: bfloat16 needs bf16 training (train.precision: bf16, or auto on a GPU "
                         "or a CPU with native bf16); set it to auto or float32")
    return getattr(torch, name)


def sft_config(cfg: dict[str, Any], output_dir: Path, **overrides: Any):
    """The recipe's `train.sft` as trl.SFTConfig keyword arguments, plus what the stage derives."""
    import dataclasses

    from trl import SFTConfig

    known = {f.name for f in dataclasses.fields(SFTConfig)}
    for key in cfg["sft"]:
        if key not in known:
            raise ValueError(f"train.sft.{key}: not a field of trl.SFTConfig")
        if key in DERIVED:
            raise ValueError(f"train.sft.{key}: set by the stage (train.precision, format.max_length, dvc.yaml)")
    precision, _ = mixed_precision(cfg["precision"])
    args = dict(cfg["sft"], output_dir=str(output_dir), max_length=cfg["max_length"], report_to=[], **precision)
    args.update(overrides)
    return SFTConfig(**args)


def lora_config(lora: dict[str, Any]):
    """The recipe's `train.lora` as peft.LoraConfig keyword arguments."""
    import dataclasses

    from peft import LoraConfig

    known = {f.name for f in dataclasses.fields(LoraConfig)}
    if unknown := sorted(set(lora) - known):
        raise ValueError(f"train.lora.{unknown[0]}: not a field of peft.LoraConfig")
    # Trained embeddings stay tied to the output layer (the builtin base ties them).
    return LoraConfig(task_type="CAUSAL_LM", **{"ensure_weight_tying": bool(lora.get("modules_to_save")), **lora})


def score_only_completion_tokens_on_cpu(enabled: bool = True) -> None:
    """TRL's fused LM head scores only the positions that carry a label on CUDA/XPU, but every position
    elsewhere, to keep tile shapes static for compilers such as Neuron's. Eager CPU compiles nothing, and
    with completion-only loss ~80% of the positions are prompt: scoring just the labelled ones gives the
    identical loss and gradients (tests/test_train_merge.py checks it) at about half the step time.
    `enabled=False` restores TRL's own choice (bench/train_speed.py measures both)."""
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils._use_triton, "trl_original", trl_utils._use_triton)
    if not enabled:
        trl_utils._use_triton = original
        return

    def compact(device) -> bool:
        return device.type == "cpu" or original(device)

    compact.trl_original = original
    trl_utils._use_triton = compact


def build_trainer(base_dir: Path, formatted_dir: Path, cfg: dict[str, Any], run_dir: Path, data_collator=None,
                  **overrides: Any):
    """The SFTTrainer of the train stage; `overrides` change SFTConfig fields (the benchmark uses them)."""
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .sampling import SeededOrderSFTTrainer

    score_only_completion_tokens_on_cpu()
    if cfg.get("num_threads"):
        torch.set_num_threads(cfg["num_threads"])
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=base_dtype(cfg))
    data = load_dataset("json", data_files={s: str(formatted_dir / f"{s}.jsonl") for s in ("train", "val")})
    data = data.remove_columns("id")
    return SeededOrderSFTTrainer(
        model=model,
        args=sft_config(cfg, run_dir, **overrides),
        train_dataset=data["train"],
        eval_dataset=data["val"],
        processing_class=tok,
        peft_config=lora_config(cfg["lora"]),
        data_collator=data_collator,
    )


def train(base_dir: str | Path, formatted_dir: str | Path, out_dir: str | Path, live_dir: str | Path,
          cfg: dict[str, Any]) -> dict[str, Any]:
    """Train; the adapter goes to `out_dir`, DVCLive's metrics and curves to `live_dir` (both only on success)."""
    base_dir, formatted_dir = Path(base_dir), Path(formatted_dir)
    run_dir = Path(cfg["checkpoint_dir"]) / run_key(base_dir, formatted_dir, cfg)
    trainer = build_trainer(base_dir, formatted_dir, cfg, run_dir)
    # DVCLive writes beside the checkpoints while training runs; the stage's copy is replaced at the end.
    callback = dvclive_callback(run_dir / "dvclive")
    trainer.add_callback(callback)
    tok = trainer.processing_class
    resume = last_checkpoint(run_dir) if cfg["resume"] else None
    if resume:
        print(f"resuming from {resume}")
    print(f"train: {mixed_precision(cfg['precision'])[1]}, {trainer.accelerator.num_processes} process(es)")
    result = trainer.train(resume_from_checkpoint=resume)
    summary = {
        "steps": trainer.state.global_step,
        "train_loss": round(result.training_loss, 6),
        "final_eval_loss": next((round(e["eval_loss"], 6) for e in reversed(trainer.state.log_history)
                                 if "eval_loss" in e), None),
        "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 2),
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "run_key": run_dir.name,
    }
    # Under `accelerate launch` / torchrun every process gets here; one writes (two renaming into
    # models/adapter race). DVCLive's `live` exists on the main process only.
    if trainer.is_world_process_zero():
        with atomic_dir(out_dir) as tmp:
            trainer.model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
        callback.live.summary.update(summary)
        callback.live.make_summary()
        with atomic_dir(live_dir) as tmp:
            shutil.copytree(callback.live.dir, tmp, dirs_exist_ok=True)
    trainer.accelerator.wait_for_everyone()
    return summary
