"""Stage `evaluate`: greedy answers of the merged (fine-tuned) model on test, test_ood and gold, and
optionally of the base model beside it, decoded as `relsft serve` will answer (`decoding.py`).

Scores come from the project's own `evaluate` metric modules, loaded by path so that nothing is
fetched from a hub: triple P/R/F1 (strict and unordered), exact match, parse failures,
per-relation F1 (`triple_f1`) and character-level ROUGE-L (`rouge_l_zh`).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from .files import atomic_file, jsonl_line, read_jsonl, write_json
from .report import metrics_table
from .vocabulary import symmetric_relations


def metric_path(name: str) -> str:
    return str(resources.files("relsft") / "resources" / "metrics" / name)


def score(predictions: list[str], references: list[str], symmetric: list[str]) -> dict[str, Any]:
    import evaluate

    triple = evaluate.load(metric_path("triple_f1"))
    rouge = evaluate.load(metric_path("rouge_l_zh"))
    out = triple.compute(predictions=predictions, references=references, symmetric=symmetric)
    out.update(rouge.compute(predictions=predictions, references=references))
    return out


def split_path(dataset_dir: str | Path, split: str, data_dir: str | Path | None = None) -> Path:
    """A generated split (datasets/<split>.jsonl), else a hand-labelled one (data/<split>.jsonl, e.g. gold)."""
    path = Path(dataset_dir) / f"{split}.jsonl"
    return Path(data_dir) / f"{split}.jsonl" if data_dir is not None and not path.exists() else path


def evaluate_settings(evaluate: dict[str, Any], max_length: int) -> dict[str, Any]:
    """params' `evaluate` section plus the context length vLLM needs: the longest prompt the format stage
    accepts (format.max_length) and the longest answer asked for, as `relsft serve` sizes it."""
    return dict(evaluate, max_model_len=max_length + evaluate["max_new_tokens"])


def split_size(max_examples: int | dict[str, int], split: str) -> int:
    """evaluate.max_examples: one number for every split, or one per split ({test: 150, gold: 0}); 0: all."""
    return max_examples.get(split, 0) if isinstance(max_examples, dict) else max_examples


def load_split(dataset_dir: str | Path, split: str, max_examples: int | dict[str, int] = 0,
               data_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """A split (`split_path`), cut to its first `evaluate.max_examples`."""
    return list(read_jsonl(split_path(dataset_dir, split, data_dir)))[: split_size(max_examples, split) or None]


def per_phenomenon(examples: list[dict[str, Any]], answers: list[str], symmetric: list[str]) -> dict[str, Any]:
    """Strict F1 on the passages of each phenomenon tag (gold split); for `no_relation` passages,
    whose answer should be empty, the share that was."""
    tags = sorted({t for e in examples for t in e.get("phenomena", [])})
    out: dict[str, Any] = {}
    for tag in tags:
        idx = [i for i, e in enumerate(examples) if tag in e.get("phenomena", [])]
        if tag == "no_relation":
            value = sum(not answers[i].strip() for i in idx) / len(idx)
        else:
            value = score([answers[i] for i in idx], [examples[i]["output"] for i in idx], symmetric)["strict_f1"]
        out[tag] = {"f1" if tag != "no_relation" else "empty_answer_rate": round(value, 4), "passages": len(idx)}
    return out


def rounded(d: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


def decode_splits(model_dir: str | Path, texts: dict[str, list[str]], cfg: dict[str, Any],
                  desc: str) -> tuple[dict[str, list[dict[str, Any]]], str]:
    """Each split's greedy answers from `model_dir` with the recipe's engine, and how they were decoded."""
    engine, dtype = cfg.get("engine", "transformers"), cfg.get("dtype", "float32")
    enforce_format = cfg.get("enforce_format", False)
    if engine == "vllm":
        from .decoding import vllm_greedy

        flat = vllm_greedy(model_dir, [t for ts in texts.values() for t in ts], cfg["max_new_tokens"], dtype,
                           cfg["max_model_len"], desc=desc, enforce_format=enforce_format)
        out, start = {}, 0
        for split, ts in texts.items():
            out[split], start = flat[start : start + len(ts)], start + len(ts)
        return out, f"vLLM offline engine, greedy, {dtype}" + (", answer format enforced" if enforce_format else "")
    if engine != "transformers" or dtype != "float32":
        raise ValueError(f"evaluate.engine {engine!r} with dtype {dtype!r}: use transformers (float32) or vllm "
                         "(float32 or bfloat16, the precision relsft serve serves)")
    if enforce_format:
        raise ValueError("evaluate.enforce_format holds decoding to the answer format with vLLM's structured outputs: "
                         "set evaluate.engine: vllm, or enforce_format: false")
    from .decoding import greedy_generate, inference_device, load_for_inference

    model, tok = load_for_inference(model_dir)
    out = {split: greedy_generate(model, tok, ts, cfg["max_new_tokens"], cfg["batch_size"], desc=f"{desc} {split}")
           for split, ts in texts.items()}
    return out, f"transformers generate, greedy, batch {cfg['batch_size']}, {inference_device()}"


def score_answers(examples: list[dict[str, Any]], results: list[dict[str, Any]], symmetric: list[str],
                  decoding: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    answers = [r["answer"] for r in results]
    scores = score(answers, [e["output"] for e in examples], symmetric)
    scores["stopped_rate"] = sum(r["stopped"] for r in results) / max(1, len(results))
    scores["examples"] = len(examples)  # a recipe may score a fixed subset (evaluate.max_examples)
    if any("phenomena" in e for e in examples):
        scores["phenomena"] = per_phenomenon(examples, answers, symmetric)
    scores["decoding"] = decoding
    rows = [{"id": e["id"], "text": e["text"], "gold": e["output"], **r} for e, r in zip(examples, results)]
    return scores, rows


def log_plots(reports_dir: Path, rows: list[dict[str, Any]], metrics: dict[str, Any]) -> None:
    """The fine-tuned model's per-relation F1, one DVCLive bar plot per split, and its F1 per phenomenon
    on each split that tags them (gold) (`dvc plots show`)."""
    from dvclive import Live

    live = Live(dir=str(reports_dir), save_dvc_exp=False, dvcyaml=None, report=None)
    for split in metrics["finetuned"]:
        live.log_plot(f"per_relation_f1_{split}",
                      [{k: r[k] for k in ("relation", "f1", "support")} for r in rows
                       if r["model"] == "finetuned" and r["split"] == split],
                      x="f1", y="relation", template="bar_horizontal",
                      title=f"Per-relation F1 of the fine-tuned model ({split})")
        if "phenomena" in metrics["finetuned"][split]:
            live.log_plot(f"per_phenomenon_f1_{split}",
                          [{"phenomenon": tag, "score": next(iter(v.values())), "passages": v["passages"]}
                           for tag, v in metrics["finetuned"][split]["phenomena"].items()],
                          x="score", y="phenomenon", template="bar_horizontal",
                          title=f"Strict F1 per phenomenon ({split}; no_relation = share of empty answers)")


def run_evaluate(model_dir: str | Path, base_dir: str | Path, dataset_dir: str | Path, data_dir: str | Path,
                 metrics_path: str | Path, reports_dir: str | Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """Score the merged model (`model_dir`, what export ships) and, with `include_base`, the base model."""
    symmetric = symmetric_relations(data_dir)
    splits = {s: load_split(dataset_dir, s, cfg["max_examples"], data_dir) for s in cfg["splits"]}
    models = {"finetuned": model_dir}
    if cfg["include_base"]:
        models["base"] = base_dir
    metrics: dict[str, Any] = {}
    per_relation_rows = []
    reports_dir = Path(reports_dir)
    for name, directory in models.items():
        answers, decoding = decode_splits(directory, {s: [e["text"] for e in ex] for s, ex in splits.items()}, cfg,
                                          desc=f"evaluate {name}")
        for split, examples in splits.items():
            scores, rows = score_answers(examples, answers[split], symmetric, decoding)
            per_relation = scores.pop("per_relation")
            metrics.setdefault(name, {})[split] = rounded(scores)
            per_relation_rows += [{"model": name, "split": split, "relation": rel, "f1": round(v["f1"], 4),
                                   "support": v["support"]} for rel, v in per_relation.items()]
            with atomic_file(reports_dir / "predictions" / f"{name}_{split}.jsonl") as f:
                f.writelines(jsonl_line(r) for r in rows)
    write_json(metrics_path, metrics)
    log_plots(reports_dir, per_relation_rows, metrics)
    print(metrics_table(metrics))
    return metrics
