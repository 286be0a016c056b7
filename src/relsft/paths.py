"""dvc.yaml is the one source of the pipeline's paths: each stage's command names them as flags.

`relsft <stage>` takes its paths on the command line (as dvc.yaml passes them); run by hand in
the project root it falls back on the flags dvc.yaml's stage passes, and so do the flows and the
commands outside the pipeline (serve, promote, evaluate --endpoint).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import yaml

DVC_YAML = "dvc.yaml"


def load_pipeline(dvc_yaml: str | Path = DVC_YAML) -> dict[str, Any]:
    path = Path(dvc_yaml)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run relsft in the project root or pass the paths as flags")
    return yaml.safe_load(path.read_text(encoding="utf-8"))["stages"]


def command_flags(cmd: str) -> dict[str, str]:
    """`relsft train --base models/base --out models/adapter` -> {"base": "models/base", "out": "models/adapter"}."""
    words, flags = shlex.split(cmd), {}
    for word, value in zip(words, words[1:]):
        if word.startswith("--") and not value.startswith("--"):
            flags[word[2:].replace("-", "_")] = value
    return flags


def stage_paths(stage: str, dvc_yaml: str | Path = DVC_YAML) -> dict[str, str]:
    """The path flags dvc.yaml's `stage` passes to its command."""
    stages = load_pipeline(dvc_yaml)
    if stage not in stages:
        raise ValueError(f"{dvc_yaml} has no stage {stage!r}")
    return command_flags(stages[stage]["cmd"])


def stage_paths_or_empty(stage: str, dvc_yaml: str | Path = DVC_YAML) -> dict[str, str]:
    try:
        return stage_paths(stage, dvc_yaml)
    except (FileNotFoundError, ValueError, KeyError, yaml.YAMLError):
        return {}
