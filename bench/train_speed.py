"""Training throughput: relsft's train stage vs the naive SFT recipe, side by side in one run.

    python bench/train_speed.py [--steps 40] [--params params.yaml]

Both arms train the same base model (models/base) on the same formatted data (formatted/), with
the same LoRA config, batch size and learning rate, for the same number of steps:

- relsft:  the train stage's own SFTTrainer (dynamic padding in length-grouped batches,
           completion-only loss);
- naive:   every example padded to max_length, loss on every token, random batches;
- trl-cpu: the train stage's recipe with TRL's own CPU loss path, which scores every position
           (the stage scores only the answer positions, as TRL does on CUDA).

Throughput counts real (non-padding) tokens per second of training time; the ratios are
relsft / naive and relsft / trl-cpu. Run `dvc repro format` first (or the whole pipeline).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from relsft.params import load_params  # noqa: E402
from relsft.train import build_trainer, score_only_completion_tokens_on_cpu  # noqa: E402


class TokenCounter:
    """Wraps a collator and counts the non-padding tokens of every batch it builds."""

    def __init__(self, collator):
        self.collator, self.tokens = collator, 0

    def __call__(self, examples):
        batch = self.collator(examples)
        self.tokens += int(batch["attention_mask"].sum())
        return batch


class StepTimer(TrainerCallback):
    def __init__(self, warmup: int):
        self.warmup, self.start, self.tokens_at_start, self.counter = warmup, None, 0, None

    def on_step_begin(self, args, state, control, **kw):
        if state.global_step == self.warmup:
            self.start, self.tokens_at_start = time.perf_counter(), self.counter.tokens

    def on_train_end(self, args, state, control, **kw):
        self.seconds = time.perf_counter() - self.start
        self.timed_tokens = self.counter.tokens - self.tokens_at_start


def measure(cfg, steps: int, warmup: int, arm: str) -> dict:
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    overrides = dict(max_steps=steps, eval_strategy="no", save_strategy="no", logging_steps=10_000,
                     disable_tqdm=True)
    if arm == "naive":
        overrides.update(completion_only_loss=False, train_sampling_strategy="random",
                         pad_to_multiple_of=cfg["max_length"])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(Path("models/base"), Path("formatted"), cfg, Path(tmp), **overrides)
        score_only_completion_tokens_on_cpu(enabled=arm != "trl-cpu")
        counter = TokenCounter(trainer.data_collator)
        trainer.data_collator = counter
        timer = StepTimer(warmup)
        timer.counter = counter
        trainer.add_callback(timer)
        trainer.train()
    return {"seconds": round(timer.seconds, 2), "real_tokens_per_s": round(timer.timed_tokens / timer.seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default="bench/results/train_speed.json")
    args = ap.parse_args()
    params = load_params(args.params)
    cfg = dict(params["train"], max_length=params["format"]["max_length"])
    results = {"torch_threads": torch.get_num_threads(), "steps": args.steps, "warmup": args.warmup}
    for arm in ("naive", "trl-cpu", "relsft"):
        results[arm] = measure(cfg, args.steps, args.warmup, arm)
        print(f"{arm:7s} {results[arm]['real_tokens_per_s']:9.1f} real tokens/s ({results[arm]['seconds']} s timed)")
    for baseline in ("naive", "trl-cpu"):
        ratio = round(results["relsft"]["real_tokens_per_s"] / results[baseline]["real_tokens_per_s"], 2)
        results[f"speedup_vs_{baseline}"] = ratio
        print(f"speedup relsft / {baseline}: {ratio}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
