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

from .io import atomic_dir


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


def mixed_precision(bf16_on_gpu: bool) -> tuple[dict[str, bool], str]:
    """bf16 autocast on a GPU that has it, else fp16; fp32 on CPU, where autocast is slow."""
    import torch

    if not torch.cuda.is_available():
        return {"bf16": False, "fp16": False}, "fp32 (CPU)"
    if bf16_on_gpu and torch.cuda.is_bf16_supported():
        return {"bf16": True, "fp16": False}, "bf16 mixed precision"
    why = "train.bf16_on_gpu is false" if not bf16_on_gpu else f"{torch.cuda.get_device_name()} has no bf16"
    return {"bf16": False, "fp16": True}, f"fp16 mixed precision ({why})"


def sft_config(cfg: dict[str, Any], output_dir: Path, **overrides: Any):
    import torch
    from trl import SFTConfig

    precision, _ = mixed_precision(cfg["bf16_on_gpu"])
    args = dict(
        output_dir=str(output_dir),
        max_steps=cfg["max_steps"],
        num_train_epochs=cfg["epochs"],
        per_device_train_batch_size=cfg["batch_size"],
        per_device_eval_batch_size=cfg["batch_size"],
        gradient_accumulation_steps=cfg["gradient_accumulation_steps"],
        learning_rate=cfg["learning_rate"],
        lr_scheduler_type=cfg["lr_scheduler"],
        warmup_steps=cfg["warmup_ratio"],  # a float < 1 is a ratio of the total steps
        weight_decay=cfg["weight_decay"],
        max_length=cfg["max_length"],
        # Packing flattens a batch into one row; that pays off only with varlen attention kernels
        # (flash-attention on GPU). On CPU, length-grouped batches waste less than packing costs.
        packing=cfg["packing"],
        packing_strategy="bfd",
        padding_free=cfg["packing"],
        train_sampling_strategy="random" if cfg["packing"] else "group_by_length",
        completion_only_loss=True,
        seed=cfg["seed"],
        data_seed=cfg["seed"],
        logging_steps=cfg["logging_steps"],
        eval_strategy="steps",
        eval_steps=cfg["eval_steps"],
        save_strategy="steps",
        save_steps=cfg["save_steps"],
        save_total_limit=2,
        # TRL defaults bf16 and checkpointing on even on CPU, where autocast is slow and checkpointing only costs time.
        **precision,
        # Several CPU processes (torchrun, `accelerate launch --multi_gpu` without a GPU): gloo data parallel;
        # set only then, so a single-process run is configured exactly as before.
        use_cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1,
        ddp_find_unused_parameters=False,  # LoRA: every adapter weight is used in every forward
        gradient_checkpointing=False,
        report_to=[],
        disable_tqdm=False,
        dataloader_num_workers=0,
    )
    args.update(overrides)
    return SFTConfig(**args)


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
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .sampling import SeededOrderSFTTrainer

    score_only_completion_tokens_on_cpu()
    if cfg.get("num_threads"):
        torch.set_num_threads(cfg["num_threads"])
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    data = load_dataset("json", data_files={s: str(formatted_dir / f"{s}.jsonl") for s in ("train", "val")})
    data = data.remove_columns("id")
    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=cfg["lora"]["r"],
        lora_alpha=cfg["lora"]["alpha"],
        lora_dropout=cfg["lora"]["dropout"],
        target_modules=cfg["lora"]["target_modules"],
        modules_to_save=cfg["lora"]["modules_to_save"] or None,
        ensure_weight_tying=bool(cfg["lora"]["modules_to_save"]),
    )
    return SeededOrderSFTTrainer(
        model=model,
        args=sft_config(cfg, run_dir, **overrides),
        train_dataset=data["train"],
        eval_dataset=data["val"],
        processing_class=tok,
        peft_config=lora,
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
    print(f"train: {mixed_precision(cfg['bf16_on_gpu'])[1]}, {trainer.accelerator.num_processes} process(es)")
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
