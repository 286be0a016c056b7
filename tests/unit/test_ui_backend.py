"""`relsft ui`'s backend without a browser or a model: the key never leaves it, silences get heartbeats,
a missing graph library is explained. The page in a real browser is tests/integration/test_ui.py."""

from __future__ import annotations

import asyncio

from relsft.book.split import Chapter
from relsft.serve import free_port

SECRET = "sekret-key-that-stays-on-the-server"


def test_the_key_never_reaches_the_page(raw_data_dir, tmp_path):
    from fastapi.testclient import TestClient

    from relsft.book.extract import Endpoint
    from relsft.ui.server import VENDOR, UISettings, create_app
    from relsft.vocabulary import load_relations

    dead = f"http://127.0.0.1:{free_port()}/v1"
    app = create_app(UISettings(Endpoint(dead, SECRET), load_relations(raw_data_dir), tmp_path, status_timeout=2))
    with TestClient(app) as client:
        responses = [client.get(path) for path in ("/", "/static/app.js", "/static/style.css", "/api/status",
                                                   f"/static/vendor/{VENDOR.name}")]
        responses.append(client.post("/api/extract", json={"text": "韩立与紫灵是师徒关系。"}))
        responses.append(client.post("/api/book", files={"file": ("c.txt", "韩立与紫灵是师徒关系。".encode())}))
    assert [r.status_code for r in responses] == [200, 200, 200, 502, 200, 200, 200]
    for r in responses:
        assert SECRET not in r.text and SECRET not in str(r.headers)
    assert responses[3].json()["error"] == f"cannot reach the model server at {dead} (Connection error.)"
    assert "event: error" in responses[5].text and "cannot reach the model server" in responses[6].text
    # The page loads nothing from anywhere else: every script and stylesheet is the backend's own.
    page = responses[0].text
    assert "http" not in page.replace('href="data:,"', "") and "static/vendor/cytoscape.min.js" in page



def test_the_slider_starts_at_extract_books_default_cut():
    """The page and `relsft extract-book` show the same graph until the reader moves the slider."""
    import re

    from relsft.book.graph import DEFAULT_MIN_CONFIDENCE
    from relsft.ui.server import STATIC

    slider = re.search(r'<input id="min-confidence"[^>]*value="([0-9.]+)"', (STATIC / "index.html").read_text())
    assert slider and float(slider.group(1)) == DEFAULT_MIN_CONFIDENCE

def test_an_update_removes_the_names_a_merge_took_away(raw_data_dir):
    """宝玉 is a node until 贾宝玉 turns up: then the page must drop 宝玉 and its edges, not keep them."""
    from relsft.book.extract import grounded_graph
    from relsft.book.split import passages
    from relsft.ui.server import changes
    from relsft.vocabulary import load_relations

    chapters = [Chapter("c", "贾政之子宝玉。贾宝玉爱林黛玉。")]
    _, book = passages(chapters, 8, 0)
    answers = ["贾政-宝玉:父子", "贾宝玉-林黛玉:恋人"]
    sent = {}
    first = changes(grounded_graph(chapters, book[:1], answers[:1], load_relations(raw_data_dir)), sent)
    assert [n["id"] for n in first["nodes"]] == ["宝玉", "贾政"] and first["removed"] == []
    second = changes(grounded_graph(chapters, book, answers, load_relations(raw_data_dir)), sent)
    assert second["removed"] == [{"source": "贾政", "target": "宝玉", "relation": "父子"}, {"id": "宝玉"}]
    assert [n["id"] for n in second["nodes"]] == ["林黛玉", "贾宝玉"]  # 贾政 unchanged: not sent again
    assert [(e["source"], e["target"]) for e in second["edges"]] == [("林黛玉", "贾宝玉"), ("贾政", "贾宝玉")]
    assert changes(grounded_graph(chapters, book, answers, load_relations(raw_data_dir)), sent) == {
        "nodes": [], "edges": [], "removed": []}


def test_heartbeats_fill_silences():
    from relsft.ui.server import with_heartbeat

    async def slow():
        yield "event: a\n\n"
        await asyncio.sleep(0.35)
        yield "event: b\n\n"

    async def collect():
        return [e async for e in with_heartbeat(slow(), every=0.1)]

    events = asyncio.run(collect())
    assert events[0] == "event: a\n\n" and events[-1] == "event: b\n\n"
    assert 2 <= events.count(": alive\n\n") <= 4 and len(events) == events.count(": alive\n\n") + 2


def test_without_the_vendored_graph_library_ui_says_how_to_build_it(monkeypatch, tmp_path, capsys):
    from relsft import cli
    from relsft.ui import server

    monkeypatch.setattr(server, "VENDOR", tmp_path / "cytoscape.min.js")
    monkeypatch.chdir(tmp_path)  # outside a project: runs anyway, as extract-book does
    assert cli.main(["ui", "--port", str(free_port())]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("relsft ui: error: ") and "make setup" in err and len(err.splitlines()) == 1
