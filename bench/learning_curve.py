"""Learning curve: strict F1 of the training run's checkpoints (and of the untuned base, step 0) on the
evaluated splits, decoded as the evaluate stage decodes (its engine and dtype, its code).

    python bench/learning_curve.py [--checkpoints checkpoints/<run>] [--splits gold] [--params params.yaml]
        [--out docs/plots/learning_curve.csv]

Run from the project root after `dvc repro`: the train stage keeps a checkpoint every
train.sft.save_steps under train.checkpoint_dir (default: the newest run there). Each point merges
one checkpoint's adapter into models/base (as the merge stage does, in a temporary directory) and
scores it in a process of its own, one after the other. Writes a CSV that `dvc plots show` draws
(dvc.yaml's top-level plots); the README and docs/experiments.md quote it.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from relsft.evaluate import decode_splits, evaluate_settings, load_split, score_answers  # noqa: E402
from relsft.params import load_params  # noqa: E402
from relsft.paths import stage_paths  # noqa: E402
from relsft.vocabulary import symmetric_relations  # noqa: E402


def score_point(model_dir: str, adapter: str | None, splits: list[str], params_path: str) -> dict[str, float]:
    """One point: the base (adapter None) or base + adapter merged, scored on `splits`."""
    params = load_params(params_path)
    cfg = evaluate_settings(params["evaluate"], params["format"]["max_length"])
    paths = stage_paths("evaluate")
    datasets, data = paths["datasets"], paths["data"]
    examples = {s: load_split(datasets, s, cfg["max_examples"], data) for s in splits}
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        if adapter:
            from relsft.decoding import load_for_inference

            model, tok = load_for_inference(model_dir, adapter)
            model.merge_and_unload().save_pretrained(tmp)
            tok.save_pretrained(tmp)
            model_dir = tmp
        results, decoding = decode_splits(model_dir, {s: [e["text"] for e in ex] for s, ex in examples.items()},
                                          cfg, desc=Path(adapter or "base").name)
    symmetric = symmetric_relations(data)
    out = {}
    for s, ex in examples.items():
        scores, _ = score_answers(ex, results[s], symmetric, decoding)
        out[s] = round(scores["strict_f1"], 4)
        out[f"{s}_parse_failure_rate"] = round(scores["parse_failure_rate"], 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", help="one run's checkpoint-N directories (default: the newest run under "
                    "train.checkpoint_dir)")
    ap.add_argument("--splits", nargs="+", default=["gold"])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--no-base", action="store_true", help="leave out step 0 (the untuned base)")
    ap.add_argument("--base", help="the base model the checkpoints were trained on (default: the train stage's)")
    ap.add_argument("--out", default="docs/plots/learning_curve.csv")
    ap.add_argument("--point", help=argparse.SUPPRESS)  # internal: score one point, print it as JSON
    args = ap.parse_args()
    base = args.base or stage_paths("train")["base"]
    if args.point is not None:
        print("POINT " + json.dumps(score_point(base, args.point or None, args.splits, args.params)), flush=True)
        return

    params = load_params(args.params)
    run = Path(args.checkpoints) if args.checkpoints else max(
        Path(params["train"]["checkpoint_dir"]).iterdir(), key=lambda p: p.stat().st_mtime)
    points = sorted((int(p.name.split("-")[1]), str(p)) for p in run.glob("checkpoint-*"))
    if not args.no_base:
        points.insert(0, (0, ""))
    if not points:
        raise SystemExit(f"{run}: no checkpoint-N directories")
    batch = params["train"]["sft"]["per_device_train_batch_size"] * params["train"]["sft"].get(
        "gradient_accumulation_steps", 1)
    rows = []
    for step, adapter in points:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--point", adapter, "--params", args.params, "--base", base,
                               "--splits", *args.splits], capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("POINT ")), None)
        if proc.returncode or line is None:
            raise SystemExit(f"step {step}: failed\n{proc.stderr[-3000:]}")
        rows.append({"step": step, "examples_seen": step * batch, **json.loads(line[6:]),
                     "eval_seconds": round(time.perf_counter() - start, 1)})
        print(rows[-1], flush=True)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8", newline="") as f:  # rewritten after each point: a partial curve survives
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
