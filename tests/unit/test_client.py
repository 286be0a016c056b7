"""relsft.client against a real HTTP server on 127.0.0.1 (a tiny OpenAI-compatible stand-in):
the one retry policy, sync and async, streamed or not; the key; the timeout; the answer budget."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest
import yaml

from helpers import ROOT
from relsft.book.extract import AnswerCache, answer_all
from relsft.client import (DEFAULT_MAX_TOKENS, INTERACTIVE_RETRIES, Endpoint, RelationClient, interactive,
                           served_model_id)
from relsft.relations import INSTRUCTION

ANSWER = "韩立-紫灵:师徒"


class Script:
    """What the server does with each chat request, in order: a status code, or ("sleep", seconds)
    before answering; once the script is used up it answers ANSWER."""

    def __init__(self, *steps):
        self.steps = list(steps)
        self.requests: list[dict] = []
        self.keys: list[str] = []


class Stand:
    """An OpenAI-compatible server on 127.0.0.1 that plays the current Script."""

    def __init__(self):
        self.script = Script()
        self.models_fail = 0  # how many model lists to answer 503 first
        self.model_lists = 0
        stand = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet test output
                pass

            def do_GET(self):  # /v1/models
                stand.model_lists += 1
                if stand.model_lists <= stand.models_fail:
                    return self.reply(503, {"error": {"message": "scripted 503"}})
                self.reply(200, {"object": "list", "data": [
                    {"id": "relsft", "object": "model", "created": 0, "owned_by": "test", "root": "/models/x"}]})

            def do_POST(self):  # /v1/chat/completions
                stand.answer(self, json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

            def reply(self, status: int, body, content_type: str = "application/json"):
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def play(self, *steps) -> Script:
        self.script = Script(*steps)
        return self.script

    def answer(self, request, body: dict) -> None:
        script = self.script
        script.requests.append(body)
        script.keys.append(request.headers.get("Authorization", ""))
        step = script.steps.pop(0) if script.steps else 200
        if isinstance(step, tuple):  # a slow answer: the client has given up on it by then
            time.sleep(step[1])
            step = 200
        if step != 200:
            return request.reply(step, {"error": {"message": f"scripted {step}"}})
        if not body["stream"]:
            return request.reply(200, {"id": "x", "object": "chat.completion", "created": 0, "model": "relsft",
                                       "choices": [{"index": 0, "finish_reason": "stop",
                                                    "message": {"role": "assistant", "content": ANSWER}}]})
        deltas = [({"content": ANSWER[:3]}, None), ({"content": ANSWER[3:]}, None), ({}, "stop")]
        chunks = [{"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "relsft",
                   "choices": [{"index": 0, "delta": d, "finish_reason": f}]} for d, f in deltas]
        request.reply(200, "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n",
                      "text/event-stream")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stand():
    s = Stand()
    yield s
    s.close()


def timed(call):
    start = time.monotonic()
    result = call()
    return result, time.monotonic() - start


# Two retries back off 0.5 s then 1 s, less up to 25% jitter: 1.125 s at least. At most 1.5 s
# plus three requests, which take seconds of their own on a loaded 2-core machine: a loose bound.
BACKOFF_OF_TWO = (1.1, 15.0)


def test_sync_retries_transient_failures_with_backoff(stand):
    script = stand.play(503, 503)
    result, seconds = timed(lambda: RelationClient(stand.url, api_key="k").extract("韩立与紫灵是师徒关系。"))
    assert result.answer == ANSWER and result.relations[0].rel == "师徒"
    assert len(script.requests) == 3 and BACKOFF_OF_TWO[0] <= seconds <= BACKOFF_OF_TWO[1]
    assert script.requests[0]["messages"][0]["content"] == INSTRUCTION + "韩立与紫灵是师徒关系。"
    assert script.requests[0]["temperature"] == 0 and script.requests[0]["max_tokens"] == DEFAULT_MAX_TOKENS
    script = stand.play(429, 502)  # streamed: retried before the first chunk
    result, seconds = timed(lambda: RelationClient(stand.url, api_key="k").stream_extract("x"))
    assert result.answer == ANSWER and result.finish_reason == "stop" and len(script.requests) == 3
    assert BACKOFF_OF_TWO[0] <= seconds <= BACKOFF_OF_TWO[1]


def test_async_retries_transient_failures_with_backoff(stand, tmp_path):
    """extract-book's path: answer_all on AsyncOpenAI, with the same policy."""
    script = stand.play(503, 503)
    cache = AnswerCache(tmp_path / "cache.jsonl")
    try:
        (answers, stats, served), seconds = timed(lambda: asyncio.run(
            answer_all(["韩立与紫灵是师徒关系。"], Endpoint(stand.url, "k"), cache, progress=False)))
    finally:
        cache.close()
    assert answers == [ANSWER] and served == "/models/x" and stats.requested == 1
    assert len(script.requests) == 3 and BACKOFF_OF_TWO[0] <= seconds <= BACKOFF_OF_TWO[1]


def test_other_client_errors_fail_at_once(stand, tmp_path):
    script = stand.play(400)
    with pytest.raises(openai.BadRequestError):
        RelationClient(stand.url, api_key="k").extract("x")
    assert len(script.requests) == 1
    script = stand.play(401)
    cache = AnswerCache(tmp_path / "cache.jsonl")
    with pytest.raises(RuntimeError, match="401"):
        asyncio.run(answer_all(["x"], Endpoint(stand.url, "k"), cache, progress=False))
    assert len(script.requests) == 1


def test_retries_are_bounded(stand):
    script = stand.play(*[500] * 10)
    with pytest.raises(openai.InternalServerError):
        RelationClient.at(interactive(Endpoint(stand.url, "k"))).extract("x")
    assert len(script.requests) == 1 + INTERACTIVE_RETRIES


def test_a_timed_out_request_is_retried(stand):
    script = stand.play(("sleep", 2.0))
    result = RelationClient(stand.url, api_key="k", timeout=0.5, retries=1).extract("x")
    assert result.answer == ANSWER and len(script.requests) == 2


def test_a_probe_is_not_retried(stand):
    """served_model_id (the first question of extract-book, evaluate --endpoint and the UI) is asked
    once: a server that is not there is said at once. Where one is, it names what it serves."""
    async def probe(name: str = "relsft") -> str:
        client = Endpoint(stand.url).connect(asynchronous=True)
        try:
            return await served_model_id(client, name)
        finally:
            await client.close()

    stand.models_fail = 2
    with pytest.raises(openai.InternalServerError):
        asyncio.run(probe())
    with pytest.raises(openai.InternalServerError):
        RelationClient(stand.url).served_model_id()
    assert stand.model_lists == 2
    assert asyncio.run(probe()) == RelationClient(stand.url).served_model_id() == "/models/x"
    with pytest.raises(ValueError, match="serves no model 'other'"):
        asyncio.run(probe("other"))


def test_the_key_comes_from_the_environment_when_not_given(stand, monkeypatch):
    script = stand.play()
    monkeypatch.setenv("RELSFT_API_KEY", "from-env")
    RelationClient(stand.url).extract("x")
    RelationClient(stand.url, api_key="given").extract("x")
    assert script.keys == ["Bearer from-env", "Bearer given"]


def test_the_default_answer_budget_is_the_builtin_recipes():
    """Outside a project a client asks for DEFAULT_MAX_TOKENS: the builtin recipe's evaluate.max_new_tokens."""
    recipe = yaml.safe_load((ROOT / "recipes" / "builtin-cpu.yaml").read_text(encoding="utf-8"))
    assert DEFAULT_MAX_TOKENS == recipe["evaluate"]["max_new_tokens"]
