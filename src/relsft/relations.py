"""The answer format, `A-B:rel` one per line, and its parser.

`A-B:rel` means "A is B's rel" for asymmetric relations; for symmetric ones the order is free.
Everything that reads model output (evaluation, the client, validation) goes through here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

INSTRUCTION = "从以下小说内容中提取人物关系:"

# Names and relations may not contain the separators, whitespace or the line break.
FIELD = r"[^\s\-:]+"
LINE_RE = re.compile(rf"^(?P<a>{FIELD})-(?P<b>{FIELD}):(?P<rel>{FIELD})$")
# A whole answer that parse_output reads without a bad line: no relation, or lines of `A-B:rel`. Decoding
# under it (vLLM structured outputs, `evaluate.enforce_format`) makes every answer parse: a model that
# starts a third name or an unfinished line is steered to `:` and a label instead.
ANSWER_REGEX = rf"({FIELD}-{FIELD}:{FIELD}(\n{FIELD}-{FIELD}:{FIELD})*)?"


@dataclass(frozen=True)
class Relation:
    a: str
    b: str
    rel: str

    def line(self) -> str:
        return f"{self.a}-{self.b}:{self.rel}"

    def unordered(self) -> tuple[frozenset[str], str]:
        return frozenset((self.a, self.b)), self.rel


@dataclass(frozen=True)
class Parsed:
    relations: list[Relation]
    bad_lines: list[str]

    @property
    def failed(self) -> bool:
        return bool(self.bad_lines)


def parse_line(line: str) -> Relation | None:
    m = LINE_RE.match(line.strip())
    return Relation(m["a"], m["b"], m["rel"]) if m else None


def parse_output(text: str) -> Parsed:
    """Parse a model answer; blank lines are ignored, anything else that is not `A-B:rel` is kept as bad."""
    relations, bad = [], []
    for line in text.strip().splitlines():
        if not line.strip():
            continue
        rel = parse_line(line)
        (relations if rel else bad).append(rel or line)
    return Parsed(relations, bad)


def prompt_text(text: str) -> str:
    return INSTRUCTION + text


def user_messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt_text(text)}]
