"""The evaluate stage's two engines give the same greedy answers in float32: batched transformers
`generate` and vLLM's offline engine (the served engine), on the tiny pipeline's exported model."""

from __future__ import annotations

import json


def test_vllm_offline_engine_answers_as_transformers(pipeline_project, tiny_params):
    from relsft.evaluate import decode_splits, evaluate_settings

    export = pipeline_project / "export" / "relsft-model"
    texts = {"test": [json.loads(line)["text"] for line in
                      (pipeline_project / "datasets" / "test.jsonl").read_text(encoding="utf-8").splitlines()][:12]}
    cfg = evaluate_settings(dict(tiny_params["evaluate"], dtype="float32"), tiny_params["format"]["max_length"])
    reference, how = decode_splits(export, texts, dict(cfg, engine="transformers"), desc="transformers")
    served, vllm_how = decode_splits(export, texts, dict(cfg, engine="vllm"), desc="vllm")
    assert how.startswith("transformers") and vllm_how == "vLLM offline engine, greedy, float32"
    assert [r["answer"] for r in served["test"]] == [r["answer"] for r in reference["test"]]
    assert [r["stopped"] for r in served["test"]] == [r["stopped"] for r in reference["test"]]


def test_enforced_format_holds_a_model_that_breaks_it(pipeline_project, tiny_params):
    """evaluate.enforce_format on vLLM's offline engine: the untrained base writes the prompt back
    (`…人物关系:…`, not `A-B:rel`); held to ANSWER_REGEX every answer is the format so far (a
    truncated one ends inside a line) and every finished one matches it whole."""
    import re

    from relsft.evaluate import decode_splits, evaluate_settings
    from relsft.relations import ANSWER_REGEX, FIELD

    begun = FIELD.removesuffix("+") + "*"  # a field not yet written, or part of one
    line, partial = f"{FIELD}-{FIELD}:{FIELD}", f"({FIELD}(-({FIELD}(:{begun})?)?)?)?"

    def format_so_far(answer: str) -> bool:
        *done, last = answer.split("\n")
        return all(re.fullmatch(line, d) for d in done) and re.fullmatch(partial, last) is not None

    def broken(result) -> bool:  # a finished answer that does not match, or a cut one already off the format
        return not (re.fullmatch(ANSWER_REGEX, result["answer"]) if result["stopped"] else format_so_far(result["answer"]))

    texts = {"test": [json.loads(row)["text"] for row in
                      (pipeline_project / "datasets" / "test.jsonl").read_text(encoding="utf-8").splitlines()][:12]}
    cfg = dict(evaluate_settings(tiny_params["evaluate"], tiny_params["format"]["max_length"]), engine="vllm",
               dtype="float32", max_new_tokens=48)
    base = pipeline_project / "models" / "base"
    free, _ = decode_splits(base, texts, dict(cfg, enforce_format=False), desc="free")
    held, how = decode_splits(base, texts, dict(cfg, enforce_format=True), desc="held")
    assert how == "vLLM offline engine, greedy, float32, answer format enforced"
    assert sum(map(broken, free["test"])) >= 6, [r["answer"] for r in free["test"]]  # the base breaks the format
    assert not any(map(broken, held["test"])), [r["answer"] for r in held["test"]]
