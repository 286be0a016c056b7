"""`relsft <command>`: the user commands (serve, extract, extract-book, ui, promote, rollback, init-data,
evaluate --endpoint). Settings come from params.yaml. The pipeline's stages are modules of their own
(`python -m relsft.stages.<stage>`, run by `dvc repro`), so editing a command here re-runs no stage."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .params import load_params
from .paths import stage_paths_or_empty
from .stages import exit_code  # also sets the environment the stages run in (offline datasets, quiet tokenizers)


def cmd_init_data(args, params):
    from .packaged import init_data

    written = init_data(args.data, force=args.force)
    print(f"init-data: wrote {len(written)} file(s)")


def cmd_evaluate(args, params):
    """Score a served model (relsft serve) on the evaluate stage's splits; the stage's metrics stay untouched."""
    from .endpoint_eval import evaluate_endpoint

    evaluate_endpoint(args.endpoint, args.api_key, args.model_name, args.datasets, args.data,
                      args.out, params["evaluate"], concurrency=args.concurrency, reports_dir=args.reports)

def cmd_serve(args, params):
    from .serve import ServeSettings, flag_values, serve

    given = flag_values(args)
    # serve.model empty: the model the export stage writes (dvc.yaml).
    model = given.pop("model", None) or params.get("serve", {}).get("model")
    model = model or stage_paths_or_empty("export").get("out")
    if not model:
        raise ValueError("pass --model DIR (serve.model is empty and there is no dvc.yaml export stage here)")
    serve(ServeSettings.from_params(params, model=model, **given))


def cmd_extract(args, params):
    from openai import APIError

    from .client import RelationClient, endpoint_from_args, interactive

    text = sys.stdin.read() if args.text == "-" else args.text
    endpoint = interactive(endpoint_from_args(args, params))
    client = RelationClient.at(endpoint)
    try:
        if args.no_stream:
            result = client.extract(text)
            print(result.answer, flush=True)
        else:
            result = client.stream_extract(text, on_piece=lambda piece: print(piece, end="", flush=True))
            print(flush=True)
    except APIError as e:  # no server, wrong key, ...: a message, not a traceback
        raise RuntimeError(f"{endpoint.url}: {e}") from e
    print(f"relations ({len(result.relations)}):")
    for r in result.relations:
        print(f"  {r.a}\t{r.b}\t{r.rel}")
    for line in result.bad_lines:
        print(f"  unparsed: {line!r}", file=sys.stderr)


def cmd_extract_book(args, params):
    from .book.extract import run_cli

    run_cli(args, params)


def add_book_args(p):
    """How a book is cut and answered (extract-book, ui)."""
    from .book.split import DEFAULT_MAX_CHARS, DEFAULT_OVERLAP

    add_server_args(p)
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default: 8)")
    p.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS, help="passage length in characters")
    p.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP, help="sentences repeated between passages")
    p.add_argument("--data-dir", help="relations.tsv's directory (default: data/, else the packaged one)")
    p.add_argument("--aliases", help="names of one person, `canonical|alias` per column, `!name` never merged "
                   "(docs/design.md#a-whole-book)")


def add_extract_book_args(p):
    from .book.graph import DEFAULT_MIN_CONFIDENCE

    p.add_argument("file", help="UTF-8 text file (split at 第…回/章 headings), a directory of chapter files, or '-'")
    add_book_args(p)
    p.add_argument("--out", default="book-graph", help="writes graph.json, graph.graphml, relations.csv")
    p.add_argument("--cache", help="answer cache, resumes a killed run (default: OUT/cache.jsonl)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--min-confidence", type=float, default=DEFAULT_MIN_CONFIDENCE, metavar="P",
                   help=f"drop answer lines the model gave a probability below P (0-1; default "
                        f"{DEFAULT_MIN_CONFIDENCE}; 0 keeps all; examples/hongloumeng/check.py --curve shows what "
                        "each P buys)")
    p.add_argument("--min-mentions", type=int, default=1, metavar="N",
                   help="drop relations naming a person the book names fewer than N times (most one-off "
                        "'names' are clause fragments; default 1: keep all)")
    p.add_argument("--no-sex-check", action="store_true",
                   help="keep answer lines whose label needs a sex the book's other lines deny its person "
                        "(宝玉-黛玉:姐妹 where most lines make 宝玉 a man; dropped by default, under `rejected`)")


def cmd_ui(args, params):
    from .ui.server import run_cli

    run_cli(args, params)


def add_ui_args(p):
    add_book_args(p)
    p.add_argument("--host", default="127.0.0.1", help="the page's address (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="the page's port (default: 8765)")
    p.add_argument("--work-dir", help="keeps the answer cache and every chapter's files (default: a temporary "
                   "directory, removed on exit)")


def add_evaluate_args(p):
    p.add_argument("--endpoint", metavar="URL", required=True, help="the served model (OpenAI API base URL, e.g. "
                   "http://127.0.0.1:8000/v1)")
    p.add_argument("--api-key", default=None, help="endpoint key (default: $RELSFT_API_KEY)")
    p.add_argument("--model-name", default="relsft", help="served model name (default: relsft)")
    p.add_argument("--out", default="metrics/eval_endpoint.json", help="metrics file for --endpoint")
    p.add_argument("--concurrency", type=int, default=8, help="parallel requests for --endpoint")


def add_serve_args(p):
    from .serve import add_arguments  # one flag per ServeSettings field

    add_arguments(p)


def add_server_args(p):
    """The served model to call (extract, extract-book)."""
    p.add_argument("--url", help="OpenAI API base URL (default: http://127.0.0.1:<serve.port>/v1)")
    p.add_argument("--api-key", default=None, help="default: $RELSFT_API_KEY")
    p.add_argument("--model-name", default="relsft")


def add_extract_args(p):
    p.add_argument("text", help="novel text ('-' reads stdin)")
    add_server_args(p)
    p.add_argument("--no-stream", action="store_true", help="one response instead of streaming")


def cmd_promote(args, params):
    from .promote import ScoringData, promote_and_reload

    export_dir = args.export or stage_paths_or_empty("export").get("out")
    if not export_dir:
        raise ValueError("pass --export DIR (no dvc.yaml here with an export stage to take it from)")
    on = ScoringData.from_params(args.datasets, args.data, params)
    decision = promote_and_reload(export_dir, args.registry or params["promote"]["registry"], params["promote"], on,
                                  {"experiment": args.experiment} if args.experiment else None,
                                  say=lambda verdict: print(f"promote: {verdict}"))
    if not decision.promote:
        raise RuntimeError(f"candidate rejected, production unchanged: {'; '.join(decision.reasons)}")


def cmd_rollback(args, params):
    from .promote import rollback, run_reload_hook

    registry = args.registry or params["promote"]["registry"]
    print(f"rollback: production is {rollback(registry)} again")
    run_reload_hook(params["promote"].get("reload_command", ""), registry)


def add_rollback_args(p):
    p.add_argument("--registry", help="registry directory (default: promote.registry)")


def add_promote_args(p):
    add_rollback_args(p)
    p.add_argument("--export", help="candidate model directory (default: the export stage's --out in dvc.yaml)")
    p.add_argument("--experiment", help="name recorded in the registry history (e.g. the DVC experiment)")
    evaluated_on = stage_paths_or_empty("evaluate")  # the candidate's splits: both models are scored on them
    p.add_argument("--datasets", default=evaluated_on.get("datasets"), help="splits to score both models on "
                   f"(default: {evaluated_on.get('datasets')}, the evaluate stage's)")
    p.add_argument("--data", default=evaluated_on.get("data"), help="raw data dir (relations.tsv)")


COMMANDS = {
    "init-data": (cmd_init_data, "write the packaged default raw inputs to data/"),
    "evaluate": (cmd_evaluate, "score a served model (--endpoint) on the evaluate stage's splits"),
    "serve": (cmd_serve, "serve the exported model with vLLM (OpenAI-compatible API)"),
    "extract": (cmd_extract, "extract relations through a served model, streaming"),
    "extract-book": (cmd_extract_book, "a whole book through a served model, merged into one character graph"),
    "ui": (cmd_ui, "a web page: streamed answers, a chapter's graph growing, evidence per edge"),
    "promote": (cmd_promote, "gate the exported model and, if it passes, make it the production model"),
    "rollback": (cmd_rollback, "point production back at the previous model"),
}

# What --endpoint scoring needs of the evaluate stage's paths (dvc.yaml), and init-data's --data (generate's).
PATH_FLAGS = {"init-data": ("data",), "evaluate": ("datasets", "data", "reports")}
PATHS_OF_STAGE = {"init-data": "generate", "evaluate": "evaluate"}


def add_path_args(p, stage: str) -> None:
    defaults = stage_paths_or_empty(PATHS_OF_STAGE[stage])
    for flag in PATH_FLAGS[stage]:
        default = defaults.get(flag, "data" if flag == "data" else None)
        p.add_argument(f"--{flag}", default=default,
                       help=f"default: {default} (dvc.yaml)" if default else "required outside the project root")


def missing_paths(stage: str, args) -> list[str]:
    wanted = {"init-data": ("data",), "evaluate": ("datasets", "data"), "promote": ("datasets", "data")}.get(stage, ())
    return [f"--{flag}" for flag in wanted if getattr(args, flag) is None]


EXTRA_ARGUMENTS = {"evaluate": add_evaluate_args, "serve": add_serve_args, "extract": add_extract_args}
EXTRA_ARGUMENTS.update(promote=add_promote_args, rollback=add_rollback_args)
EXTRA_ARGUMENTS.update({"extract-book": add_extract_book_args, "ui": add_ui_args})
RUNS_ANYWHERE = {"extract", "extract-book", "ui"}  # need no params.yaml: a served model and a text are enough


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relsft", description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name in PATH_FLAGS:
            add_path_args(p, name)
        if name == "init-data":
            p.add_argument("--force", action="store_true", help="overwrite locally changed files")
        if name in EXTRA_ARGUMENTS:
            EXTRA_ARGUMENTS[name](p)
    args = parser.parse_args(argv)

    def run() -> None:
        # A client needs no project: extract, extract-book and ui run anywhere, with params.yaml's settings if present.
        anywhere = args.command in RUNS_ANYWHERE and not Path(args.params).exists()
        params = {} if anywhere else load_params(args.params, verbose=True)
        if missing := missing_paths(args.command, args):
            raise ValueError(f"pass {', '.join(missing)}: there is no dvc.yaml stage here to take them from")
        COMMANDS[args.command][0](args, params)

    return exit_code(f"relsft {args.command}", run)


if __name__ == "__main__":
    sys.exit(main())
