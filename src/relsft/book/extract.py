"""Passages to answers through a served model (`relsft serve`), concurrently and resumably.

Requests, key, timeout and retries are `relsft.client`'s (`Endpoint`: the evaluated prompt, greedy,
max_tokens = evaluate.max_new_tokens; transient failures retried, any other 4xx stops the run),
through `openai.AsyncOpenAI`, at most `concurrency` in flight (the server batches them).

Every answer is asked with its token log-probabilities and appended, with its lines' confidences
(`client.line_confidences`), to a JSONL cache, flushed as it arrives, keyed by sha256 of the
requested model name, the id of what the server serves under it (`/v1/models` root: its model
path), max_tokens, whether the answer format was enforced, and the passage text. A rerun asks only
for what the cache lacks, so a killed run loses at most the passages that were in flight, and the
same text on the same model gives the same answers (greedy) and so the same graph.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..client import Endpoint, Extraction, endpoint_from_args, served_model_id
from ..vocabulary import RelationType, load_relations_or_packaged
from .aliases import AliasFile, read_alias_file
from .graph import build_graph, grounded, without_rare_names, write_outputs
from .sexes import sex_weights, without_sex_contradictions
from .split import Chapter, Passage, passages, read_book


class AnswerCache:
    """Answers by key, read from and appended to a JSONL file (a torn last line is skipped)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.answers: dict[str, str] = {}
        self.confidences: dict[str, dict[str, float] | None] = {}  # None: a record from before confidences
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    self.answers[rec["key"]] = rec["answer"]
                    self.confidences[rec["key"]] = rec.get("confidence")
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
        self.loaded = len(self.answers)
        self._file = None

    @staticmethod
    def key(model: str, served_id: str, max_tokens: int, text: str, enforce_format: bool = False) -> str:
        fields = [model, served_id, max_tokens, text] + (["enforce_format"] if enforce_format else [])
        return hashlib.sha256(json.dumps(fields, ensure_ascii=False).encode()).hexdigest()

    @classmethod
    def keys(cls, endpoint: Endpoint, served_id: str, texts: list[str]) -> list[str]:
        return [cls.key(endpoint.model, served_id, endpoint.max_tokens, t, endpoint.enforce_format) for t in texts]

    def put(self, key: str, answer: str, finish_reason: str | None,
            confidence: dict[str, float] | None = None) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torn = self.path.exists() and self.path.stat().st_size and not self.path.read_bytes().endswith(b"\n")
            self._file = self.path.open("a", encoding="utf-8")
            if torn:  # a run killed mid-write: start on a line of our own
                self._file.write("\n")
        record = {"key": key, "answer": answer, "finish_reason": finish_reason, "confidence": confidence}
        self._file.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        self._file.flush()
        self.answers[key] = answer
        self.confidences[key] = confidence

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class Stats:
    passages: int
    distinct: int
    cached: int
    requested: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        rate = self.requested / self.seconds if self.seconds else 0.0
        return (f"{self.passages} passages ({self.distinct} distinct): {self.cached} from the cache, "
                f"{self.requested} requested in {self.seconds:.1f} s ({rate:.2f} passages/s)")


async def answer_all(texts: list[str], endpoint: Endpoint, cache: AnswerCache, concurrency: int = 8,
                     progress: bool = True, client=None,
                     on_answer: Callable[[str, str, dict[str, float] | None], None] | None = None
                     ) -> tuple[list[str], Stats, str]:
    """The answer to every text (cached or asked for), the counts, and the served model's id.
    `on_answer(text, answer, confidences)` is called once per distinct text as its answer is known
    (`relsft ui` grows its graph with it), with its lines' confidences (None for a cache record from
    before them): the cached ones first, then each as it arrives. `client`: an
    `openai.AsyncOpenAI` (default: the endpoint's), closed at the end."""
    import openai
    from tqdm import tqdm

    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1 (got {concurrency})")
    client = client or endpoint.connect(asynchronous=True)
    try:
        try:
            served = await served_model_id(client, endpoint.model)
        except openai.APIError as e:  # no server, wrong key, ...: a message, not a traceback
            raise RuntimeError(f"{endpoint.url}: {e}") from e
        keys = AnswerCache.keys(endpoint, served, texts)
        todo = {k: t for k, t in zip(keys, texts) if k not in cache.answers}
        stats = Stats(len(texts), len(set(keys)), len(set(keys)) - len(todo))
        if on_answer:
            for k, t in dict(zip(keys, texts)).items():
                if k not in todo:
                    on_answer(t, cache.answers[k], cache.confidences.get(k))
        bar = tqdm(total=stats.distinct, initial=stats.cached, unit=" passages", desc="extract-book",
                   disable=not progress, file=sys.stderr)
        semaphore = asyncio.Semaphore(concurrency)

        async def one(key: str, text: str) -> None:
            async with semaphore:
                try:
                    result = Extraction.of(await client.chat.completions.create(
                        **endpoint.request(text, logprobs=True)))
                except openai.APIError as e:
                    hint = " (a passage too long for the model? lower --max-chars)" if getattr(
                        e, "status_code", None) == 400 else ""
                    raise RuntimeError(f"{endpoint.url}: passage {text[:30]!r}...: {e}{hint}") from e
            cache.put(key, result.answer, result.finish_reason, result.confidence)
            stats.requested += 1
            if on_answer:
                on_answer(text, result.answer, result.confidence)
            bar.update()

        start = time.perf_counter()
        tasks = [asyncio.create_task(one(k, t)) for k, t in todo.items()]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            stats.seconds = time.perf_counter() - start
            bar.close()
    finally:
        await client.close()
    return [cache.answers[k] for k in keys], stats, served


def extract_book(chapters: list[Chapter], endpoint: Endpoint, cache_path: str | Path,
                 relations: dict[str, RelationType], max_chars: int, overlap: int, concurrency: int = 8,
                 progress: bool = True, aliases: AliasFile | None = None,
                 min_confidence: float = 0.0, min_mentions: int = 1, sex_check: bool = True
                 ) -> tuple[dict[str, Any], Stats]:
    _, book = passages(chapters, max_chars, overlap)
    texts = [p.text for p in book]
    cache, sure = AnswerCache(cache_path), {}
    try:
        answers, stats, served = asyncio.run(answer_all(texts, endpoint, cache, concurrency, progress,
                                                        on_answer=lambda text, _, c: sure.setdefault(text, c)))
    finally:
        cache.close()
    graph = book_graph(chapters, book, answers, relations, endpoint, served, max_chars, overlap, aliases,
                       [sure[t] for t in texts], min_confidence, min_mentions, sex_check)
    return graph, stats


def book_graph(chapters: list[Chapter], book: list[Passage], answers: list[str], relations: dict[str, RelationType],
               endpoint: Endpoint, served: str, max_chars: int, overlap: int, aliases: AliasFile | None = None,
               confidences: list[dict[str, float] | None] | None = None, min_confidence: float = 0.0,
               min_mentions: int = 1, sex_check: bool = True) -> dict[str, Any]:
    """The graph written to graph.json: the grounded graph and the settings it was made with."""
    graph = grounded_graph(chapters, book, answers, relations, aliases, confidences, min_confidence, min_mentions,
                           sex_check)
    graph["settings"] = {"model": endpoint.model, "served_model": served, "max_tokens": endpoint.max_tokens,
                         "max_chars": max_chars, "overlap": overlap, "min_confidence": min_confidence,
                         "min_mentions": min_mentions, "sex_check": sex_check}
    return graph


def grounded_graph(chapters: list[Chapter], book: list[Passage], answers: list[str],
                   relations: dict[str, RelationType], aliases: AliasFile | None = None,
                   confidences: list[dict[str, float] | None] | None = None,
                   min_confidence: float = 0.0, min_mentions: int = 1, sex_check: bool = True) -> dict[str, Any]:
    """The graph of the answers' grounded relations, with what was rejected and why. Each check that
    needs the graph's people (the lines contradicting a person's sex, sexes.py; with `min_mentions` > 1
    the lines naming a person the book names fewer times) rebuilds it without the lines it drops."""
    kept, rejected = grounded(book, answers, relations, confidences, min_confidence)
    graph = build_graph(chapters, book, kept, relations, aliases, confidences)
    if sex_check:
        every, _ = grounded(book, answers, relations)  # every grounded line is evidence of a sex, the unsure too
        person = {name: n["id"] for n in graph["nodes"] for name in n["names"]}
        weights = sex_weights(every, relations, person, confidences)
        kept, dropped = without_sex_contradictions(book, kept, relations, person, weights)
        if dropped:
            rejected += dropped
            graph = build_graph(chapters, book, kept, relations, aliases, confidences)
    rare = {name: n["mentions"] for n in graph["nodes"] if n["mentions"] < min_mentions for name in n["names"]}
    if rare:
        kept, dropped = without_rare_names(book, kept, rare, min_mentions)
        rejected += dropped
        graph = build_graph(chapters, book, kept, relations, aliases, confidences)
    graph["rejected"] = sorted(rejected + graph["rejected"], key=lambda r: r["passage"])
    return graph


def book_inputs(args) -> tuple[dict[str, RelationType], AliasFile | None]:
    """relations.tsv (the project's data/, else the packaged one) and the --aliases file (extract-book, ui)."""
    return (load_relations_or_packaged(args.data_dir or "data"),
            read_alias_file(args.aliases) if args.aliases else None)


def run_cli(args, params: dict[str, Any]) -> None:
    """`relsft extract-book`; params may be {} (outside a project): every setting has a default."""
    endpoint = endpoint_from_args(args, params)
    out = Path(args.out)
    relations, aliases = book_inputs(args)
    graph, stats = extract_book(read_book(args.file), endpoint, args.cache or out / "cache.jsonl", relations,
                                args.max_chars, args.overlap, args.concurrency, not args.no_progress, aliases,
                                args.min_confidence, args.min_mentions, not args.no_sex_check)
    print(f"extract-book: {stats.line()}", file=sys.stderr, flush=True)
    paths = write_outputs(graph, out)
    print(f"extract-book: {len(graph['nodes'])} characters ({len(graph['merges'])} merges of names, "
          f"{len(graph['kept_apart'])} names kept apart), {len(graph['edges'])} relations, "
          f"{len(graph['conflicts'])} conflicts, {len(graph['rejected'])} answer lines rejected (with their reasons "
          f"in graph.json) -> {', '.join(map(str, paths))}")
