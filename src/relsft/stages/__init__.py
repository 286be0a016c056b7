"""The DVC stages, one module each: `python -m relsft.stages.<stage> --<path> ...`, as dvc.yaml runs them.

A stage module parses its paths (dvc.yaml passes every one), reads the params sections it needs and
calls one function of the package. Its DVC deps are exactly the code it imports, so editing a user
command (`relsft serve`, `relsft ui`, ...) re-runs nothing (tests/unit/test_dvc_deps.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

# The hub is reached only by the base stage for a hub id (base.model); datasets are always local files.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_stage(name: str, paths: tuple[str, ...], body: Callable[[argparse.Namespace, dict[str, Any]], Any],
              argv: list[str] | None = None) -> int:
    """Parse `--params` and the stage's path flags, load params.yaml over its recipe, run `body`.
    Expected failures end with their message and exit 1 (exit_code)."""
    from ..params import load_params

    parser = argparse.ArgumentParser(prog=f"python -m relsft.stages.{name}", description=body.__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    for flag in paths:
        parser.add_argument(f"--{flag}", required=True)
    args = parser.parse_args(argv)
    return exit_code(f"stage {name}", lambda: body(args, load_params(args.params, verbose=True)))


def exit_code(prog: str, call: Callable[[], Any]) -> int:
    """Run `call`: 0, or 1 after one line `<prog>: error: ...` where it fails as expected (bad data, a
    failed check) rather than with a traceback; RELSFT_DEBUG=1 re-raises. The stages and `relsft` share it."""
    try:
        call()
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        if os.environ.get("RELSFT_DEBUG"):
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    return 0
