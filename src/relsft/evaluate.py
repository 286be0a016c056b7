"""Stage `evaluate`: greedy decoding on test and test_ood, base model and fine-tuned side by side.

Scores come from the project's own `evaluate` metric modules, loaded by path so that nothing is
fetched from a hub: triple P/R/F1 (strict and unordered), exact match, parse failures,
per-relation F1 (`triple_f1`) and character-level ROUGE-L (`rouge_l_zh`).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from .io import atomic_file, jsonl_line, read_jsonl, write_json
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


def load_split(dataset_dir: str | Path, split: str, max_examples: int = 0,
               data_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """A split (`split_path`), cut to its first `max_examples` (0: all of it)."""
    return list(read_jsonl(split_path(dataset_dir, split, data_dir)))[: max_examples or None]


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


def _rounded(d: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


def evaluate_model(model, tok, examples: list[dict[str, Any]], symmetric: list[str], cfg: dict[str, Any],
                   desc: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from .generation import greedy_generate

    results = greedy_generate(model, tok, [e["text"] for e in examples], cfg["max_new_tokens"], cfg["batch_size"],
                              desc=desc)
    scores = score([r["answer"] for r in results], [e["output"] for e in examples], symmetric)
    scores["stopped_rate"] = sum(r["stopped"] for r in results) / max(1, len(results))
    scores["examples"] = len(examples)  # a recipe may score a fixed subset (evaluate.max_examples)
    if any("phenomena" in e for e in examples):
        scores["phenomena"] = per_phenomenon(examples, [r["answer"] for r in results], symmetric)
    scores["decoding"] = f"transformers generate, greedy, batch {cfg['batch_size']}, {model.device.type}"
    rows = [{"id": e["id"], "text": e["text"], "gold": e["output"], **r} for e, r in zip(examples, results)]
    return scores, rows


def same_as_inprocess(predictions: Path, examples: list[dict[str, Any]], answers: list[str]) -> dict[str, Any]:
    """Served answers against the evaluate stage's own (reports/eval/predictions/finetuned_<split>.jsonl)."""
    inprocess = {r["id"]: r["answer"] for r in read_jsonl(predictions)}
    compared = [(e, a) for e, a in zip(examples, answers) if e["id"] in inprocess]
    differ = [{"id": e["id"], "inprocess": inprocess[e["id"]], "served": a} for e, a in compared if a != inprocess[e["id"]]]
    return {"compared": len(compared), "identical": len(compared) - len(differ), "differ": differ}


def evaluate_endpoint(base_url: str, api_key: str | None, model: str, dataset_dir: str | Path, data_dir: str | Path,
                      metrics_path: str | Path, cfg: dict[str, Any], concurrency: int = 8,
                      reports_dir: str | Path | None = None) -> dict[str, Any]:
    """Score a served model (OpenAI chat API, e.g. `relsft serve`) with the same splits and scoring code.
    Where the evaluate stage's predictions are in `reports_dir`, each served answer is also compared
    with the in-process one (`parity` in the metrics file): the served export should answer alike."""
    from concurrent.futures import ThreadPoolExecutor

    from .client import RelationClient

    client = RelationClient(base_url, api_key=api_key, model=model, max_tokens=cfg["max_new_tokens"])
    client.served_model_id()  # no server, or not this model: said at once, not after every request's retries
    symmetric = symmetric_relations(data_dir)
    metrics: dict[str, Any] = {}
    parity: dict[str, Any] = {}
    for split in cfg["splits"]:
        examples = load_split(dataset_dir, split, cfg["max_examples"], data_dir)
        with ThreadPoolExecutor(concurrency) as pool:  # the server batches concurrent requests
            try:
                answers = list(pool.map(client.extract, [e["text"] for e in examples]))
            except BaseException:  # a failure that outlasted the retries: the queued ones would too
                pool.shutdown(cancel_futures=True)
                raise
        predictions = Path(reports_dir or "", "predictions", f"finetuned_{split}.jsonl")
        if reports_dir and predictions.exists():
            parity[split] = same_as_inprocess(predictions, examples, [a.answer for a in answers])
            print(f"endpoint  {split:8s} answers identical to in-process: {parity[split]['identical']}"
                  f"/{parity[split]['compared']}")
        scores = score([a.answer for a in answers], [e["output"] for e in examples], symmetric)
        scores.pop("per_relation")
        if any("phenomena" in e for e in examples):
            scores["phenomena"] = per_phenomenon(examples, [a.answer for a in answers], symmetric)
        scores["stopped_rate"] = sum(a.finish_reason == "stop" for a in answers) / max(1, len(answers))
        scores["examples"] = len(examples)
        scores["decoding"] = f"endpoint {base_url}, greedy, {concurrency} concurrent"
        metrics[split] = _rounded(scores)
    print(metrics_table({"endpoint": metrics}))
    write_json(metrics_path, {"endpoint": metrics, **({"parity": parity} if parity else {})})
    return metrics


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


def run_evaluate(base_dir: str | Path, adapter_dir: str | Path, dataset_dir: str | Path, data_dir: str | Path,
                 metrics_path: str | Path, reports_dir: str | Path, cfg: dict[str, Any]) -> dict[str, Any]:
    from .generation import load_for_inference

    symmetric = symmetric_relations(data_dir)
    splits = {s: load_split(dataset_dir, s, cfg["max_examples"], data_dir) for s in cfg["splits"]}
    models = {"finetuned": (base_dir, adapter_dir)}
    if cfg["include_base"]:
        models["base"] = (base_dir, None)
    metrics: dict[str, Any] = {}
    per_relation_rows = []
    reports_dir = Path(reports_dir)
    for name, (model_dir, adapter) in models.items():
        model, tok = load_for_inference(model_dir, adapter)
        for split, examples in splits.items():
            scores, rows = evaluate_model(model, tok, examples, symmetric, cfg, desc=f"evaluate {name} {split}")
            per_relation = scores.pop("per_relation")
            metrics.setdefault(name, {})[split] = _rounded(scores)
            per_relation_rows += [{"model": name, "split": split, "relation": rel, "f1": round(v["f1"], 4),
                                   "support": v["support"]} for rel, v in per_relation.items()]
            with atomic_file(reports_dir / "predictions" / f"{name}_{split}.jsonl") as f:
                f.writelines(jsonl_line(r) for r in rows)
    write_json(metrics_path, metrics)
    log_plots(reports_dir, per_relation_rows, metrics)
    print(metrics_table(metrics))
    return metrics
