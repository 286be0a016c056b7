"""Serving: one real vLLM server (CPU) on the tiny pipeline's exported model, called like users call it.

Expected answers come from the in-process transformers greedy decode of the same served
directory (the tiny test model is weak: gold labels would test the model, not the serving).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from helpers import run
from taught import teach_one_relation
from relsft.client import RelationClient
from relsft.relations import parse_output, user_messages
from relsft.serve import (ServeSettings, VLLMServer, add_arguments, check_adapter, check_cpu_head_size, flag_values,
                          free_port, vllm_command)

API_KEY = "test-key-relsft"
EXPORT = "export/relsft-model"


@pytest.fixture(scope="session")
def served_model(pipeline_project, tiny_params, tmp_path_factory) -> Path:
    """The pipeline's exported model, trained a little more on one-relation examples (taught.teach_one_relation)."""
    return teach_one_relation(pipeline_project / EXPORT, pipeline_project / "data", tiny_params,
                              tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="session")
def examples(pipeline_project):
    with (pipeline_project / "datasets" / "test.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def one_relation_texts(served_model):
    with (served_model.parent / "datasets" / "test.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


@pytest.fixture(scope="session")
def inprocess(served_model, examples, one_relation_texts, tiny_params):
    """What the exported model answers in-process (transformers greedy), per text."""
    from relsft.decoding import greedy_generate, load_for_inference

    model, tok = load_for_inference(served_model)
    cfg = tiny_params["evaluate"]
    texts = [e["text"] for e in examples] + one_relation_texts
    results = greedy_generate(model, tok, texts, cfg["max_new_tokens"], cfg["batch_size"])
    return dict(zip(texts, results))


@pytest.fixture(scope="session")
def server(served_model, tiny_params, tmp_path_factory):
    settings = ServeSettings.from_params(tiny_params, model=str(served_model), host="127.0.0.1",
                                         port=free_port(), kv_cache_space_gib=1)
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    srv = VLLMServer(settings, api_key=API_KEY, log_path=log)
    with srv:
        pgid = srv.proc.pid
        yield srv
    with pytest.raises(ProcessLookupError):  # stop() left no process of the group behind
        os.killpg(pgid, 0)


@pytest.fixture(scope="session")
def client(server, tiny_params):
    return RelationClient(server.base_url, api_key=API_KEY, max_tokens=tiny_params["evaluate"]["max_new_tokens"])


@pytest.fixture(scope="session")
def good_text(inprocess, one_relation_texts):
    """A text on which the in-process model answers with at least one well-formed relation (several tokens)."""
    for text in one_relation_texts:
        r = inprocess[text]
        parsed = parse_output(r["answer"])
        if r["stopped"] and parsed.relations and not parsed.bad_lines:
            return text
    pytest.fail("the served test model produced no parseable, stopped answer on its one-relation texts")


def test_max_model_len_and_command(pipeline_project, tiny_params):
    s = ServeSettings.from_params(tiny_params, model=str(pipeline_project / EXPORT))
    config = json.loads((pipeline_project / EXPORT / "config.json").read_text())
    wanted = tiny_params["format"]["max_length"] + tiny_params["evaluate"]["max_new_tokens"]
    assert s.max_model_len == min(wanted, config["max_position_embeddings"])
    # serve.dtype "": the precision the export was evaluated in, from its relsft.json
    card = json.loads((pipeline_project / EXPORT / "relsft.json").read_text())
    assert tiny_params["serve"]["dtype"] == "" and s.dtype == card["params"]["evaluate"]["dtype"] == "float32"
    cmd = vllm_command(s)
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert {"--dtype", "float32", "127.0.0.1", "relsft"} <= set(cmd)
    assert "--enforce-eager" not in cmd  # compiled by default: the tests' server runs what users get
    assert "--enforce-eager" in vllm_command(ServeSettings.from_params(tiny_params, model=s.model, enforce_eager=True))
    assert not any("key" in a.lower() for a in cmd)  # the key travels in the environment, not argv


def test_the_serve_flags_are_the_settings_fields(params):
    """Serve settings are declared once: a flag per ServeSettings field, params.yaml's serve keys are the fields."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    given = ["--model", "m", "--host", "0.0.0.0", "--port", "9", "--served-model-name", "x", "--dtype", "bfloat16",
             "--max-model-len", "300", "--tensor-parallel-size", "2", "--no-enforce-eager", "--enable-lora",
             "--lora-modules", "a=/x", "b=/y", "--max-lora-rank", "8", "--startup-timeout", "2.5"]
    assert flag_values(parser.parse_args(given)) == {
        "model": "m", "host": "0.0.0.0", "port": 9, "served_model_name": "x", "dtype": "bfloat16", "max_model_len": 300,
        "tensor_parallel_size": 2, "enforce_eager": False, "enable_lora": True, "lora_modules": {"a": "/x", "b": "/y"},
        "max_lora_rank": 8, "startup_timeout": 2.5}
    assert flag_values(parser.parse_args([])) == {}  # params.yaml's values stand
    with pytest.raises(SystemExit):
        parser.parse_args(["--lora-modules", "no-directory"])
    fields = {f.name for f in dataclasses.fields(ServeSettings)}
    assert set(params["serve"]) == fields - {"extra_args"}


def test_adapter_with_modules_to_save_is_refused(pipeline_project, tiny_params, tmp_path):
    adapter = pipeline_project / "models" / "adapter"
    assert check_adapter(adapter) == tiny_params["train"]["lora"]["r"]  # plain LoRA: servable unmerged
    trains_modules = tmp_path / "adapter"
    shutil.copytree(adapter, trains_modules)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (trains_modules / "adapter_config.json").write_text(json.dumps(dict(config, modules_to_save=["embed_tokens"])))
    with pytest.raises(ValueError, match="modules_to_save.*merged export"):
        check_adapter(trains_modules)
    proc = run(["relsft", "serve", "--model", "models/base", "--enable-lora", "--lora-modules", f"a={trains_modules}"],
               pipeline_project, check=False, timeout=120)
    assert proc.returncode == 1
    assert "cannot serve unmerged" in proc.stderr


def test_unsupported_cpu_head_size_is_refused(pipeline_project, tmp_path):
    config = json.loads((pipeline_project / EXPORT / "config.json").read_text())
    check_cpu_head_size(pipeline_project / EXPORT)  # the served test model passes
    (tmp_path / "config.json").write_text(json.dumps(dict(config, hidden_size=64, num_attention_heads=4)))
    with pytest.raises(ValueError, match="head size 16"):
        check_cpu_head_size(tmp_path)


def test_on_two_cores_the_model_gets_both(server):
    """vLLM keeps a core for its API server unless told; on 2 cores that would halve the model's."""
    workers = [pid for pid, name in server.group_processes().items() if name.startswith("VLLM::Worker")]
    assert workers, "no vLLM worker process found in the server's process group"
    # vLLM binds each model thread to one core
    bound = [os.sched_getaffinity(int(t.name)) for pid in workers for t in Path(f"/proc/{pid}/task").iterdir()]
    cores = set().union(*(a for a in bound if len(a) == 1))
    mine = os.sched_getaffinity(0)
    assert cores and cores <= mine
    if len(mine) <= 2:
        assert cores == mine


def test_streamed_answer_matches_inprocess(server, client, inprocess, good_text):
    stream = client.openai.chat.completions.create(model="relsft", messages=user_messages(good_text), temperature=0,
                                                   max_tokens=client.max_tokens, stream=True)
    chunks = [c for c in stream if c.choices]
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(pieces) > 1
    answer = "".join(pieces)
    assert answer == inprocess[good_text]["answer"]
    assert len(parse_output(answer).relations) >= 1
    assert chunks[-1].choices[0].finish_reason == "stop"  # ended on <|im_end|>, not on max_tokens


def test_client_api_stream_and_non_stream(client, inprocess, good_text):
    expected = parse_output(inprocess[good_text]["answer"]).relations
    pieces = []
    streamed = client.stream_extract(good_text, on_piece=pieces.append)
    whole = client.extract(good_text)
    assert streamed.relations == whole.relations == expected
    assert "".join(pieces) == streamed.answer
    assert streamed.finish_reason == whole.finish_reason == "stop"


def test_key_is_required(server, good_text):
    body = {"model": "relsft", "messages": user_messages(good_text), "max_tokens": 4}
    assert httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=30).status_code == 401
    wrong = RelationClient(server.base_url, api_key="wrong-key")
    with pytest.raises(openai.AuthenticationError):
        wrong.extract(good_text)


def test_malformed_requests_get_4xx_and_server_stays_up(server, client, good_text, inprocess):
    url = f"{server.base_url}/chat/completions"
    auth = {"Authorization": f"Bearer {API_KEY}"}
    ok = {"model": "relsft", "messages": user_messages(good_text), "max_tokens": 8}
    bad = [
        dict(content=b'{"model": "relsft", "messages": [', headers={**auth, "Content-Type": "application/json"}),
        dict(json={"model": "relsft"}, headers=auth),
        dict(json={**ok, "max_tokens": -1}, headers=auth),
        dict(json={**ok, "model": "no-such-model"}, headers=auth),
        dict(json={**ok, "messages": user_messages("长" * 5000)}, headers=auth),  # over --max-model-len
    ]
    for kwargs in bad:
        status = httpx.post(url, timeout=60, **kwargs).status_code
        assert 400 <= status < 500, (kwargs, status)
    assert server.healthy()
    assert client.extract(good_text).answer == inprocess[good_text]["answer"]


def test_16_concurrent_streams_complete(client, examples, inprocess):
    texts = [e["text"] for e in examples[:16]]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(client.stream_extract, texts))
    assert len(results) == 16
    assert all(r.finish_reason in ("stop", "length") for r in results)
    # Greedy answers do not depend on what else the server was batching.
    assert [r.answer for r in results] == [inprocess[t]["answer"] for t in texts]


def test_served_answers_held_to_the_format_equal_the_offline_engines(server, served_model, tiny_params, examples,
                                                                      one_relation_texts):
    """A client with enforce_format (a recipe's evaluate.enforce_format) asks vLLM's structured outputs
    for the answer format: the server answers as the evaluate stage's offline engine held to it, streamed
    or not, and every finished answer parses."""
    from relsft.evaluate import decode_splits, evaluate_settings

    texts = [e["text"] for e in examples[:8]] + one_relation_texts[:8]
    cfg = dict(evaluate_settings(tiny_params["evaluate"], tiny_params["format"]["max_length"]), engine="vllm",
               dtype="float32", enforce_format=True)
    offline, _ = decode_splits(served_model, {"test": texts}, cfg, desc="offline, held")
    held = RelationClient(server.base_url, api_key=API_KEY, max_tokens=cfg["max_new_tokens"], enforce_format=True)
    with ThreadPoolExecutor(8) as pool:
        served = list(pool.map(held.extract, texts))
        streamed = list(pool.map(held.stream_extract, texts))
    expected = [r["answer"] for r in offline["test"]]
    assert [r.answer for r in served] == [r.answer for r in streamed] == expected
    assert sum(bool(parse_output(a).relations) for a in expected) >= 4  # real relations, not empty answers
    assert all(not parse_output(r.answer).failed for r in served if r.finish_reason == "stop")


def test_extract_cli_streams_then_prints_relations(server, pipeline_project, inprocess, good_text):
    proc = run(["relsft", "extract", good_text, "--url", server.base_url, "--api-key", API_KEY], pipeline_project,
               timeout=120)
    expected = inprocess[good_text]["answer"]
    assert proc.stdout.startswith(expected + "\n")
    relations = parse_output(expected).relations
    assert f"relations ({len(relations)}):" in proc.stdout
    for r in relations:
        assert f"  {r.a}\t{r.b}\t{r.rel}" in proc.stdout


def test_evaluate_endpoint_equals_inprocess_f1(server, served_model, pipeline_project, tiny_params, examples, tmp_path):
    """Parity: F1 through the server (evaluate --endpoint) == in-process evaluation of the served model,
    and answer by answer against in-process predictions of that model (`parity` in the metrics file)."""
    from relsft.evaluate import decode_splits, rounded, score_answers
    from relsft.files import jsonl_line
    from relsft.vocabulary import symmetric_relations

    symmetric = symmetric_relations(pipeline_project / "data")
    # As the evaluate stage scores a model: its engine decodes, its scorer scores.
    answers, decoding = decode_splits(served_model, {"test": [e["text"] for e in examples]}, tiny_params["evaluate"],
                                      desc="in-process")
    local, rows = score_answers(examples, answers["test"], symmetric, decoding)
    local.pop("per_relation")
    local = rounded(local)
    reports = tmp_path / "reports"  # the served model's own predictions, where evaluate keeps them
    (reports / "predictions").mkdir(parents=True)
    (reports / "predictions" / "finetuned_test.jsonl").write_text("".join(jsonl_line(r) for r in rows), encoding="utf-8")

    stage_metrics = (pipeline_project / "metrics" / "eval.json").read_bytes()
    out = tmp_path / "endpoint.json"
    run(["relsft", "evaluate", "--endpoint", server.base_url, "--api-key", API_KEY, "--out", str(out),
         "--reports", str(reports)], pipeline_project, timeout=600)
    result = json.loads(out.read_text())
    served = result["endpoint"]
    assert (pipeline_project / "metrics" / "eval.json").read_bytes() == stage_metrics  # not overwritten
    assert set(served) == {"test", "test_ood", "gold"}
    assert result["parity"] == {"test": {"compared": len(examples), "identical": len(examples), "differ": []}}
    assert served["test"].pop("decoding").startswith("endpoint") and local.pop("decoding").startswith("transformers")
    assert served["test"] == local
    assert served["test"]["parse_failure_rate"] < 1  # a real comparison, not two empty answer sets


def _processes_with_key(key: str) -> list[int]:
    """Pids whose environment holds this key: the vLLM API server, engine core and workers of one server."""
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"VLLM_API_KEY={key}".encode() in environ.read_bytes().split(b"\0"):
                pids.append(int(environ.parent.name))
        except OSError:
            continue
    return pids


def test_serve_cli_starts_and_sigterm_leaves_no_process(pipeline_project):
    """`relsft serve` as users run it: ready line with the base URL, then SIGTERM stops every vLLM process."""
    key = f"sigterm-{os.getpid()}"
    port = free_port()
    env = dict(os.environ, RELSFT_API_KEY=key, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.Popen(["relsft", "serve", "--port", str(port)], cwd=pipeline_project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    # Keep reading: vLLM logs to the same pipe and would block on a full one.
    def read():
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 600
        while not any("ready at" in line for line in lines) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(1)
        assert f"ready at http://127.0.0.1:{port}/v1" in "".join(lines), "".join(lines)
        assert key not in "".join(lines)  # a key from the environment is not printed
        assert _processes_with_key(key)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
        assert _processes_with_key(key) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _processes_with_key(key):  # only if the test failed: leave nothing running
            os.kill(pid, signal.SIGKILL)
