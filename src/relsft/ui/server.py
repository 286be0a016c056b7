"""`relsft ui`: the page's backend, a small FastAPI app run by uvicorn.

The browser only ever talks to this process. It holds the served model's API key and calls the
vLLM server with relsft's own code (`client.Endpoint`, `book.extract.answer_all` and its cache,
`book.extract.book_graph`, `book.graph.write_outputs`), so no response of it carries the key and
the page shows what `relsft extract` and `extract-book` would give.

    GET  /                          the page (static/index.html; static/ holds its JS, CSS, vendor/)
    GET  /api/status                is the model server reachable with the key, and what it serves
    POST /api/extract {"text": …}   one passage's answer, streamed
    POST /api/book    (file)        a chapter's graph, growing as its passages are answered
    GET  /api/book/<id>/<file>      graph.json, graph.graphml, relations.csv of a finished chapter

Streams are Server-Sent Events over a POST (the page reads them with fetch; EventSource can only
GET): `piece` events as the answer is generated; `start`, then one `update` per answered passage
(the nodes and edges that are new or changed since the last one) and `done` for a chapter; `error`
with a message the page shows. While nothing else is sent, a comment line every HEARTBEAT seconds
says the backend is alive: the page gives up after a few missed ones instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, UploadFile
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from ..book.aliases import AliasFile
from ..book.extract import AnswerCache, answer_all, book_graph, book_inputs, grounded_graph
from ..book.graph import OUTPUTS, write_outputs
from ..book.split import DEFAULT_MAX_CHARS, DEFAULT_OVERLAP, passages, split_chapters
from ..client import Endpoint, Streamed, endpoint_from_args, interactive, served_model_id
from ..vocabulary import RelationType

STATIC = Path(__file__).parent / "static"
VENDOR = STATIC / "vendor" / "cytoscape.min.js"
HEARTBEAT = 5.0  # seconds; static/app.js gives up after 3 of them without a byte
RUN_ID = re.compile(r"[0-9a-f]{12}")


@dataclasses.dataclass
class UISettings:
    endpoint: Endpoint
    relations: dict[str, RelationType]
    work_dir: Path  # the answer cache and every chapter's output files
    aliases: AliasFile | None = None
    max_chars: int = DEFAULT_MAX_CHARS
    overlap: int = DEFAULT_OVERLAP
    concurrency: int = 8
    status_timeout: float = 5.0


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def upstream_error(e: BaseException, url: str) -> str:
    """The page's message for a failed call to the model server."""
    import openai

    cause = e.__cause__ if isinstance(e.__cause__, openai.APIError) else e  # answer_all wraps them
    if isinstance(cause, openai.AuthenticationError):
        return (f"the model server at {url} refused the API key (HTTP 401): start relsft ui with the server's "
                "key (--api-key or $RELSFT_API_KEY)")
    if isinstance(cause, openai.APIConnectionError):  # timeouts too
        return f"cannot reach the model server at {url} ({cause})"
    return str(e) if isinstance(e, RuntimeError) else f"the model server at {url}: {e}"


async def with_heartbeat(events: AsyncIterator[str], every: float = HEARTBEAT) -> AsyncIterator[str]:
    """`events`, with an SSE comment whenever `every` seconds pass without one."""
    pending = asyncio.ensure_future(anext(events))
    try:
        while True:
            done, _ = await asyncio.wait({pending}, timeout=every)
            if not done:
                yield ": alive\n\n"
                continue
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            yield item
            pending = asyncio.ensure_future(anext(events))
    finally:  # the page went away or the stream ended: stop the work behind it
        pending.cancel()
        with contextlib.suppress(BaseException):
            await pending
        await events.aclose()


async def extract_events(endpoint: Endpoint, text: str) -> AsyncIterator[str]:
    import openai

    client = interactive(endpoint).connect(asynchronous=True)  # the page waits: few retries
    answer = Streamed()
    try:
        async for chunk in await client.chat.completions.create(**endpoint.request(text, stream=True)):
            if piece := answer.add(chunk):
                yield sse("piece", {"text": piece})
        result = answer.extraction()
        yield sse("done", {"answer": result.answer, "relations": [dataclasses.asdict(r) for r in result.relations],
                           "bad_lines": result.bad_lines, "finish_reason": result.finish_reason})
    except openai.APIError as e:
        yield sse("error", {"message": upstream_error(e, endpoint.url)})
    finally:
        await client.close()


def changes(graph: dict[str, Any], sent: dict[str, Any]) -> dict[str, list]:
    """The nodes and edges of `graph` that differ from what was sent before (remembered in `sent`),
    and under `removed` the ones sent before that are gone: a name merged into another person's
    node once his full name turns up (its edges with it), or split off again when a second full
    name makes it ambiguous."""
    out: dict[str, list] = {"nodes": [], "edges": [], "removed": []}
    now = set()
    for kind in ("nodes", "edges"):
        for item in graph[kind]:
            key = json.dumps([kind, item.get("id"), item.get("source"), item.get("target"), item.get("relation")],
                             ensure_ascii=False)
            now.add(key)
            if sent.get(key) != item:
                sent[key] = item
                out[kind].append(item)
    for key in sorted(set(sent) - now):
        kind, id_, source, target, relation = json.loads(key)
        out["removed"].append({"id": id_} if kind == "nodes" else
                              {"source": source, "target": target, "relation": relation})
        del sent[key]
    return out


async def book_events(s: UISettings, cache: AnswerCache, name: str, text: str) -> AsyncIterator[str]:
    """`extract-book` on one uploaded file, the graph of the passages answered so far after each answer.
    The graph is recomputed each time, which suits a chapter (hundreds of passages); a whole novel
    is `relsft extract-book`'s."""
    chapters = split_chapters(name, text)
    _, book = passages(chapters, s.max_chars, s.overlap)
    run_id = uuid.uuid4().hex[:12]
    arrived: asyncio.Queue[tuple[str, str, dict[str, float] | None] | None] = asyncio.Queue()

    async def answer_book():
        try:
            return await answer_all([p.text for p in book], s.endpoint, cache, s.concurrency, progress=False,
                                    on_answer=lambda *answered: arrived.put_nowait(answered))
        finally:
            arrived.put_nowait(None)

    task = asyncio.create_task(answer_book())
    try:
        yield sse("start", {"id": run_id, "passages": len(book), "chapters": [c.name for c in chapters]})
        answers, confidences, sent = {}, {}, {}
        while (item := await arrived.get()) is not None:
            text, answers[text], confidences[text] = item
            answered = [p for p in book if p.text in answers]
            graph = grounded_graph(chapters, answered, [answers[p.text] for p in answered], s.relations, s.aliases,
                                   [confidences[p.text] for p in answered])
            yield sse("update", {"done": len(answered), "total": len(book), "rejected": len(graph["rejected"]),
                                 "merges": graph["merges"], "kept_apart": graph["kept_apart"],
                                 **changes(graph, sent)})
        all_answers, _, served = await task  # raises what answer_all raised
        graph = book_graph(chapters, book, all_answers, s.relations, s.endpoint, served, s.max_chars, s.overlap,
                           s.aliases, [confidences[p.text] for p in book])
        write_outputs(graph, s.work_dir / run_id)
        yield sse("done", {"id": run_id, "files": {f: f"api/book/{run_id}/{f}" for f in OUTPUTS},
                           **{k: len(graph[k]) for k in ("nodes", "edges", "conflicts", "rejected")}})
    except (RuntimeError, ValueError) as e:  # answer_all's: no server, wrong key, a refused passage
        yield sse("error", {"message": upstream_error(e, s.endpoint.url)})
    finally:
        task.cancel()


class Passage(BaseModel):
    text: str


def create_app(s: UISettings) -> FastAPI:
    cache = AnswerCache(s.work_dir / "cache.jsonl")  # shared by every upload: a chapter sent again is instant

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        cache.close()

    app = FastAPI(title="relsft ui", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def event_stream(events: AsyncIterator[str]) -> StreamingResponse:
        return StreamingResponse(with_heartbeat(events), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/")
    def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/api/status")
    async def status():
        import openai

        client = dataclasses.replace(s.endpoint, timeout=s.status_timeout).connect(asynchronous=True)
        about = {"url": s.endpoint.url, "model": s.endpoint.model, "max_chars": s.max_chars, "overlap": s.overlap}
        try:
            return {"ok": True, **about, "served_model": await served_model_id(client, s.endpoint.model)}
        except (openai.APIError, ValueError) as e:
            return JSONResponse({"ok": False, **about, "error": upstream_error(e, s.endpoint.url)}, status_code=502)
        finally:
            await client.close()

    @app.post("/api/extract")
    async def extract(passage: Passage):
        if not passage.text.strip():
            raise HTTPException(400, "paste a passage first")
        return event_stream(extract_events(s.endpoint, passage.text))

    @app.post("/api/book")
    async def book(file: UploadFile):
        try:
            text = (await file.read()).decode("utf-8-sig")
        except UnicodeDecodeError:
            raise HTTPException(400, f"{file.filename} is not UTF-8 text") from None
        if not text.strip():
            raise HTTPException(400, f"{file.filename} holds no text")
        return event_stream(book_events(s, cache, file.filename or "upload.txt", text))

    @app.get("/api/book/{run_id}/{name}")
    def download(run_id: str, name: str):
        path = s.work_dir / run_id / name
        if not RUN_ID.fullmatch(run_id) or name not in OUTPUTS or not path.is_file():
            raise HTTPException(404, "no such file (the backend keeps a chapter's files only while it runs)")
        return FileResponse(path, filename=name)

    return app


def serve_ui(s: UISettings, host: str, port: int) -> None:
    import uvicorn

    print(f"relsft ui: http://{host}:{port}/ (model server {s.endpoint.url}, model {s.endpoint.model})",
          file=sys.stderr, flush=True)
    uvicorn.run(create_app(s), host=host, port=port, log_level="warning")


def check_vendored() -> None:
    if not VENDOR.is_file():
        raise FileNotFoundError(f"{VENDOR} is missing: build the page's graph library with `make setup` (or "
                                "`make vendor`: npm ci --prefix ui, then a copy of its cytoscape.min.js)")


def run_cli(args, params: dict[str, Any]) -> None:
    """`relsft ui`; params may be {} (outside a project), as for extract-book."""
    check_vendored()
    endpoint = endpoint_from_args(args, params)
    relations, aliases = book_inputs(args)
    work_dir = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="relsft-ui-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        serve_ui(UISettings(endpoint, relations, work_dir, aliases, args.max_chars, args.overlap, args.concurrency),
                 args.host, args.port)
    finally:
        if not args.work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
