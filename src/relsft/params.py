"""params.yaml is the one source of truth for settings; every stage reads its own section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DEFAULT_PARAMS = Path("params.yaml")


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run relsft from the project root or pass --params")
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)
