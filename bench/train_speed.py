"""Training throughput: relsft's train stage against its alternatives, side by side in one run.

    python bench/train_speed.py [--steps 40] [--params params.yaml] [--arms fp32 bf16]
    python bench/train_speed.py --params bench/qwen05.yaml --base models/base --formatted formatted --arms fp32 bf16

Both arms train the same base model (models/base) on the same formatted data (formatted/), with
the same LoRA config, batch size and learning rate, for the same number of steps:

- relsft:  the train stage's own SFTTrainer (dynamic padding in length-grouped batches,
           completion-only loss);
- naive:   every example padded to max_length, loss on every token, random batches;
- trl-cpu: the train stage's recipe with TRL's own CPU loss path, which scores every position
           (the stage scores only the answer positions, as TRL does on CUDA);
- fp32, bf16: the train stage's recipe with `train.precision` set to fp32 or bf16 (autocast; on
           a CPU, fast only where it has native bf16: AVX512_BF16 or AMX), the base in float32;
- bf16-base: bf16 autocast over a base held in bfloat16 (`train.base_dtype: bfloat16`).

Throughput counts examples and real (non-padding) tokens per second of training time; the ratios
are relsft / each other arm. Run `dvc repro format` first (or the whole pipeline).
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
from relsft.train import build_trainer, mixed_precision, score_only_completion_tokens_on_cpu  # noqa: E402

ARMS = ("naive", "trl-cpu", "fp32", "bf16", "bf16-base", "relsft")


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


def measure(cfg, steps: int, warmup: int, arm: str, base: Path, formatted: Path) -> dict:
    overrides = dict(max_steps=steps, eval_strategy="no", save_strategy="no", logging_steps=10_000,
                     disable_tqdm=True)
    if arm in ("fp32", "bf16", "bf16-base"):
        cfg = dict(cfg, precision=arm[:4], base_dtype="bfloat16" if arm == "bf16-base" else "float32")
    if arm == "naive":
        overrides.update(completion_only_loss=False, train_sampling_strategy="random",
                         pad_to_multiple_of=cfg["max_length"])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(base, formatted, cfg, Path(tmp), **overrides)
        score_only_completion_tokens_on_cpu(enabled=arm != "trl-cpu")
        counter = TokenCounter(trainer.data_collator)
        trainer.data_collator = counter
        timer = StepTimer(warmup)
        timer.counter = counter
        trainer.add_callback(timer)
        trainer.train()
    examples = (steps - warmup) * cfg["sft"]["per_device_train_batch_size"] * cfg["sft"].get("gradient_accumulation_steps", 1)
    return {"seconds": round(timer.seconds, 2), "examples_per_s": round(examples / timer.seconds, 3),
            "real_tokens_per_s": round(timer.timed_tokens / timer.seconds, 1),
            "precision": f"{mixed_precision(cfg['precision'])[1]}, base {cfg.get('base_dtype', 'float32')}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--base", default="models/base", type=Path)
    ap.add_argument("--formatted", default="formatted", type=Path)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--arms", nargs="+", choices=ARMS, default=["naive", "trl-cpu", "relsft"],
                    help="relsft (the recipe as it is) is always measured too")
    ap.add_argument("--out", default="bench/results/train_speed.json")
    args = ap.parse_args()
    params = load_params(args.params)
    cfg = dict(params["train"], max_length=params["format"]["max_length"])
    results = {"torch_threads": torch.get_num_threads(), "steps": args.steps, "warmup": args.warmup,
               "recipe": params.get("recipe"), "batch": cfg["sft"]["per_device_train_batch_size"]}
    for arm in dict.fromkeys([*args.arms, "relsft"]):
        results[arm] = measure(cfg, args.steps, args.warmup, arm, args.base, args.formatted)
        print(f"{arm:7s} {results[arm]['examples_per_s']:8.3f} examples/s {results[arm]['real_tokens_per_s']:9.1f} "
              f"real tokens/s ({results[arm]['seconds']} s timed, {results[arm]['precision']})")
    for other in args.arms:
        if other != "relsft":
            ratio = round(results["relsft"]["examples_per_s"] / results[other]["examples_per_s"], 2)
            results[f"speedup_vs_{other}"] = ratio
            print(f"speedup relsft / {other}: {ratio}x")
    if "fp32" in results and "bf16" in results:
        results["bf16_over_fp32"] = round(results["bf16"]["examples_per_s"] / results["fp32"]["examples_per_s"], 2)
        print(f"bf16 / fp32: {results['bf16_over_fp32']}x")
    if "bf16" in results and "bf16-base" in results:
        results["bf16_base_over_bf16"] = round(results["bf16-base"]["examples_per_s"] / results["bf16"]["examples_per_s"], 2)
        print(f"bf16 over a bf16 base / bf16 over a float32 base: {results['bf16_base_over_bf16']}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
