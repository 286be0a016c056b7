"""extract-book throughput: passages/s through vLLM (`relsft serve`) with 16 requests in flight
against one request at a time, side by side in one run, on the same model and the same text.

    python bench/extract_book.py [--model export/relsft-model] [--text BOOK] [--passages 64] [--params params.yaml]

Run from the project root after `dvc repro`. The text is BOOK (a file or a directory of chapters,
as `relsft extract-book` reads it) or, by default, datasets/test.jsonl's texts in paragraphs of
three; it is cut into passages as extract-book cuts it and the first --passages of them are used.
Both arms run extract-book's own code (`book.extract.answer_all`, then the graph merge) with an
empty answer cache each, one after the other against one server started with prefix caching off,
so the second arm does not skip the prefill of prompts the first one sent. A few other passages
warm the server up first, unmeasured. Bounded: --passages per arm and --max-seconds per arm (an arm
cut short reports the passages it finished). Writes bench/results/extract_book.json.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from relsft.book.extract import AnswerCache, Endpoint, answer_all, grounded_graph  # noqa: E402
from relsft.book.split import DEFAULT_MAX_CHARS, DEFAULT_OVERLAP, Chapter, passages, read_book  # noqa: E402
from relsft.params import load_params  # noqa: E402
from relsft.serve import ServeSettings, VLLMServer, free_port  # noqa: E402
from relsft.vocabulary import RelationType, load_relations_or_packaged  # noqa: E402

API_KEY = "bench"


def default_book(dataset: Path) -> list[Chapter]:
    with dataset.open(encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    return [Chapter(dataset.name, "\n".join("".join(texts[i : i + 3]) for i in range(0, len(texts), 3)))]


def arm(endpoint: Endpoint, chapters, book, concurrency: int, relations: dict[str, RelationType],
        max_seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cache = AnswerCache(Path(tmp) / "cache.jsonl")
        start = time.perf_counter()
        try:
            answers, _, _ = asyncio.run(asyncio.wait_for(
                answer_all([p.text for p in book], endpoint, cache, concurrency, progress=False), max_seconds))
            graph = grounded_graph(chapters, book, answers, relations)
            edges, cut_short = len(graph["edges"]), False
            digest = hashlib.sha256(json.dumps(graph, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
        except TimeoutError:
            edges, cut_short, digest = None, True, None
        wall = time.perf_counter() - start
        cache.close()
        done = len(cache.answers)
    return {"concurrency": concurrency, "passages": done, "wall_s": round(wall, 3),
            "passages_per_s": round(done / wall, 2), "edges": edges, "graph_sha256": digest, "cut_short": cut_short}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model dir (default: params serve.model)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--text", default=None, help="book file or chapter directory (default: datasets/test.jsonl)")
    ap.add_argument("--passages", type=int, default=64, help="passages per arm")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS)
    ap.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP)
    ap.add_argument("--max-seconds", type=float, default=300, help="time bound per arm")
    ap.add_argument("--out", default="bench/results/extract_book.json")
    args = ap.parse_args()

    params = load_params(args.params)
    chapters = read_book(args.text) if args.text else default_book(Path("datasets/test.jsonl"))
    _, book = passages(chapters, args.max_chars, args.overlap)
    # With prefix caching off, a warm-up passage that is measured again later gains nothing from it.
    warm_up, book = book[-4:], book[: args.passages]
    relations = load_relations_or_packaged("data")  # the project's data/ (dvc.yaml's --data), else the packaged inputs
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = ServeSettings.from_params(params, model=args.model, host="127.0.0.1", port=free_port(),
                                         extra_args=["--no-enable-prefix-caching"])
    print(f"starting vLLM on {settings.model} ...", flush=True)
    with VLLMServer(settings, api_key=API_KEY, log_path=out.with_suffix(".vllm.log")) as server:
        endpoint = Endpoint(server.base_url, API_KEY, max_tokens=params["evaluate"]["max_new_tokens"])
        arm(endpoint, chapters, warm_up, 4, relations, 60)
        rows = []
        for concurrency in args.concurrency:
            print(f"extract-book, {len(book)} passages, concurrency {concurrency} ...", flush=True)
            rows.append(arm(endpoint, chapters, book, concurrency, relations, args.max_seconds))
    base = rows[0]["passages_per_s"]
    for r in rows:
        r["ratio"] = round(r["passages_per_s"] / base, 2) if base else None
    print(f"\nmodel {settings.model}, {len(book)} passages of <= {args.max_chars} chars, "
          f"max_tokens {endpoint.max_tokens}\n")
    print(f"{'concurrency':>11s} {'passages':>8s} {'wall s':>8s} {'passages/s':>10s} {'ratio':>7s}")
    for r in rows:
        note = "  (cut short by --max-seconds)" if r["cut_short"] else ""
        print(f"{r['concurrency']:11d} {r['passages']:8d} {r['wall_s']:8.2f} {r['passages_per_s']:10.2f} "
              f"{r['ratio']:6.2f}x{note}")
    digests = {r["graph_sha256"] for r in rows if not r["cut_short"]}
    # Greedy answers do not depend on what else the server batched: every finished arm, one graph.
    if digests:
        print(f"\ngraphs: {'identical' if len(digests) == 1 else 'DIFFERENT'} across the finished arms")
    out.write_text(json.dumps({"model": str(settings.model), "max_chars": args.max_chars, "rows": rows},
                              indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
