"""`relsft evaluate --endpoint`: a served model (OpenAI chat API, e.g. `relsft serve`) scored on the
evaluate stage's splits with the stage's scoring code, and its answers compared with the stage's own.

A module of its own, so the evaluate stage does not depend on the client (editing it re-runs nothing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .evaluate import load_split, rounded, score_answers
from .files import read_jsonl, write_json
from .report import metrics_table
from .vocabulary import symmetric_relations


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

    from .client import Endpoint, RelationClient

    client = RelationClient.at(Endpoint.as_evaluated(base_url, api_key, model, cfg))
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
        results = [{"answer": a.answer, "stopped": a.finish_reason == "stop"} for a in answers]
        scores, _ = score_answers(examples, results, symmetric, f"endpoint {base_url}, greedy, {concurrency} concurrent")
        scores.pop("per_relation")
        metrics[split] = rounded(scores)
    print(metrics_table({"endpoint": metrics}))
    write_json(metrics_path, {"endpoint": metrics, **({"parity": parity} if parity else {})})
    return metrics
