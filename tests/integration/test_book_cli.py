"""`relsft extract-book` for real: the CLI against one vLLM server on the tiny taught model
(integration/taught.py's teach_one_relation), killed and resumed.

Expected answers come from the in-process greedy decode of the served directory, passage by passage,
parsed and merged by the same code (the tiny model's names are often wrong: these tests check the
extraction, not the model).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relsft.book.graph import DEFAULT_MIN_CONFIDENCE
from relsft.book.split import passages, read_book
from taught import TAUGHT_KEY as API_KEY, inprocess_graph, without_confidence

MAX_CHARS = 60


@pytest.fixture(scope="module")
def book_dir(taught_model, tmp_path_factory) -> Path:
    """Four chapter files of the one-relation texts the model was taught on, paragraphs and all."""
    with (taught_model.parent / "datasets" / "test.jsonl").open(encoding="utf-8") as f:
        lines = [json.loads(line)["text"] for line in f]
    d = tmp_path_factory.mktemp("book") / "chapters"
    d.mkdir()
    for c in range(4):
        part = lines[c * 12 : (c + 1) * 12]
        paragraphs = ["".join(part[i : i + 3]) for i in range(0, len(part), 3)]
        (d / f"第{c + 1}章.txt").write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def expected_graph(taught_model, book_dir, pipeline_project, tiny_params):
    """What the served directory answers in-process for every passage, merged by the same code."""
    return inprocess_graph(taught_model, read_book(book_dir), MAX_CHARS, 1, tiny_params, pipeline_project / "data")


def cli_env() -> dict[str, str]:
    return dict(os.environ, RELSFT_API_KEY=API_KEY,
                PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def cli(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run the CLI with the server's key in $RELSFT_API_KEY (where --api-key is not given)."""
    proc = subprocess.run(cmd, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-5000:]}"
    return proc


def distinct_passages(book_dir: Path) -> int:
    return len({p.text for p in passages(read_book(book_dir), MAX_CHARS, 1)[1]})


def extract_book_cmd(server, book_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["relsft", "extract-book", str(book_dir), "--url", server.base_url, "--max-chars", str(MAX_CHARS),
            "--overlap", "1", "--out", str(out), "--no-progress", *extra]


def requested(stderr: str) -> tuple[int, int]:
    """(from the cache, requested) from the run's summary line."""
    line = next(x for x in stderr.splitlines() if x.startswith("extract-book:") and "requested" in x)
    words = line.replace(",", "").split()
    return int(words[words.index("from") - 1]), int(words[words.index("requested") - 1])


def cache_lines(path: Path) -> int:
    n = 0
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        try:
            json.loads(line)["answer"]
            n += 1
        except (json.JSONDecodeError, KeyError):
            pass
    return n


def test_default_passage_fits_the_model_with_a_full_answer(pipeline_project, params):
    """DEFAULT_MAX_CHARS rare characters (3 byte tokens each) leave room for evaluate.max_new_tokens."""
    from transformers import AutoTokenizer

    from relsft.book.split import DEFAULT_MAX_CHARS
    from relsft.chat import render_prompt

    tok = AutoTokenizer.from_pretrained(pipeline_project / "models" / "base")  # the builtin tokenizer
    # Characters outside its vocabulary (the General Standard table's 8,105 are in it): 3 byte tokens each.
    outside = (chr(c) for c in range(0x4E00, 0xA000) if len(tok(chr(c), add_special_tokens=False)["input_ids"]) == 3)
    rare = "".join(next(outside) for _ in range(DEFAULT_MAX_CHARS))
    prompt = tok(render_prompt(tok, rare), add_special_tokens=False)["input_ids"]
    assert len(prompt) > 2 * DEFAULT_MAX_CHARS  # they did fall back to bytes
    assert len(prompt) + params["evaluate"]["max_new_tokens"] <= params["format"]["max_length"]


def test_extract_book_matches_inprocess_answers(book_server, book_dir, expected_graph, pipeline_project, tmp_path):
    import networkx as nx

    out = tmp_path / "graph"
    # In the project: max_tokens and relations.tsv from its params.yaml, as the in-process answers.
    # --min-confidence 0: every line, as the in-process graph has them (the default cut is tested below)
    proc = cli(extract_book_cmd(book_server, book_dir, out, "--api-key", API_KEY, "--concurrency", "8",
                                "--min-confidence", "0"), pipeline_project)
    graph = json.loads((out / "graph.json").read_text(encoding="utf-8"))
    assert [c["name"] for c in graph["chapters"]] == ["第1章.txt", "第2章.txt", "第3章.txt", "第4章.txt"]
    assert graph["passages"] == expected_graph["passages"] > 4 * 4  # several passages per chapter
    # Every answer line lands in edges, unparsed or rejected (the tiny model's names are mostly not
    # in the passage): equal lists there are equal answers, line for line.
    assert expected_graph["edges"] or expected_graph["rejected"], "the taught model gave no relation line at all"
    for key in ("nodes", "conflicts", "unparsed", "rejected"):
        assert graph[key] == expected_graph[key], key
    assert without_confidence(graph["edges"]) == without_confidence(expected_graph["edges"])
    # The server's token log-probabilities: every edge and piece of evidence carries a probability.
    sure = [e["confidence"] for e in graph["edges"]]
    assert all(0 < c <= 1 for c in sure) and all(0 < ev["confidence"] <= 1 for e in graph["edges"] for ev in e["evidence"])
    assert requested(proc.stderr) == (0, distinct_passages(book_dir))
    g = nx.read_graphml(out / "graph.graphml")
    assert g.number_of_edges() == len(graph["edges"]) and g.number_of_nodes() == len(graph["nodes"])
    assert len((out / "relations.csv").read_text(encoding="utf-8").splitlines()) == 1 + len(graph["edges"])
    # Again: every answer from the cache, byte-identical files.
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = cli(extract_book_cmd(book_server, book_dir, out, "--min-confidence", "0"), pipeline_project)
    assert requested(again.stderr)[1] == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    if sure:  # --min-confidence keeps exactly the edges stated once with at least that probability
        cut = sorted(sure)[len(sure) // 2]
        strict = cli(extract_book_cmd(book_server, book_dir, tmp_path / "cut", "--cache", str(out / "cache.jsonl"),
                                      "--min-confidence", str(cut)), pipeline_project)
        assert requested(strict.stderr)[1] == 0
        kept = json.loads((tmp_path / "cut" / "graph.json").read_text(encoding="utf-8"))
        # (dropping lines may merge or split names, so the edges are compared by their confidence only)
        assert kept["edges"] and all(e["confidence"] >= cut for e in kept["edges"])
        assert len(kept["edges"]) <= sum(c >= cut for c in sure)
        assert any(r["reason"].startswith("confidence ") for r in kept["rejected"]) == (min(sure) < cut)
    # Unset, the cut is DEFAULT_MIN_CONFIDENCE, recorded in the graph's settings
    cli(extract_book_cmd(book_server, book_dir, tmp_path / "default", "--cache", str(out / "cache.jsonl")),
        pipeline_project)
    default = json.loads((tmp_path / "default" / "graph.json").read_text(encoding="utf-8"))
    assert default["settings"]["min_confidence"] == DEFAULT_MIN_CONFIDENCE > 0
    assert all(e["confidence"] >= DEFAULT_MIN_CONFIDENCE for e in default["edges"])
    assert len(default["edges"]) <= sum(c >= DEFAULT_MIN_CONFIDENCE for c in sure)
    # --no-sex-check keeps the lines the sex check dropped, and only those: rejected lists the rest alike
    cli(extract_book_cmd(book_server, book_dir, tmp_path / "sexless", "--cache", str(out / "cache.jsonl"),
                         "--min-confidence", "0", "--no-sex-check"), pipeline_project)
    sexless = json.loads((tmp_path / "sexless" / "graph.json").read_text(encoding="utf-8"))
    assert sexless["settings"]["sex_check"] is False and graph["settings"]["sex_check"] is True
    sexed = [r for r in graph["rejected"] if " needs other sexes: " in r["reason"]]
    assert [r for r in graph["rejected"] if r not in sexed] == sexless["rejected"]
    assert (len(sexless["edges"]) > len(graph["edges"])) <= bool(sexed)
    # --min-mentions leaves out the relations naming a person the book names fewer times
    if graph["nodes"]:
        least = max(n["mentions"] for n in graph["nodes"])
        rare = {n["id"] for n in graph["nodes"] if n["mentions"] < least}
        cli(extract_book_cmd(book_server, book_dir, tmp_path / "rare", "--cache", str(out / "cache.jsonl"),
                             "--min-mentions", str(least), "--min-confidence", "0"), pipeline_project)
        common = json.loads((tmp_path / "rare" / "graph.json").read_text(encoding="utf-8"))
        assert common["settings"]["min_mentions"] == least
        dropped = [r for r in common["rejected"] if r["reason"].endswith(f" time(s) in the book, fewer than {least}")]
        assert bool(dropped) == bool(rare) and not {n["id"] for n in common["nodes"]} & rare
        assert len(common["edges"]) <= sum(not {e["source"], e["target"]} & rare for e in graph["edges"])


def test_killed_run_resumes_with_only_the_missing_passages(book_server, book_dir, tmp_path):
    bare = tmp_path / "anywhere"  # no params.yaml, no data/: the defaults
    bare.mkdir()
    cache = tmp_path / "cache.jsonl"
    cmd = extract_book_cmd(book_server, book_dir, tmp_path / "resumed", "--cache", str(cache), "--concurrency", "1")
    proc = subprocess.Popen(cmd, cwd=bare, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while cache_lines(cache) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        stderr = proc.communicate()[1].decode()
    assert proc.returncode == -signal.SIGKILL, stderr
    done, distinct = cache_lines(cache), distinct_passages(book_dir)
    assert 3 <= done < distinct, "killed too late to test resuming"

    resumed = cli(cmd, bare)
    assert requested(resumed.stderr) == (done, distinct - done)  # only what the killed run had not cached
    assert cache_lines(cache) == distinct
    whole = tmp_path / "uninterrupted"
    cli(extract_book_cmd(book_server, book_dir, whole, "--concurrency", "4"), bare)
    assert (tmp_path / "resumed" / "graph.json").read_bytes() == (whole / "graph.json").read_bytes()
