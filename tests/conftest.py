"""Fixtures of both tiers (tests/unit, tests/integration): settings and raw data, nothing trained.

The fixtures that build, train or serve a model are in tests/integration/conftest.py, out of the unit
tier's reach: a unit test that asks for one fails at setup ("fixture not found").
"""

from __future__ import annotations

import atexit
import copy
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from helpers import ROOT, TINY, deep_update

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Prefect (integration/test_flows.py): a private home and memo file instead of ~/.prefect, and time for its
# temporary server to start on a busy 2-core machine (../shared/PLATFORM.md).
_prefect_home = tempfile.mkdtemp(prefix="relsft-prefect-")
atexit.register(shutil.rmtree, _prefect_home, ignore_errors=True)
os.environ.setdefault("PREFECT_HOME", _prefect_home)
os.environ.setdefault("PREFECT_MEMO_STORE_PATH", os.path.join(os.environ["PREFECT_HOME"], "memo_store.toml"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def params() -> dict:
    """params.yaml over the builtin-cpu recipe, as the stages read it: the tests' model is the builtin
    (the default recipe fetches and trains a 1.5B model)."""
    from relsft.params import overlay

    project = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    recipe = yaml.safe_load((ROOT / "recipes" / "builtin-cpu.yaml").read_text(encoding="utf-8"))
    return overlay(recipe, {**project, "recipe": "builtin-cpu"})[0]


@pytest.fixture(scope="session")
def tiny_params(params) -> dict:
    """Every setting resolved, no `recipe` key: a params.yaml of its own, needing no recipes/ beside it."""
    tiny = deep_update(copy.deepcopy(params), TINY)
    tiny.pop("recipe")
    return tiny


@pytest.fixture(scope="session")
def raw_data_dir(tmp_path_factory) -> Path:
    from relsft.packaged import init_data

    d = tmp_path_factory.mktemp("raw") / "data"
    init_data(d)
    return d


INTEGRATION = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(config, items):
    """The tier is the directory: tests/integration/'s tests are marked `integration` (and `slow`, its old
    name: `-m "not slow"` still selects the unit tier), tests/unit/'s `unit`."""
    for item in items:
        if INTEGRATION in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.slow)
        else:
            item.add_marker(pytest.mark.unit)
