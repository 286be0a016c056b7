"""How metrics are shown: one Markdown table, for the model card (export), the pipeline flow's
artifact and the evaluate stage's log. It imports nothing, so a stage that shows metrics does not
depend on the code that computes them."""

from __future__ import annotations

from typing import Any

COLUMNS = {"strict_f1": "strict F1", "unordered_f1": "unordered F1", "exact_match": "exact match",
           "parse_failure_rate": "parse failures", "rougeL": "ROUGE-L"}


def metrics_table(metrics: dict[str, dict[str, dict[str, Any]]]) -> str:
    """A row per model and split of `metrics`, shaped as metrics/eval.json: {model: {split: scores}}."""
    def cell(scores: dict[str, Any], key: str) -> str:
        return f"{scores[key]:.4f}" if key in scores else "-"  # a metrics file older than the column

    lines = ["| model | split | " + " | ".join(COLUMNS.values()) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for model, by_split in metrics.items():
        for split, scores in by_split.items():
            lines.append(f"| {model} | {split} | " + " | ".join(cell(scores, k) for k in COLUMNS) + " |")
    return "\n".join(lines)
