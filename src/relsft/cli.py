"""`relsft <stage>`: a thin command line over the stage functions. Settings come from params.yaml."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Nothing in the default pipeline may reach a hub; fail fast instead of waiting on timeouts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from .params import load_params  # noqa: E402

PATHS = {
    "data": "data",
    "base": "models/base",
    "datasets": "datasets",
    "docs": "reports/data_docs",
    "validation": "reports/validation.json",
    "formatted": "formatted",
    "adapter": "models/adapter",
    "training_plots": "reports/training",
    "metrics": "metrics/eval.json",
    "reports": "reports/eval",
    "merged": "models/merged",
    "export": "export/relsft-model",
}


def cmd_init_data(args, params):
    from .rawdata import init_data

    written = init_data(args.data_dir or params["data"]["dir"], force=args.force)
    print(f"init-data: wrote {len(written)} file(s)")


def cmd_base(args, params):
    from .base import build_base

    build_base(params, PATHS["base"])


def cmd_generate(args, params):
    from .generate import generate

    counts = generate(params["data"]["dir"], PATHS["datasets"], params["generate"])
    print("generate: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def cmd_validate(args, params):
    from .validate import validate

    validate(params["data"]["dir"], PATHS["datasets"], PATHS["docs"], PATHS["validation"], params["validate"])


def cmd_format(args, params):
    from .format import format_dataset

    format_dataset(PATHS["base"], PATHS["datasets"], PATHS["formatted"], params["format"])


def cmd_train(args, params):
    from .train import train

    cfg = dict(params["train"], max_length=params["format"]["max_length"])
    print(train(PATHS["base"], PATHS["formatted"], PATHS["adapter"], PATHS["training_plots"], cfg))


def cmd_evaluate(args, params):
    from .evaluate import run_evaluate

    run_evaluate(PATHS["base"], PATHS["adapter"], PATHS["datasets"], params["data"]["dir"], PATHS["metrics"],
                 PATHS["reports"], params["evaluate"])


def cmd_merge(args, params):
    from .merge import merge

    merge(PATHS["base"], PATHS["adapter"], PATHS["datasets"], PATHS["merged"],
          dict(params["merge"], max_new_tokens=params["evaluate"]["max_new_tokens"]))


def cmd_export(args, params):
    from .export import export

    export(PATHS["merged"], PATHS["metrics"], params["data"]["dir"], PATHS["export"], params)


STAGES = {
    "init-data": (cmd_init_data, "write the packaged default raw inputs to data/"),
    "base": (cmd_base, "build (builtin) or fetch the base model"),
    "generate": (cmd_generate, "generate synthetic train/val/test/test_ood splits"),
    "validate": (cmd_validate, "Great Expectations checks + Data Docs"),
    "format": (cmd_format, "chat-template prompt/completion records"),
    "train": (cmd_train, "SFT with TRL + PEFT LoRA"),
    "evaluate": (cmd_evaluate, "score base and fine-tuned models on test and test_ood"),
    "merge": (cmd_merge, "merge the adapter and check greedy parity"),
    "export": (cmd_export, "write the servable model directory"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relsft", description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in STAGES.items():
        p = sub.add_parser(name, help=help_text)
        if name == "init-data":
            p.add_argument("--data-dir", default=None)
            p.add_argument("--force", action="store_true", help="overwrite locally changed files")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    try:
        STAGES[args.command][0](args, params)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        # Expected failures (bad data, failed checks) get their message, not a traceback.
        if os.environ.get("RELSFT_DEBUG"):
            raise
        print(f"relsft {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
