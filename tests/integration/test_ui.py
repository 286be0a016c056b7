"""`relsft ui`: the page in a real headless Chromium (Debian's `chromium`, driven by Playwright) against
the backend started by the CLI and one vLLM server on the taught model (integration/conftest.py's
book_server: it knows STORY by heart, so its graph has real characters, evidence and a conflict), with
an alias file that names 药老 药尘.
The backend without a browser is tests/unit/test_ui_backend.py.

What the page shows is compared with what relsft computes in-process for the same text: the
greedy answer of the served directory, merged by extract-book's code (taught.inprocess_graph).
The graph is read from the graph library's state (`window.relsftGraph`), not from pixels.
RELSFT_UI_SCREENSHOT=path saves a screenshot of the page with its graph (the README's).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from taught import (STORY, STORY_MAX_CHARS, TAUGHT_KEY, inprocess_answers, inprocess_graph, story_examples,
                    without_confidence)
from relsft.book.graph import DEFAULT_MIN_CONFIDENCE
from relsft.book.split import Chapter
from relsft.serve import free_port

CHROMIUM = "/usr/bin/chromium"
# No sandbox (root in a container), and none of the background traffic a browser starts by itself:
# the page must need nothing but its backend.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
FAST = 5_000  # ms: what "says so instead of hanging" means here
IDLE_MS = 15_000  # static/app.js: how long the page waits for a silent backend


class Backend:
    """`relsft ui` in its own process, as a user starts it."""

    def __init__(self, cwd: Path, url: str, key: str, *extra: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/"
        env = dict(os.environ, RELSFT_API_KEY=key,
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        self.log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a full pipe would block the server
        self.proc = subprocess.Popen(["relsft", "ui", "--url", url, "--port", str(self.port), "--max-chars",
                                      str(STORY_MAX_CHARS), "--overlap", "1", *extra], cwd=cwd, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.base, timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    self.log.seek(0)
                    raise AssertionError(f"relsft ui did not start:\n{self.log.read()}")
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 820})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    yield pg
    context.close()


@pytest.fixture(scope="module")
def alias_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("aliases") / "aliases.tsv"
    path.write_text("药尘|药老\n", encoding="utf-8")  # STORY's 药老 is 药尘
    return path


@pytest.fixture(scope="module")
def ui(book_server, pipeline_project, alias_file):
    """The backend in the project (params.yaml: the answer length the in-process answers use)."""
    backend = Backend(pipeline_project, book_server.base_url, TAUGHT_KEY, "--aliases", str(alias_file))
    yield backend
    backend.stop()


@pytest.fixture(scope="module")
def story_file(tmp_path_factory) -> Path:
    """STORY as a chapter file, in paragraphs (line breaks end sentences; the passages stay the taught ones)."""
    path = tmp_path_factory.mktemp("story") / "第一回.txt"
    sentences = [s for s, _ in STORY]
    path.write_text("\n".join("".join(sentences[i:i + 3]) for i in range(0, len(sentences), 3)) + "\n",
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def expected(taught_model, story_file, tiny_params, pipeline_project, alias_file):
    chapters = [Chapter(story_file.name, story_file.read_text(encoding="utf-8"))]
    graph = inprocess_graph(taught_model, chapters, STORY_MAX_CHARS, 1, tiny_params, pipeline_project / "data",
                            alias_file)
    assert len(graph["edges"]) >= 6 and graph["conflicts"], f"the taught model did not learn STORY: {graph}"
    assert graph["merges"] == [{"into": "药尘", "names": ["药老"], "reason": "alias file"}], graph["merges"]
    return graph


def record(page, selector: str) -> None:
    """Every text the element takes from now on, into window.__seen[selector] (one entry per DOM update)."""
    page.evaluate("""(sel) => {
        window.__seen = window.__seen || {};
        const seen = window.__seen[sel] = [];
        new MutationObserver((records) => {
            for (const r of records) for (const n of r.addedNodes) seen.push(n.textContent);
        }).observe(document.querySelector(sel), {childList: true, subtree: true});
    }""", selector)


def seen(page, selector: str) -> list[str]:
    return page.evaluate("(sel) => window.__seen[sel]", selector)


def test_a_pasted_passage_streams_into_the_answer_box(ui, page, taught_model, tiny_params):
    passage = story_examples()[0]["text"]
    [inprocess] = inprocess_answers(taught_model, [passage], tiny_params)
    page.goto(ui.base)
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('model relsft')")
    assert page.locator("#banner").is_hidden()
    record(page, "#answer")
    page.fill("#text", passage)
    page.click("#extract")
    page.wait_for_selector("#answer[data-state=done]", state="attached")
    final = page.eval_on_selector("#answer", "e => e.textContent")
    updates = seen(page, "#answer")
    # The answer grew piece by piece: several updates, each a longer prefix of the final answer.
    assert len(updates) >= 5 and updates[-1] == final, updates
    assert all(a != b and b.startswith(a) for a, b in zip(updates, updates[1:])), updates
    assert final == inprocess and final.count("\n") >= 1, (final, inprocess)  # several relations
    lines = [line.split(":") for line in final.splitlines()]
    assert page.locator("#relations li").all_inner_texts() == [f"{p.replace('-', ' → ')}: {r}" for p, r in lines]


GRAPH_STATE = """() => ({
    nodes: relsftGraph.nodes().map((n) => n.data()).map(({id, names, mentions, passages}) =>
        ({id, names, mentions, passages})),
    edges: relsftGraph.edges().map((e) => e.data()).map((d) => ({source: d.source, target: d.target,
        relation: d.relation, symmetric: d.symmetric, conflict: d.conflict,
        passages: d.evidence.map((v) => v.passage)})),
})"""


def edge_rows(graph) -> list[dict]:
    return [{"source": e["source"], "target": e["target"], "relation": e["relation"], "symmetric": e["symmetric"],
             "conflict": e["conflict"], "passages": [ev["passage"] for ev in e["evidence"]]} for e in graph["edges"]]


def test_an_uploaded_chapter_grows_the_graph_and_an_edge_shows_its_evidence(ui, page, expected, story_file):
    import networkx as nx

    page.goto(ui.base)
    record(page, "#progress")
    page.set_input_files("#file", str(story_file))
    page.click("#build")
    page.wait_for_selector("#progress[data-state=done]", timeout=120_000, state="attached")
    assert page.locator("#banner").is_hidden()
    # It grew: one update per answered passage (STORY's passages are all different), in the progress line.
    total = expected["passages"]
    done = [int(t.split(" / ")[0]) for t in seen(page, "#progress") if f" / {total} passages answered" in t]
    assert done == list(range(total + 1)), seen(page, "#progress")
    # The graph library's state is extract-book's graph of the same text.
    state = page.evaluate(GRAPH_STATE)
    assert sorted(state["nodes"], key=lambda n: n["id"]) == expected["nodes"]
    assert sorted(state["edges"], key=lambda e: (e["source"], e["target"], e["relation"])) == edge_rows(expected)
    # Contradicting labels are drawn flagged (dashed, a warning sign), the others are not.
    drawn = page.evaluate("""() => relsftGraph.edges().map((e) => [e.data('conflict'), e.style('line-style'),
                                                                   e.data('label').startsWith('⚠')])""")
    assert sorted(drawn) == sorted([True, "dashed", True] if e["conflict"] else [False, "solid", False]
                                   for e in expected["edges"])
    # The downloads are the graph's files.
    link = page.get_attribute("#download-json", "href")
    graph = json.loads(urllib.request.urlopen(ui.base + link, timeout=10).read())
    assert graph.pop("settings")["max_chars"] == STORY_MAX_CHARS
    # ... with the confidences of the served answers' lines, which the in-process answers have not.
    confidences = [e.pop("confidence") for e in graph["edges"]]
    assert all(0 < c <= 1 for c in confidences) and all(
        0 < ev.pop("confidence") <= 1 for e in graph["edges"] for ev in e["evidence"]), graph["edges"]
    assert graph == {**expected, "edges": without_confidence(expected["edges"])}
    graphml = ui.base + page.get_attribute("#download-graphml", "href")
    g = nx.read_graphml(urllib.request.urlopen(graphml, timeout=10))
    assert g.number_of_nodes() == len(expected["nodes"]) and g.number_of_edges() == len(expected["edges"])

    # The slider starts at extract-book's default cut; at 0 every relation is drawn.
    slide = "(v) => { const s = document.querySelector('#min-confidence'); s.value = v; s.dispatchEvent(new Event('input')); }"
    drawn_edges = "() => relsftGraph.edges().filter((e) => e.style('display') === 'element').length"
    sure = sum(c >= DEFAULT_MIN_CONFIDENCE for c in confidences)
    assert page.input_value("#min-confidence") == str(DEFAULT_MIN_CONFIDENCE)
    assert page.evaluate(drawn_edges) == sure
    assert page.inner_text("#shown") == f"{sure} of {len(confidences)} relations shown"
    page.evaluate(slide, "0")
    assert page.evaluate(drawn_edges) == len(confidences)

    # Click the edge with the most evidence where it is drawn: the panel shows every passage stating it.
    edge = max(expected["edges"], key=lambda e: len(e["evidence"]))
    assert len(edge["evidence"]) >= 2  # overlapping passages both state it
    edge_id = json.dumps([edge["source"], edge["target"], edge["relation"]], ensure_ascii=False,
                         separators=(",", ":"))  # app.js's edgeId: JSON.stringify
    box = page.locator("#graph").bounding_box()
    point = page.evaluate("(id) => relsftGraph.getElementById(id).renderedMidpoint()", edge_id)
    page.mouse.click(box["x"] + point["x"], box["y"] + point["y"])
    page.wait_for_selector("#evidence li.passage")
    shown = page.locator("#evidence li.passage").all_inner_texts()
    assert len(shown) == len(edge["evidence"])
    drawn_edge = next(e for e in json.loads(urllib.request.urlopen(ui.base + link, timeout=10).read())["edges"]
                      if (e["source"], e["target"], e["relation"]) == (edge["source"], edge["target"], edge["relation"]))
    for text, ev in zip(shown, drawn_edge["evidence"]):
        assert text.startswith(ev["text"]) and f"passage {ev['passage']}" in text
        assert f"confidence {ev['confidence']:.2f}" in text
    assert page.inner_text("#evidence p").endswith(f"confidence {drawn_edge['confidence']:.2f}")
    names = {n["id"]: n["names"] for n in expected["nodes"]}
    marked = {n for end in (edge["source"], edge["target"]) for n in names[end]
              if any(n in ev["text"] for ev in edge["evidence"])}  # a merged end: the names the text uses
    assert set(page.locator("#evidence mark").all_inner_texts()) == marked and len(marked) >= 2

    # The slider hides exactly the relations below its confidence, and shows them again.
    threshold = min(1.0, (math.floor(min(confidences) * 20) + 1) / 20)  # the slider's step above the least sure
    unsure = sum(c < threshold for c in confidences)
    assert unsure >= 1 or min(confidences) == 1.0, confidences
    page.evaluate(slide, str(threshold))
    assert page.evaluate(drawn_edges) == len(confidences) - unsure
    assert page.inner_text("#shown") == f"{len(confidences) - unsure} of {len(confidences)} relations shown"
    page.evaluate(slide, "0")
    assert page.evaluate(drawn_edges) == len(confidences)
    assert page.inner_text("#shown") == f"{len(confidences)} of {len(confidences)} relations shown"

    # Click the merged node: the panel lists its names and why they are one person.
    point = page.evaluate("() => relsftGraph.getElementById('药尘').renderedPosition()")
    page.mouse.click(box["x"] + point["x"], box["y"] + point["y"])
    page.wait_for_selector("#evidence #names")
    assert page.inner_text("#evidence h2") == "药尘" and page.inner_text("#names").startswith("Names: 药尘 · 药老 (")
    assert page.locator("#merges li").all_inner_texts() == ["药老: alias file"]
    assert page.evaluate("() => relsftGraph.getElementById('药尘').style('border-width')") == "3px"
    if path := os.environ.get("RELSFT_UI_SCREENSHOT"):
        page.fill("#text", story_examples()[0]["text"])
        page.click("#extract")
        page.wait_for_selector("#answer[data-state=done]", state="attached")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=path)


def banner_within(page, fast_ms: int = FAST) -> str:
    page.wait_for_selector("#banner:not([hidden])", timeout=fast_ms)
    return page.inner_text("#banner")


@pytest.mark.parametrize("problem", ["dead upstream", "wrong key"])
def test_a_broken_model_server_is_reported_not_waited_for(problem, book_server, page, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    url, key = (dead, TAUGHT_KEY) if problem == "dead upstream" else (book_server.base_url, "not-the-key")
    expected = (f"cannot reach the model server at {dead}" if problem == "dead upstream"
                else f"the model server at {url} refused the API key")
    backend = Backend(tmp_path, url, key)  # outside a project: the defaults
    try:
        page.goto(backend.base)
        assert expected in banner_within(page)  # on load, from /api/status
        page.fill("#text", STORY[0][0])
        page.click("#extract")
        page.wait_for_selector("#answer[data-state=failed]", timeout=FAST, state="attached")
        assert expected in banner_within(page)
        page.set_input_files("#file", str(write_chapter(tmp_path)))
        page.click("#build")
        page.wait_for_selector("#progress[data-state=failed]", timeout=FAST, state="attached")
        assert expected in banner_within(page)
    finally:
        backend.stop()


def write_chapter(d: Path) -> Path:
    path = d / "chapter.txt"
    path.write_text("".join(s for s, _ in STORY), encoding="utf-8")
    return path


def test_a_stopped_backend_is_reported(page, tmp_path):
    backend = Backend(tmp_path, f"http://127.0.0.1:{free_port()}/v1", TAUGHT_KEY)
    page.goto(backend.base)
    page.wait_for_selector("#banner:not([hidden])")
    backend.stop()
    page.fill("#text", STORY[0][0])
    page.click("#extract")
    page.wait_for_selector("#answer[data-state=failed]", timeout=FAST, state="attached")
    assert "cannot reach the relsft ui backend" in banner_within(page)
    page.set_input_files("#file", str(write_chapter(tmp_path)))
    page.click("#build")
    page.wait_for_selector("#progress[data-state=failed]", timeout=FAST, state="attached")
    assert "cannot reach the relsft ui backend" in banner_within(page)


def test_a_frozen_backend_is_given_up_on(page, tmp_path):
    """A backend that accepts the connection and then says nothing (here: stopped with SIGSTOP)."""
    backend = Backend(tmp_path, f"http://127.0.0.1:{free_port()}/v1", TAUGHT_KEY)
    try:
        page.goto(backend.base)
        page.wait_for_selector("#banner:not([hidden])")
        backend.proc.send_signal(signal.SIGSTOP)
        page.fill("#text", STORY[0][0])
        start = time.monotonic()
        page.click("#extract")
        page.wait_for_selector("#answer[data-state=failed]", timeout=IDLE_MS + FAST, state="attached")
        assert IDLE_MS / 1000 - 1 <= time.monotonic() - start <= (IDLE_MS + FAST) / 1000
        assert f"the backend did not answer within {IDLE_MS // 1000} s" in banner_within(page)
    finally:
        backend.proc.send_signal(signal.SIGCONT)
        backend.stop()
