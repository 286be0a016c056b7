"""The tests' tiny but real configuration of the pipeline (same code, small sizes) and the helpers both
tiers use: run a command, make a git + DVC project. Fixtures live in conftest.py (tests/ for both tiers,
tests/integration/ for the ones that train or serve a model)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    # head_dim 32, the smallest vLLM's CPU attention supports (the tests serve this model); 4 heads,
    # the fewest the copy circuit needs.
    "base": {"builtin": {"hidden_size": 128, "intermediate_size": 128, "num_layers": 2, "num_heads": 4,
                         "num_kv_heads": 4, "max_position_embeddings": 512}},
    "generate": {"sizes": {"train": 400, "val": 24, "test": 24, "test_ood": 24}},
    "train": {"sft": {"max_steps": 40, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8,
                      "logging_steps": 5, "eval_steps": 20, "save_steps": 20, "learning_rate": 0.005,
                      "warmup_steps": 0.0},
              "lora": {"r": 8, "lora_alpha": 16}},
    "evaluate": {"max_new_tokens": 32, "batch_size": 24, "max_examples": 24},  # the first 24 of gold too
    "merge": {"parity_examples": 24, "batch_size": 24},
}


def deep_update(d: dict, u: dict) -> dict:
    for k, v in u.items():
        d[k] = deep_update(d.get(k, {}), v) if isinstance(v, dict) else v
    return d


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def make_project(dst: Path, params: dict, novel_passages: bool = True) -> Path:
    """A fresh git + DVC project with this repo's pipeline, recipes, package sources and `params`
    (resolved: every key in params.yaml, so the recipe it names sets nothing). `novel_passages=False`
    leaves out the shipped hand-written passages (data/annotated/novels.jsonl)."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dvc.yaml", dst / "dvc.yaml")
    shutil.copytree(ROOT / "recipes", dst / "recipes")
    shutil.copytree(ROOT / "src", dst / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / ".gitignore", dst / ".gitignore")
    params = {"recipe": "builtin-cpu", **params}  # dvc.yaml names recipes/${recipe}.yaml; params.yaml overrides it all
    (dst / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")
    run(["git", "init", "-q", "-b", "main"], dst)
    run(["git", "config", "user.email", "ci@relsft.invalid"], dst)
    run(["git", "config", "user.name", "relsft ci"], dst)
    run(["dvc", "init", "-q"], dst)
    run(["dvc", "config", "core.analytics", "false"], dst)
    run(["relsft", "init-data"], dst)
    if not novel_passages:
        (dst / "data" / "annotated" / "novels.jsonl").unlink()
    run(["dvc", "add", "-q", "data"], dst)
    run(["git", "add", "-A"], dst)
    run(["git", "commit", "-q", "-m", "project"], dst)
    return dst
