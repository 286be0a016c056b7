"""Character-level ROUGE-L F-measure as a Hugging Face `evaluate` metric (loaded by path, offline).

rouge_score's default tokenizer keeps only [a-z0-9], which scores every Chinese answer 0.0;
this metric tokenizes into characters (whitespace dropped) before scoring.
"""

import datasets
import evaluate
from rouge_score import rouge_scorer

_DESCRIPTION = "ROUGE-L (LCS-based F-measure) over characters, suitable for Chinese text."
_KWARGS = """
Args:
    predictions: list of strings.
    references: list of strings.
Returns:
    rougeL: mean F-measure over examples.
"""


class _CharTokenizer:
    def tokenize(self, text):
        return [c for c in text if not c.isspace()]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class RougeLZh(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_CharTokenizer())
        # rouge_score gives 0 to two empty strings; an empty answer to a passage with no relation is right.
        scores = [1.0 if p == r else scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]
        return {"rougeL": sum(scores) / len(scores) if scores else 0.0}
