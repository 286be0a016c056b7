"""extract-book throughput: passages/s through vLLM (`relsft serve`) at 1, 4 and 16 requests in flight,
served in bf16 and in float32, side by side in one run, on the same model and the same text, and
where a passage's time goes (queue, prefill, decode: vLLM's own /metrics; the rest is HTTP and client).

    python bench/extract_book.py [--model export/relsft-model] [--text BOOK] [--passages 64] [--params params.yaml]
        [--dtypes bfloat16 float32] [--reserved-cores -1] [--concurrency 1 4 16] [--book-passages 10800]

Run from the project root after `dvc repro`. The text is BOOK (a file or a directory of chapters,
as `relsft extract-book` reads it) or, by default, datasets/test.jsonl's texts in paragraphs of
three; it is cut into passages as extract-book cuts it and the first --passages of them are used.
Both arms run extract-book's own code (`book.extract.answer_all`, then the graph merge) with an
empty answer cache each, one after the other against one server started with prefix caching off,
so the second arm does not skip the prefill of prompts the first one sent. A few other passages
warm the server up first, unmeasured. Bounded: --passages per arm and --max-seconds per arm (an arm
cut short reports the passages it finished). One server per dtype and --reserved-cores value (the
cores vLLM keeps off the model for its API server: `serve.reserved_cores`), one after the other. With
--book-passages N it projects the time of a book of N passages at each arm's rate (红楼梦's 120
chapters: ~10,800 passages, 20x chapters 1-5's 540). Writes bench/results/extract_book.json.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from relsft.book.extract import AnswerCache, Endpoint, answer_all, grounded_graph  # noqa: E402
from relsft.book.split import DEFAULT_MAX_CHARS, DEFAULT_OVERLAP, Chapter, passages, read_book  # noqa: E402
from relsft.params import load_params  # noqa: E402
from relsft.paths import stage_paths  # noqa: E402
from relsft.serve import ServeSettings, VLLMServer, free_port  # noqa: E402
from relsft.vocabulary import RelationType, load_relations_or_packaged  # noqa: E402

API_KEY = "bench"


def default_book(dataset: Path) -> list[Chapter]:
    with dataset.open(encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    return [Chapter(dataset.name, "\n".join("".join(texts[i : i + 3]) for i in range(0, len(texts), 3)))]


# vLLM's per-request histograms (seconds): their _sum and _count over an arm give the mean per passage.
PHASES = {"e2e": "vllm:e2e_request_latency_seconds", "queue": "vllm:request_queue_time_seconds",
          "prefill": "vllm:request_prefill_time_seconds", "decode": "vllm:request_decode_time_seconds"}


def scrape(base_url: str) -> dict[str, float]:
    """The _sum and _count of every PHASES histogram on the server's /metrics, summed over its labels."""
    text = urllib.request.urlopen(base_url.removesuffix("/v1") + "/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        for phase, metric in PHASES.items():
            for suffix in ("_sum", "_count"):
                if name == metric + suffix:
                    out[phase + suffix] = out.get(phase + suffix, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def arm(endpoint: Endpoint, chapters, book, concurrency: int, relations: dict[str, RelationType],
        max_seconds: float) -> dict:
    before = scrape(endpoint.url)
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
    after = scrape(endpoint.url)
    n = after.get("e2e_count", 0) - before.get("e2e_count", 0)
    mean = {f"{phase}_s": round((after.get(phase + "_sum", 0) - before.get(phase + "_sum", 0)) / n, 3) if n else None
            for phase in PHASES}
    # One request at a time, a passage's wall time is its server time plus HTTP and the client's work.
    other = round(wall / done - mean["e2e_s"], 3) if concurrency == 1 and done and mean["e2e_s"] else None
    return {"concurrency": concurrency, "passages": done, "wall_s": round(wall, 3),
            "passages_per_s": round(done / wall, 2), "edges": edges, "graph_sha256": digest, "cut_short": cut_short,
            "mean_per_passage": {**mean, "http_and_client_s": other}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model dir (default: serve.model, else the export stage's --out)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--text", default=None, help="book file or chapter directory (default: datasets/test.jsonl)")
    ap.add_argument("--passages", type=int, default=64, help="passages per arm")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"],
                    help="one server per dtype (default: bfloat16 float32; the model's own: serve.dtype '')")
    ap.add_argument("--reserved-cores", type=int, nargs="+", default=[-1],
                    help="one server per value of serve.reserved_cores (-1: relsft serve's default)")
    ap.add_argument("--book-passages", type=int, default=0, help="project the time of a book this long")
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
    model = args.model or params["serve"].get("model") or stage_paths("export")["out"]
    rows = []
    for dtype, reserved in [(d, r) for d in args.dtypes for r in args.reserved_cores]:
        settings = ServeSettings.from_params(params, model=model, host="127.0.0.1", port=free_port(),
                                             dtype=dtype or None, reserved_cores=reserved,
                                             extra_args=["--no-enable-prefix-caching"])
        print(f"starting vLLM on {settings.model} in {settings.dtype}, reserved cores {reserved} ...", flush=True)
        log = out.with_suffix(f".{settings.dtype}.reserved{reserved}.vllm.log")
        with VLLMServer(settings, api_key=API_KEY, log_path=log) as server:
            endpoint = Endpoint.as_evaluated(server.base_url, API_KEY, "relsft", params["evaluate"])
            arm(endpoint, chapters, warm_up, 4, relations, 120)
            for concurrency in args.concurrency:
                print(f"extract-book, {len(book)} passages, {settings.dtype}, reserved cores {reserved}, "
                      f"concurrency {concurrency} ...", flush=True)
                rows.append({"dtype": settings.dtype, "reserved_cores": reserved,
                             **arm(endpoint, chapters, book, concurrency, relations, args.max_seconds)})
    base = rows[0]["passages_per_s"]
    for r in rows:
        r["ratio"] = round(r["passages_per_s"] / base, 2) if base else None
        if args.book_passages and r["passages_per_s"]:
            r["book_hours"] = round(args.book_passages / r["passages_per_s"] / 3600, 2)
    print(f"\nmodel {settings.model}, {len(book)} passages of <= {args.max_chars} chars, "
          f"max_tokens {endpoint.max_tokens}; mean seconds per passage from vLLM's /metrics\n")
    print(f"{'dtype':>9s} {'resv.':>5s} {'conc.':>5s} {'passages':>8s} {'wall s':>7s} {'pass./s':>7s} {'ratio':>6s} "
          f"{'e2e':>6s} {'queue':>6s} {'prefill':>7s} {'decode':>6s} {'http+cl':>7s}"
          + (f" {'book h':>6s}" if args.book_passages else ""))
    for r in rows:
        m = {k: ("-" if v is None else f"{v:.2f}") for k, v in r["mean_per_passage"].items()}
        note = "  (cut short by --max-seconds)" if r["cut_short"] else ""
        reserved = "auto" if r["reserved_cores"] < 0 else str(r["reserved_cores"])
        print(f"{r['dtype']:>9s} {reserved:>5s} {r['concurrency']:5d} {r['passages']:8d} {r['wall_s']:7.1f} "
              f"{r['passages_per_s']:7.2f} {r['ratio']:5.2f}x {m['e2e_s']:>6s} {m['queue_s']:>6s} "
              f"{m['prefill_s']:>7s} {m['decode_s']:>6s} {m['http_and_client_s']:>7s}"
              + (f" {r.get('book_hours', 0):6.1f}" if args.book_passages else "") + note)
    for dtype in dict.fromkeys(r["dtype"] for r in rows):  # as served ('' in --dtypes: the model's own)
        digests = {r["graph_sha256"] for r in rows if r["dtype"] == dtype and not r["cut_short"]}
        # float32 greedy answers do not depend on what else the server batched; bf16's may (rounding).
        if digests:
            print(f"graphs in {dtype}: {'identical' if len(digests) == 1 else 'DIFFERENT'} across the finished arms")
    out.write_text(json.dumps({"model": str(settings.model), "max_chars": args.max_chars,
                               "book_passages": args.book_passages, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
