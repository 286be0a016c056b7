"""Fixtures that build, train or serve models: the integration tier's only (tests/unit cannot reach them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import make_project, run
from taught import TAUGHT_KEY, story_examples, teach_one_relation


@pytest.fixture(scope="session")
def pipeline_project(tmp_path_factory, tiny_params) -> Path:
    """One real git + DVC project on the tiny config, `dvc repro`ed and committed.

    Shared by every test that needs a trained, merged and exported model (pipeline, serving,
    flows); tests that change it must put it back as they found it. Without the shipped novel
    passages: 560 of them beside 400 composed ones leave the tiny model answering nearly every
    passage empty (as a 1-step model does), and the gate's tests need a model that answers.
    """
    proj = make_project(tmp_path_factory.mktemp("pipeline") / "proj", tiny_params, novel_passages=False)
    run(["dvc", "repro"], proj)
    run(["git", "add", "-A"], proj)
    run(["git", "commit", "-q", "-m", "pipeline run"], proj)
    return proj


@pytest.fixture(scope="session")
def taught_model(pipeline_project, tiny_params, tmp_path_factory) -> Path:
    """The tiny export taught one-relation answers and STORY's passages by heart (~1 min)."""
    return teach_one_relation(pipeline_project / "export" / "relsft-model", pipeline_project / "data", tiny_params,
                              tmp_path_factory.mktemp("book-model"), steps=1000, by_heart=story_examples())


@pytest.fixture(scope="module")
def book_server(taught_model, tiny_params, tmp_path_factory):
    """Module-scoped: stopped before other modules start theirs, so two servers never share the cores."""
    from relsft.serve import ServeSettings, VLLMServer, free_port

    settings = ServeSettings.from_params(tiny_params, model=str(taught_model), host="127.0.0.1", port=free_port(),
                                         enforce_eager=True)  # starts faster; answers are the same
    with VLLMServer(settings, api_key=TAUGHT_KEY, log_path=tmp_path_factory.mktemp("book-vllm") / "vllm.log") as srv:
        yield srv
