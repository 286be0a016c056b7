"""Shared fixtures: a tiny but real configuration of the pipeline (same code, small sizes)."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY = {
    "base": {"builtin": {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4,
                         "num_kv_heads": 4, "max_position_embeddings": 512, "pretrain_steps": 10,
                         "pretrain_batch_size": 8}},
    "generate": {"sizes": {"train": 400, "val": 24, "test": 24, "test_ood": 24}},
    "train": {"max_steps": 24, "batch_size": 8, "logging_steps": 4, "eval_steps": 12, "save_steps": 12,
              "learning_rate": 0.003, "warmup_ratio": 0.0, "lora": {"r": 8, "alpha": 16}},
    "evaluate": {"max_new_tokens": 32, "batch_size": 24},
    "merge": {"parity_examples": 24, "batch_size": 24},
}


def deep_update(d: dict, u: dict) -> dict:
    for k, v in u.items():
        d[k] = deep_update(d.get(k, {}), v) if isinstance(v, dict) else v
    return d


@pytest.fixture(scope="session")
def params() -> dict:
    with (ROOT / "params.yaml").open(encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="session")
def tiny_params(params) -> dict:
    return deep_update(copy.deepcopy(params), TINY)


@pytest.fixture(scope="session")
def raw_data_dir(tmp_path_factory) -> Path:
    from relsft.rawdata import init_data

    d = tmp_path_factory.mktemp("raw") / "data"
    init_data(d)
    return d


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def make_project(dst: Path, params: dict) -> Path:
    """A fresh git + DVC project with this repo's pipeline, package sources and `params`."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dvc.yaml", dst / "dvc.yaml")
    shutil.copytree(ROOT / "src", dst / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / ".gitignore", dst / ".gitignore")
    (dst / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")
    run(["git", "init", "-q", "-b", "main"], dst)
    run(["git", "config", "user.email", "ci@relsft.invalid"], dst)
    run(["git", "config", "user.name", "relsft ci"], dst)
    run(["dvc", "init", "-q"], dst)
    run(["dvc", "config", "core.analytics", "false"], dst)
    run(["relsft", "init-data"], dst)
    run(["dvc", "add", "-q", "data"], dst)
    run(["git", "add", "-A"], dst)
    run(["git", "commit", "-q", "-m", "project"], dst)
    return dst
