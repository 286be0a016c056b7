"""Triple-level F1 for `A-B:rel` answers, as a Hugging Face `evaluate` metric (loaded by path, offline).

strict: a predicted triple counts if (A, B, rel) equals a gold triple.
unordered: as strict, but the pair is unordered for the relations named in `symmetric`.
Micro precision/recall/F1 over all triples; exact match per example (the set of triples, under
the unordered rule); parse-failure rate (answers with a line that is not `A-B:rel`); per-relation F1.
"""

import re
from collections import Counter

import datasets
import evaluate

_LINE = re.compile(r"^([^\s\-:]+)-([^\s\-:]+):([^\s\-:]+)$")

_DESCRIPTION = "Micro P/R/F1 over (A, B, relation) triples parsed from `A-B:rel` lines."
_KWARGS = """
Args:
    predictions: list of model answers, one `A-B:rel` per line.
    references: list of gold answers in the same format.
    symmetric: relations whose pair order is free (used by the unordered scores).
Returns:
    strict_precision, strict_recall, strict_f1, unordered_precision, unordered_recall, unordered_f1,
    exact_match, parse_failure_rate, per_relation (relation -> {f1, support}, unordered rule).
"""


def _triples(text):
    triples, failed = [], False
    for line in text.strip().splitlines():
        line = line.strip()
        if not line:
            continue
        m = _LINE.match(line)
        if m:
            triples.append(m.groups())
        else:
            failed = True
    return triples, failed


def _key(t, symmetric):
    a, b, rel = t
    return (min(a, b), max(a, b), rel) if rel in symmetric else t


def _prf(tp, n_pred, n_gold):
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class TripleF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, symmetric=()):
        symmetric = set(symmetric)
        tp = {"strict": 0, "unordered": 0}
        n_pred = n_gold = exact = failures = 0
        rel_tp, rel_pred, rel_gold = Counter(), Counter(), Counter()
        for pred, ref in zip(predictions, references):
            p, failed = _triples(pred)
            g, _ = _triples(ref)
            failures += failed
            n_pred += len(p)
            n_gold += len(g)
            for mode, key in (("strict", lambda t: t), ("unordered", lambda t: _key(t, symmetric))):
                pc, gc = Counter(map(key, p)), Counter(map(key, g))
                tp[mode] += sum((pc & gc).values())
                if mode == "unordered":
                    exact += pc == gc
                    for t, c in (pc & gc).items():
                        rel_tp[t[2]] += c
                    for t, c in pc.items():
                        rel_pred[t[2]] += c
                    for t, c in gc.items():
                        rel_gold[t[2]] += c
        out = {}
        for mode in ("strict", "unordered"):
            pr, rc, f1 = _prf(tp[mode], n_pred, n_gold)
            out.update({f"{mode}_precision": pr, f"{mode}_recall": rc, f"{mode}_f1": f1})
        n = len(predictions)
        out["exact_match"] = exact / n if n else 0.0
        out["parse_failure_rate"] = failures / n if n else 0.0
        out["per_relation"] = {
            rel: {"f1": _prf(rel_tp[rel], rel_pred[rel], rel_gold[rel])[2], "support": rel_gold[rel]}
            for rel in sorted(set(rel_gold) | set(rel_pred))
        }
        return out
