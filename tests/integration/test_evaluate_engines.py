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
