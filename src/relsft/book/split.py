"""Chapters, sentences and passages, with offsets back into each chapter's text.

Sentences end at 。！？!?… (a run of them counts once: `！？`, `……`) and at line breaks. Inside
quotation marks or brackets (“”「」『』‘’（）《》【】, ASCII `"`) a terminator does not end the
sentence: `他说：“我走了。你保重。”` is one sentence, which ends after the closing mark when a
terminator precedes it. A line break closes every open mark, so one unbalanced quote costs at most
its paragraph. Text without final punctuation is the last sentence; nothing is dropped.

Passages are consecutive sentences, at most `max_chars` characters, the next one repeating the last
`overlap` sentences of the one before (a relation stated across a boundary is seen whole once). A
sentence longer than `max_chars` is cut at its last terminator, else comma, else hard at the limit.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

TERMINATORS = "。！？!?…"
OPENERS = "“「『‘（(《【"
CLOSERS = "”」』’）)》】"
COMMAS = "，、；：,;:"
SPACE = " \t\r\n\u3000"
# `第十二回 …` / `第3章`: a single file with such lines is split into chapters there. A heading is a
# short line with no sentence punctuation, so `第二回合，他又输了。` stays text.
HEADING_RE = re.compile(r"^[ \t\u3000]*第[0-9０-９零〇一二三四五六七八九十百千两]+[章回节卷][^\n。！？!?，,]{0,40}$", re.M)

# Budget, in characters, of one passage. The builtin tokenizer gives a common Han character one token
# and any other character up to 3 byte tokens, so 100 characters are at most ~300 prompt tokens plus
# ~25 for the instruction and template: within format.max_length (512) less evaluate.max_new_tokens (160).
DEFAULT_MAX_CHARS = 100
DEFAULT_OVERLAP = 1


@dataclass(frozen=True)
class Chapter:
    name: str
    text: str


@dataclass(frozen=True)
class Sentence:
    start: int  # offsets into the chapter's text: text[start:end]
    end: int
    text: str


@dataclass(frozen=True)
class Passage:
    chapter: int  # index into the book's chapters
    index: int  # position in the whole book
    first: int  # sentence indices in the chapter, [first, last)
    last: int
    start: int  # character offsets in the chapter, [start, end)
    end: int
    text: str


def _trimmed(text: str, start: int, end: int) -> Sentence | None:
    while start < end and text[start] in SPACE:
        start += 1
    while end > start and text[end - 1] in SPACE:
        end -= 1
    return Sentence(start, end, text[start:end]) if end > start else None


def split_sentences(text: str) -> list[Sentence]:
    out: list[Sentence] = []
    start, depth, in_ascii_quote, i = 0, 0, False, 0

    def emit(end: int) -> None:
        if s := _trimmed(text, start, end):
            out.append(s)

    while i < len(text):
        c = text[i]
        i += 1
        if c == "\n":
            emit(i)
            start, depth, in_ascii_quote = i, 0, False
            continue
        closed = False
        if c in OPENERS or (c == '"' and not in_ascii_quote):
            depth += 1
            in_ascii_quote = in_ascii_quote or c == '"'
        elif c in CLOSERS or c == '"':
            depth = max(0, depth - 1)
            in_ascii_quote = in_ascii_quote and c != '"'
            # `“我走了。”` ends a sentence; `叫“韩立”的人` does not.
            closed = depth == 0 and _ends_in_terminator(text, i - 1)
        if (c in TERMINATORS and depth == 0) or closed:
            while i < len(text) and (text[i] in TERMINATORS or text[i] in CLOSERS):
                i += 1
            emit(i)
            start = i
    emit(len(text))
    return out


def _ends_in_terminator(text: str, closer_at: int) -> bool:
    """Whether the run of closing marks ending at `closer_at` follows a terminator (`。’”`)."""
    j = closer_at - 1
    while j >= 0 and (text[j] in CLOSERS or text[j] == '"'):
        j -= 1
    return j >= 0 and text[j] in TERMINATORS


def fit_sentences(sentences: list[Sentence], chapter_text: str, max_chars: int) -> list[Sentence]:
    """Cut every sentence longer than `max_chars` into pieces that fit, at the best break in reach."""
    out = []
    for s in sentences:
        start = s.start
        while s.end - start > max_chars:
            window = chapter_text[start : start + max_chars]
            cut = max_chars
            for breaks in (TERMINATORS + CLOSERS, COMMAS):
                at = max(window.rfind(c) for c in breaks)
                if at > 0:
                    cut = at + 1
                    break
            if piece := _trimmed(chapter_text, start, start + cut):
                out.append(piece)
            start += cut
        if piece := _trimmed(chapter_text, start, s.end):
            out.append(piece)
    return out


def windows(sentences: list[Sentence], max_chars: int, overlap: int) -> list[tuple[int, int]]:
    """[first, last) sentence ranges: greedy packing, `overlap` sentences repeated, always moving on."""
    ranges, i = [], 0
    while i < len(sentences):
        j, size = i, 0
        while j < len(sentences) and (j == i or size + len(sentences[j].text) <= max_chars):
            size += len(sentences[j].text)
            j += 1
        ranges.append((i, j))
        if j == len(sentences):
            break
        # Repeat up to `overlap` sentences, as many as leave room for the next new one.
        nxt = max(j - overlap, i + 1)
        while nxt < j and sum(len(s.text) for s in sentences[nxt : j + 1]) > max_chars:
            nxt += 1
        i = nxt
    return ranges


def passages(chapters: list[Chapter], max_chars: int = DEFAULT_MAX_CHARS,
             overlap: int = DEFAULT_OVERLAP) -> tuple[list[list[Sentence]], list[Passage]]:
    """Every chapter's sentences (fitted to `max_chars`) and the book's passages, in reading order."""
    if max_chars < 1 or overlap < 0:
        raise ValueError(f"max_chars must be >= 1 and overlap >= 0 (got {max_chars}, {overlap})")
    all_sentences, out = [], []
    for c, chapter in enumerate(chapters):
        sentences = fit_sentences(split_sentences(chapter.text), chapter.text, max_chars)
        all_sentences.append(sentences)
        for first, last in windows(sentences, max_chars, overlap):
            part = sentences[first:last]
            out.append(Passage(c, len(out), first, last, part[0].start, part[-1].end,
                               "".join(s.text for s in part)))
    return all_sentences, out


def natural_key(name: str) -> list:
    """`chapter2` before `chapter10`."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def split_chapters(name: str, text: str) -> list[Chapter]:
    """A file's text, cut at chapter headings (`第一回 …`) if it has any; the heading names the chapter."""
    heads = list(HEADING_RE.finditer(text))
    if not heads:
        return [Chapter(name, text)]
    chapters = [Chapter(name, text[: heads[0].start()])] if text[: heads[0].start()].strip() else []
    for h, nxt in zip(heads, heads[1:] + [None]):
        chapters.append(Chapter(h.group().strip(), text[h.end() : nxt.start() if nxt else len(text)]))
    return chapters


def read_book(path: str | Path) -> list[Chapter]:
    """`-` (stdin), a UTF-8 text file, or a directory of chapter files (natural name order)."""
    if str(path) == "-":
        return split_chapters("stdin", sys.stdin.read())
    path = Path(path)
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")),
                       key=lambda p: natural_key(p.name))
        if not files:
            raise FileNotFoundError(f"{path}: no chapter files")
        return [Chapter(p.name, p.read_text(encoding="utf-8-sig")) for p in files]
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    return split_chapters(path.name, path.read_text(encoding="utf-8-sig"))
