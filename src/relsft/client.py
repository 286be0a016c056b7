"""Python client for a served relsft model (`relsft serve`), on the official `openai` package.

    from relsft.client import RelationClient
    client = RelationClient("http://127.0.0.1:8000/v1", api_key="...")
    client.extract("韩立与紫灵是师徒关系。").relations   # [Relation(a='韩立', b='紫灵', rel='师徒')]
    for piece in client.stream("韩立与紫灵是师徒关系。"): print(piece, end="")

Requests are built as evaluation builds its prompts (`relations.user_messages`, the server applies
the exported chat template) and decoded greedily (temperature 0), so the answers are the evaluated ones.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from .relations import Relation, parse_output, user_messages

DEFAULT_MAX_TOKENS = 160  # params.yaml: evaluate.max_new_tokens


def chat_request(model: str, text: str, max_tokens: int, stream: bool = False) -> dict:
    """The chat-completions arguments every caller sends (sync client, `extract-book`'s async one)."""
    return {"model": model, "messages": user_messages(text), "temperature": 0, "max_tokens": max_tokens,
            "stream": stream}


def delta(chunk) -> tuple[str, str | None]:
    """A streamed chunk's new text and finish reason (either may be empty; `relsft ui` relays them too)."""
    if not chunk.choices:
        return "", None
    choice = chunk.choices[0]
    return choice.delta.content or "", choice.finish_reason


@dataclass(frozen=True)
class Extraction:
    answer: str
    relations: list[Relation]
    bad_lines: list[str]
    finish_reason: str | None

    @classmethod
    def from_answer(cls, answer: str, finish_reason: str | None) -> "Extraction":
        parsed = parse_output(answer)
        return cls(answer, parsed.relations, parsed.bad_lines, finish_reason)


class RelationClient:
    def __init__(self, base_url: str, api_key: str | None = None, model: str = "relsft",
                 max_tokens: int = DEFAULT_MAX_TOKENS, timeout: float = 120):
        from openai import OpenAI

        self.model = model
        self.max_tokens = max_tokens
        self.openai = OpenAI(base_url=base_url, api_key=api_key or os.environ.get("RELSFT_API_KEY") or "none",
                             timeout=timeout, max_retries=0)

    def _request(self, text: str, stream: bool):
        return self.openai.chat.completions.create(**chat_request(self.model, text, self.max_tokens, stream))

    def extract(self, text: str) -> Extraction:
        """One non-streaming request: the whole answer, parsed."""
        choice = self._request(text, stream=False).choices[0]
        return Extraction.from_answer(choice.message.content or "", choice.finish_reason)

    def stream(self, text: str) -> Iterator[str]:
        """Yield the answer piece by piece as the server generates it; returns the Extraction (StopIteration.value)."""
        pieces, finish_reason = [], None
        for chunk in self._request(text, stream=True):
            piece, finish = delta(chunk)
            finish_reason = finish or finish_reason
            if piece:
                pieces.append(piece)
                yield piece
        return Extraction.from_answer("".join(pieces), finish_reason)

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
