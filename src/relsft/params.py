"""Settings: params.yaml, over the model recipe it names (`recipe: builtin-cpu` -> recipes/builtin-cpu.yaml).

A recipe holds what differs by base model (the model, its dtype, learning rate, steps, batch, LoRA
targets); params.yaml holds the rest and wins where both set a key, so `dvc exp run -S
train.learning_rate=1e-3` overrides any recipe. Switching models is `dvc exp run -S recipe=NAME`.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PARAMS = Path("params.yaml")
RECIPES_DIR = "recipes"


def _read(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def overlay(base: dict[str, Any], top: dict[str, Any], where: str = "") -> tuple[dict[str, Any], list[str]]:
    """`top` over `base`, dict by dict; also the dotted keys that `top` overrode."""
    out, overridden = copy.deepcopy(base), []
    for key, value in top.items():
        dotted = f"{where}{key}"
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key], sub = overlay(out[key], value, dotted + ".")
            overridden += sub
        else:
            if key in out:
                overridden.append(dotted)
            out[key] = copy.deepcopy(value)
    return out, overridden


def recipe_path(params_path: Path, name: str) -> Path:
    """recipes/ beside the params file, else in the project root (the working directory, as for dvc.yaml)."""
    beside = params_path.parent / RECIPES_DIR / f"{name}.yaml"
    return beside if beside.exists() else Path(RECIPES_DIR) / f"{name}.yaml"


def load_params(path: str | Path = DEFAULT_PARAMS, verbose: bool = False) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run relsft from the project root or pass --params")
    params = _read(path)
    name = params.setdefault("recipe", None)  # None: params.yaml holds every setting itself
    if not name:
        return params
    recipe = recipe_path(path, name)
    if not recipe.exists():
        known = sorted(p.stem for p in recipe.parent.glob("*.yaml"))
        raise FileNotFoundError(f"recipe {name!r}: {recipe} not found (recipes: {', '.join(known) or 'none'})")
    resolved, overridden = overlay(_read(recipe), params)
    if verbose and overridden:
        # stderr: stdout is the answer for `relsft extract`
        print(f"params.yaml overrides recipe {name}: {', '.join(overridden)}", file=sys.stderr)
    return resolved
