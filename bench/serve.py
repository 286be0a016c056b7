"""Serving throughput: vLLM (`relsft serve`) with 1, 4 and 16 concurrent streams vs transformers
`generate` one request at a time (the way a plain script serves), side by side in one run.

    python bench/serve.py [--model export/relsft-model] [--requests 64] [--max-new-tokens N] [--params params.yaml]

Run from the project root after `dvc repro` (it reads datasets/test.jsonl for prompts). Every arm
decodes test texts greedily through the same chat template, up to evaluate.max_new_tokens; each
vLLM arm gets texts that no earlier vLLM arm sent, so none is served from vLLM's prefix cache.
The baseline runs first, before the server starts, so the two never share the cores. The server
listens on 127.0.0.1 only and is stopped (its whole process group) at the end. A last arm runs
the server's engine alone (vLLM's offline `LLM`, same settings, 16 sequences at a time, no HTTP):
within run-to-run noise, the ceiling of any server configuration on this machine and model.

Reported per arm: output tokens/s (completion tokens / wall time), ratio to the baseline, and
time to first token p50/p95. Writes bench/results/serve.json. Bounded: --requests per arm
(default 64, at least the number of streams) and --max-seconds per arm (default 300).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from relsft.params import load_params  # noqa: E402
from relsft.paths import stage_paths  # noqa: E402
from relsft.relations import user_messages  # noqa: E402
from relsft.serve import ServeSettings, VLLMServer, free_port, vllm_env  # noqa: E402

API_KEY = "bench"


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def summarize(name: str, streams: int, tokens: list[int], ttft: list[float], wall: float) -> dict:
    ms = {q: round(1000 * percentile(ttft, q), 1) if ttft else None for q in (0.5, 0.95)}
    return {"arm": name, "streams": streams, "requests": len(tokens), "output_tokens": sum(tokens),
            "wall_s": round(wall, 3), "tokens_per_s": round(sum(tokens) / wall, 1),
            "ttft_p50_ms": ms[0.5], "ttft_p95_ms": ms[0.95]}


def bench_transformers(model_dir: str, texts: list[str], max_new_tokens: int, max_seconds: float) -> dict:
    """One request at a time: tokenize, generate (greedy, stops at eos), decode."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    from relsft.chat import render_prompt
    from relsft.decoding import load_for_inference

    class FirstToken(BaseStreamer):
        # generate() puts the prompt first, then every new token: the second put is the first token.
        def __init__(self):
            self.puts, self.first = 0, None

        def put(self, value):
            self.puts += 1
            if self.puts == 2:
                self.first = time.perf_counter()

        def end(self):
            pass

    model, tok = load_for_inference(model_dir)
    eos = tok.convert_tokens_to_ids(tok.eos_token)
    tokens, ttft = [], []
    start = time.perf_counter()
    with torch.inference_mode():
        for text in texts:
            t0, streamer = time.perf_counter(), FirstToken()
            enc = tok(render_prompt(tok, text), return_tensors="pt", add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                                 pad_token_id=tok.pad_token_id, streamer=streamer)
            ids = out[0, enc["input_ids"].shape[1]:].tolist()
            tokens.append(ids.index(eos) + 1 if eos in ids else len(ids))
            ttft.append(streamer.first - t0)
            if time.perf_counter() - start > max_seconds:
                break
    return summarize("transformers generate", 1, tokens, ttft, time.perf_counter() - start)


def bench_vllm(openai_client, texts: list[str], streams: int, max_new_tokens: int, max_seconds: float) -> dict:
    deadline = time.perf_counter() + max_seconds

    def one(text: str) -> tuple[int, float] | None:
        if time.perf_counter() > deadline:
            return None
        t0, first, usage = time.perf_counter(), None, None
        stream = openai_client.chat.completions.create(
            model="relsft", messages=user_messages(text), temperature=0, max_tokens=max_new_tokens, stream=True,
            stream_options={"include_usage": True})
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter()
            usage = chunk.usage or usage
        return usage.completion_tokens, (first or time.perf_counter()) - t0

    start = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        done = [r for r in pool.map(one, texts) if r]
    wall = time.perf_counter() - start
    return summarize("vLLM", streams, [n for n, _ in done], [t for _, t in done], wall)


def bench_engine(settings: ServeSettings, texts: list[str], warm_up: list[str], streams: int,
                 max_new_tokens: int) -> dict:
    """The server's engine alone: vLLM's offline `LLM` with the same settings, `streams` sequences at a
    time, no HTTP, SSE or client: what any server configuration can reach here, up to noise."""
    from vllm import LLM, SamplingParams

    os.environ.update({k: v for k, v in vllm_env(settings, API_KEY).items() if k.startswith("VLLM_CPU")})
    llm = LLM(**settings.engine_args(), max_num_seqs=streams)
    greedy = SamplingParams(temperature=0, max_tokens=max_new_tokens)
    conversations = [user_messages(t) for t in texts]
    llm.chat([user_messages(t) for t in warm_up], greedy, use_tqdm=False)  # not measured
    start = time.perf_counter()
    outputs = llm.chat(conversations, greedy, use_tqdm=False)
    wall = time.perf_counter() - start
    return summarize("vLLM engine, no HTTP", streams, [len(o.outputs[0].token_ids) for o in outputs], [], wall)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model dir (default: serve.model, else the export stage's --out)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--requests", type=int, default=64, help="requests per arm (at least the stream count)")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: evaluate.max_new_tokens")
    ap.add_argument("--max-seconds", type=float, default=300, help="time bound per arm")
    ap.add_argument("--no-engine-arm", dest="engine_arm", action="store_false",
                    help="skip the engine-alone ceiling (offline LLM, most streams at a time)")
    ap.add_argument("--out", default="bench/results/serve.json")
    args = ap.parse_args()

    from openai import OpenAI

    params = load_params(args.params)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = args.model or params["serve"].get("model") or stage_paths("export")["out"]
    settings = ServeSettings.from_params(params, model=model, host="127.0.0.1", port=free_port())
    max_new = args.max_new_tokens or params["evaluate"]["max_new_tokens"]
    with open("datasets/test.jsonl", encoding="utf-8") as f:
        pool = [json.loads(line)["text"] for line in f]
    n = max(args.requests, max(args.streams))

    def fresh(arm: int) -> list[str]:
        # Each vLLM arm gets texts no earlier arm sent: vLLM caches prompt prefixes, and a repeated
        # prompt would skip the prefill that real traffic pays. (Wraps only when the split is short.)
        return [pool[(arm * n + i) % len(pool)] for i in range(n)]

    print(f"transformers generate, one request at a time: {n} requests ...", flush=True)
    rows = [bench_transformers(settings.model, fresh(0), max_new, args.max_seconds)]
    print("starting vLLM ...", flush=True)
    with VLLMServer(settings, api_key=API_KEY, log_path=out.with_suffix(".vllm.log")) as server:
        client = OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=300)
        bench_vllm(client, pool[-2:], 1, max_new, 60)  # warm-up, not measured
        for arm, streams in enumerate(args.streams, start=1):
            print(f"vLLM, {streams} concurrent streams ...", flush=True)
            rows.append(bench_vllm(client, fresh(arm), streams, max_new, args.max_seconds))
    if args.engine_arm:  # after the server is gone, so the two never share the cores; a new cache
        print(f"vLLM engine alone, {max(args.streams)} at a time ...", flush=True)
        rows.append(bench_engine(settings, fresh(0), pool[-2:], max(args.streams), max_new))

    base = rows[0]["tokens_per_s"]
    for r in rows:
        r["ratio"] = round(r["tokens_per_s"] / base, 2)
    print(f"\nmodel {settings.model}, max_new_tokens {max_new}\n")
    print(f"{'arm':24s} {'streams':>7s} {'requests':>8s} {'out tok/s':>10s} {'ratio':>7s} {'TTFT p50':>9s} {'TTFT p95':>9s}")
    for r in rows:
        ttft = "".join(f"{v:7.1f}ms" if v is not None else f"{'-':>9s}" for v in (r["ttft_p50_ms"], r["ttft_p95_ms"]))
        print(f"{r['arm']:24s} {r['streams']:7d} {r['requests']:8d} {r['tokens_per_s']:10.1f} {r['ratio']:6.2f}x  {ttft}")
    out.write_text(json.dumps({"model": str(settings.model), "max_new_tokens": max_new, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
