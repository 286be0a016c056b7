"""Python client for a served relsft model (`relsft serve`), on the official `openai` package.

    from relsft.client import RelationClient
    client = RelationClient("http://127.0.0.1:8000/v1", api_key="...")
    client.extract("韩立与紫灵是师徒关系。").relations   # [Relation(a='韩立', b='紫灵', rel='师徒')]
    for piece in client.stream("韩立与紫灵是师徒关系。"): print(piece, end="")

Every call relsft makes to a served model goes through this module (`relsft extract`,
`extract-book`, `evaluate --endpoint`, `relsft ui`'s backend), so they agree on:

- the request (`Endpoint.request`): the evaluated prompt (`relations.user_messages`; the server
  applies the exported chat template), greedy (temperature 0), at most `max_tokens` answer tokens,
  and, where the model was evaluated so (`evaluate.enforce_format`), decoding held to the answer
  format (vLLM's `structured_outputs` with `relations.ANSWER_REGEX`), so the answers are the
  evaluated ones;
- the key: the one given, else $RELSFT_API_KEY (which `relsft serve` reads too);
- the timeout of one answer, and the retries. The retry policy is the openai client's own, the
  same for `OpenAI` and `AsyncOpenAI`, streamed or not (a stream is retried before its first
  chunk): connection errors, timeouts, 408, 409, 429 and 5xx are retried with exponential backoff
  (openai 3.54: 0.5 s doubling up to 8 s, less up to 25% jitter; a server's Retry-After wins); any
  other 4xx fails at once, since asking again cannot fix it. Only how many retries is ours:
  RETRIES for batches, INTERACTIVE_RETRIES where a person waits, none for a probe
  (`served_model_id`: is the server there at all?).

Beyond the core parser only `openai` is imported (the `client` extra installs nothing else), and
only when a client is made.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from .relations import ANSWER_REGEX, Relation, parse_output, user_messages

API_KEY_ENV = "RELSFT_API_KEY"
DEFAULT_PORT = 8000  # where `relsft serve` listens unless told otherwise (ServeSettings.port)
# The builtin recipe's evaluate.max_new_tokens: the answer budget of a caller with no params.yaml
# to read it from (inside a project it comes from params: `endpoint_from_args`). A test keeps them equal.
DEFAULT_MAX_TOKENS = 160
TIMEOUT = 120.0  # seconds for one whole answer; a request that takes longer is retried
RETRIES = 5  # a batch waits out ~15 s of a restarting or saturated server
INTERACTIVE_RETRIES = 2  # a person is waiting: a server that is not there is said within ~2 s


@dataclass(frozen=True)
class Endpoint:
    """A served model and how to ask it: the one place that makes clients and requests."""
    url: str
    api_key: str | None = None  # None: $RELSFT_API_KEY
    model: str = "relsft"
    max_tokens: int = DEFAULT_MAX_TOKENS
    timeout: float = TIMEOUT
    retries: int = RETRIES
    enforce_format: bool = False  # ask vLLM to hold the answer to ANSWER_REGEX (evaluate.enforce_format)

    @classmethod
    def as_evaluated(cls, url: str, api_key: str | None, model: str, evaluate: dict[str, Any]) -> "Endpoint":
        """`url` asked as the evaluate stage decodes: `evaluate` is params' (over its recipe) evaluate
        section, for max_new_tokens and enforce_format; {} outside a project: DEFAULT_MAX_TOKENS, free format."""
        return cls(url, api_key, model, evaluate.get("max_new_tokens", DEFAULT_MAX_TOKENS),
                   enforce_format=evaluate.get("enforce_format", False))

    def connect(self, asynchronous: bool = False, **options: Any):
        """An `openai.OpenAI` (`AsyncOpenAI`) with this endpoint's key, timeout and retries;
        `options` go to its constructor too (e.g. an `http_client`)."""
        import openai

        cls = openai.AsyncOpenAI if asynchronous else openai.OpenAI
        return cls(base_url=self.url, api_key=self.api_key or os.environ.get(API_KEY_ENV) or "none",
                   timeout=self.timeout, max_retries=self.retries, **options)

    def request(self, text: str, stream: bool = False, logprobs: bool = False) -> dict[str, Any]:
        """The chat-completions arguments that ask for `text`'s relations (with `logprobs`: and the
        log-probability of every answer token, for `line_confidences`)."""
        extra = {"extra_body": {"structured_outputs": {"regex": ANSWER_REGEX}}} if self.enforce_format else {}
        return {"model": self.model, "messages": user_messages(text), "temperature": 0,
                "max_tokens": self.max_tokens, "stream": stream, **({"logprobs": True} if logprobs else {}), **extra}


def interactive(endpoint: Endpoint) -> Endpoint:
    """`endpoint` with the retries of a request a person waits for."""
    return replace(endpoint, retries=min(endpoint.retries, INTERACTIVE_RETRIES))


def endpoint_from_args(args, params: dict[str, Any]) -> Endpoint:
    """The served model of `--url/--api-key/--model-name` (extract, extract-book, ui), asked as the
    evaluate stage decodes: evaluate.max_new_tokens and evaluate.enforce_format (params.yaml over its
    recipe); params may be {} (outside a project): then DEFAULT_PORT, DEFAULT_MAX_TOKENS, free format."""
    port = params.get("serve", {}).get("port", DEFAULT_PORT)
    return Endpoint.as_evaluated(args.url or f"http://127.0.0.1:{port}/v1", args.api_key, args.model_name,
                                 params.get("evaluate", {}))


def served_id(served: list, name: str) -> str:
    """What a server's model list (/v1/models) serves as `name`: vLLM reports the model's path as `root`."""
    for m in served:
        if m.id == name:
            return getattr(m, "root", None) or m.id
    raise ValueError(f"the server serves no model {name!r} (it serves: {', '.join(m.id for m in served)})")


async def served_model_id(client, name: str) -> str:
    """`served_id` from an AsyncOpenAI `client`'s server. A probe, asked once: a server that is not
    there is said at once, not after the retries."""
    return served_id((await client.with_options(max_retries=0).models.list()).data, name)


def line_confidences(answer: str, tokens: list[tuple[str, float]]) -> dict[str, float]:
    """How sure the model was of each line of its answer: the probability it gave the line's tokens
    (their log-probabilities summed), keyed by the stripped line.

    `tokens` are the answer's (text, logprob) as the OpenAI API's `logprobs` returns them. A token of
    line breaks counts toward the line after it (the choice to write another relation rather than
    stop), so the first token of the first line carries the choice to answer at all. Lines are
    counted by their breaks, never by character offsets: a token that is part of a character decodes
    to U+FFFD on the server. A last token the answer does not end with (the end-of-turn token) is left out.
    """
    if tokens and tokens[-1][0] and not answer.endswith(tokens[-1][0]):
        tokens = tokens[:-1]
    logprob: dict[int, float] = {}
    line = 0
    for text, lp in tokens:
        body = text.lstrip("\n")
        line += text.count("\n") - body.count("\n")  # leading breaks: this token opens the next line
        logprob[line] = logprob.get(line, 0.0) + lp
        line += body.count("\n")
    out: dict[str, float] = {}
    for i, text in enumerate(answer.split("\n")):
        if text.strip() and i in logprob:
            out[text.strip()] = max(out.get(text.strip(), 0.0), round(math.exp(logprob[i]), 6))
    return out


@dataclass(frozen=True)
class Extraction:
    answer: str
    relations: list[Relation]
    bad_lines: list[str]
    finish_reason: str | None
    confidence: dict[str, float] | None = None  # line -> probability (line_confidences), if logprobs were asked

    @classmethod
    def from_answer(cls, answer: str, finish_reason: str | None,
                    confidence: dict[str, float] | None = None) -> "Extraction":
        parsed = parse_output(answer)
        return cls(answer, parsed.relations, parsed.bad_lines, finish_reason, confidence)

    @classmethod
    def of(cls, response) -> "Extraction":
        """A (not streamed) chat completion's answer, parsed, with its lines' confidences if it has logprobs."""
        choice = response.choices[0]
        answer = choice.message.content or ""
        content = getattr(choice.logprobs, "content", None) if choice.logprobs else None
        confidence = None if content is None else line_confidences(answer, [(t.token, t.logprob) for t in content])
        return cls.from_answer(answer, choice.finish_reason, confidence)


class Streamed:
    """An answer as its streamed chunks arrive (`RelationClient.stream`; `relsft ui` relays them)."""

    def __init__(self):
        self.pieces: list[str] = []
        self.finish_reason: str | None = None

    def add(self, chunk) -> str:
        """The chunk's new text ('' if none); its finish reason is kept."""
        if not chunk.choices:
            return ""
        choice = chunk.choices[0]
        self.finish_reason = choice.finish_reason or self.finish_reason
        self.pieces.append(choice.delta.content or "")
        return self.pieces[-1]

    def extraction(self) -> Extraction:
        return Extraction.from_answer("".join(self.pieces), self.finish_reason)


class RelationClient:
    """A served model, synchronously. The async callers (extract-book, the UI) use `Endpoint.connect`."""

    def __init__(self, base_url: str, api_key: str | None = None, model: str = "relsft",
                 max_tokens: int = DEFAULT_MAX_TOKENS, timeout: float = TIMEOUT, retries: int = RETRIES,
                 enforce_format: bool = False):
        self.endpoint = Endpoint(base_url, api_key, model, max_tokens, timeout, retries, enforce_format)
        self.openai = self.endpoint.connect()

    @classmethod
    def at(cls, endpoint: Endpoint) -> "RelationClient":
        return cls(endpoint.url, endpoint.api_key, endpoint.model, endpoint.max_tokens, endpoint.timeout,
                   endpoint.retries, endpoint.enforce_format)

    @property
    def model(self) -> str:
        return self.endpoint.model

    @property
    def max_tokens(self) -> int:
        return self.endpoint.max_tokens

    def served_model_id(self) -> str:
        """`served_id` of this client's model; a probe, as `served_model_id` (the async one)."""
        return served_id(self.openai.with_options(max_retries=0).models.list().data, self.model)

    def extract(self, text: str) -> Extraction:
        """One non-streaming request: the whole answer, parsed."""
        return Extraction.of(self.openai.chat.completions.create(**self.endpoint.request(text)))

    def stream(self, text: str) -> Iterator[str]:
        """Yield the answer piece by piece as the server generates it; returns the Extraction (StopIteration.value)."""
        answer = Streamed()
        for chunk in self.openai.chat.completions.create(**self.endpoint.request(text, stream=True)):
            if piece := answer.add(chunk):
                yield piece
        return answer.extraction()

    def stream_extract(self, text: str, on_piece=None) -> Extraction:
        """Stream, calling `on_piece(str)` for every piece, and return the parsed Extraction."""
        gen = self.stream(text)
        while True:
            try:
                piece = next(gen)
            except StopIteration as done:
                return done.value
            if on_piece:
                on_piece(piece)
