"""Prefect orchestration: the pipeline flow, scheduled retraining behind the promotion gate, the registry,
and `prefect deploy` against a real local Prefect server.

Real Prefect (its test harness: a temporary server and database), real DVC projects, real trained
models. The tiny config's models are far below the real floors (strict F1 ~0): the retraining
test is rejected by params.yaml's own floors; "better/worse than production on the same data" is
checked on the project's splits labelled with one model's own answers, where it scores 1.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId,
                                           LogFilter, LogFilterFlowRunId)
from prefect.logging.handlers import APILogHandler
from prefect.testing.utilities import prefect_test_harness

from helpers import ROOT, TINY, run

sys.path.insert(0, str(ROOT))  # flows/ lives at the repository root, beside prefect.yaml

from flows.pipeline import STAGES, pipeline  # noqa: E402
from flows.retrain import fetch, retrain  # noqa: E402
from relsft import promote  # noqa: E402
from relsft.dvcrun import StageFailed  # noqa: E402

# A gate that any tiny model passes unless it is worse than production (see the module docstring).
LENIENT = {"metric": "strict_f1", "floors": {"test": 0.0, "test_ood": 0.0}, "tolerance": 0.01}


@pytest.fixture(scope="session")
def prefect_harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def tree_digest(d: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(d.rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(d)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def production_state(registry: Path) -> tuple[str, str]:
    """What a server would load: the pointer's target and the bytes behind it."""
    return os.readlink(registry / promote.PRODUCTION), tree_digest(registry / promote.PRODUCTION)


def artifact(key: str) -> str:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return found[0].data


def task_runs(state) -> list:
    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))


def flow_run_logs(state) -> str:
    APILogHandler().flush()  # logs reach the server in batches
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(
            any_=[state.state_details.flow_run_id])))
    return "\n".join(log.message for log in logs)


# --- the pipeline flow -----------------------------------------------------------------------------

def test_pipeline_flow_runs_every_stage_and_reports_metrics(pipeline_project, prefect_harness):
    state = pipeline(project_dir=str(pipeline_project), return_state=True)
    assert state.is_completed(), state.message
    runs = task_runs(state)
    assert sorted(r.name for r in runs) == sorted(f"dvc repro {s}" for s in STAGES)
    assert all(r.state.is_completed() for r in runs)
    report = artifact("relsft-pipeline")
    metrics = json.loads((pipeline_project / "metrics/eval.json").read_text())
    assert f"| finetuned | test_ood | {metrics['finetuned']['test_ood']['strict_f1']:.4f} |" in report
    assert "| base | test |" in report
    assert "reports/data_docs/index.html" in report and "dvc plots show" in report
    # Already reproduced: DVC ran nothing, the project is as it was.
    assert "up to date" in run(["dvc", "status"], pipeline_project).stdout


@pytest.fixture(scope="module")
def toy_project(tmp_path_factory) -> Path:
    """A DVC project whose `train` fails once (a preempted run), `evaluate` always fails, `slow` hangs."""
    proj = tmp_path_factory.mktemp("toy")
    stages = {"stages": {
        "train": {"cmd": "test -e .attempted || { touch .attempted; echo 'killed: preempted' >&2; exit 1; }; "
                         "echo trained > model.txt", "outs": ["model.txt"]},
        "evaluate": {"cmd": "echo 'evaluate: out of memory' >&2; exit 3", "deps": ["model.txt"],
                     "outs": ["scores.txt"]},
        "slow": {"cmd": "sleep 600", "outs": ["never.txt"]}}}
    (proj / "dvc.yaml").write_text(yaml.safe_dump(stages))
    run(["git", "init", "-q", "-b", "main"], proj)
    run(["dvc", "init", "-q"], proj)
    run(["dvc", "config", "core.analytics", "false"], proj)
    return proj


def test_transient_failure_is_retried(toy_project, prefect_harness):
    state = pipeline(project_dir=str(toy_project), stages=["train"], retry_delay_seconds=0.5, return_state=True)
    assert state.is_completed(), state.message
    assert (toy_project / "model.txt").read_text() == "trained\n"
    [train] = task_runs(state)
    assert train.run_count == 2  # failed once, retried, succeeded
    logs = flow_run_logs(state)  # the stage's own output is in the Prefect logs, both attempts
    assert "killed: preempted" in logs and "Running stage 'train'" in logs


def test_failing_stage_fails_the_flow_naming_the_stage(toy_project, prefect_harness):
    state = pipeline(project_dir=str(toy_project), stages=["train", "evaluate"], retry_delay_seconds=0.5,
                     return_state=True)
    assert state.is_failed()
    assert "stage 'evaluate' failed" in state.message and "exited with 3" in state.message
    with pytest.raises(StageFailed, match="out of memory") as failure:
        state.result()
    assert failure.value.stage == "evaluate"
    # Not retried: only training failures are treated as transient.
    evaluate = next(r for r in task_runs(state) if r.name == "dvc repro evaluate")
    assert evaluate.run_count == 1


def test_a_hanging_stage_times_out_and_is_stopped(toy_project, prefect_harness):
    started = time.monotonic()
    state = pipeline(project_dir=str(toy_project), stages=["slow"], stage_timeout_seconds=3, return_state=True)
    assert state.is_failed() and "stage 'slow' failed" in state.message and "timed out after 3 s" in state.message
    assert time.monotonic() - started < 60
    assert "sleep 600" not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout


# --- the promotion gate and the registry ------------------------------------------------------------

def promote_cli(project: Path, params_file: Path, *args: str, check: bool = True):
    return run(["relsft", "--params", str(params_file), "promote", *args], project, check=check)


def git_state(project: Path) -> tuple[str, str, bytes]:
    """What a user sees of the workspace: HEAD, `git status`, params.yaml's bytes."""
    def git(*args):
        return run(["git", *args], project).stdout
    return git("rev-parse", "HEAD"), git("status", "--porcelain"), (project / "params.yaml").read_bytes()


def experiment_params(project: Path, rev: str) -> dict:
    return yaml.safe_load(run(["git", "show", f"{rev}:params.yaml"], project).stdout)


@pytest.fixture(scope="module")
def retrained(pipeline_project, prefect_harness, tmp_path_factory):
    """Production = the project's model (lenient gate); then a scheduled-style retrain with 1 training
    step, gated by params.yaml's own floors. It runs as a temporary experiment: the project is not
    put back afterwards, it must be as it was. The 1-step export is kept for the CLI tests.
    """
    tmp = tmp_path_factory.mktemp("retrain")
    registry = tmp / "registry"
    params = yaml.safe_load((pipeline_project / "params.yaml").read_text())
    strict_file, params_file = tmp / "strict.yaml", tmp / "lenient.yaml"
    strict_file.write_text(yaml.safe_dump(params, allow_unicode=True))
    params["promote"].update(LENIENT, registry=str(registry))
    params_file.write_text(yaml.safe_dump(params, allow_unicode=True))
    promote_cli(pipeline_project, params_file, "--experiment", "baseline")
    before, workspace = production_state(registry), git_state(pipeline_project)
    result = retrain(project_dir=str(pipeline_project), seed=7,
                     set_params=[f"promote.registry={registry}", "train.sft.max_steps=1"])
    after = git_state(pipeline_project)
    fetch(pipeline_project, result["experiment_rev"], "export/relsft-model", tmp / "worse")
    return {"registry": registry, "before": before, "result": result, "worse": tmp / "worse",
            "params_file": params_file, "strict_file": strict_file, "report": artifact("relsft-retrain"),
            "workspace": (workspace, after)}


def test_retrain_rejects_a_worse_candidate_and_keeps_production(retrained, pipeline_project):
    result, registry = retrained["result"], retrained["registry"]
    assert result["promote"] is False
    floor = yaml.safe_load(retrained["strict_file"].read_text())["promote"]["floors"]["test"]
    assert any("test strict_f1" in r and f"is below the floor {floor:.4f}" in r for r in result["reasons"]), result
    assert result["production"] is not None  # it was also compared with production
    assert production_state(registry) == retrained["before"]  # byte-identical, same pointer
    assert sorted(p.name for p in (registry / promote.VERSIONS).iterdir()) == ["v0001"]
    last = promote.history(registry)[-1]
    assert last["event"] == "reject" and last["experiment"] == result["experiment"]
    assert last["generate_seed"] == 7 and last["datasets_md5"] and last["data_sha256"]
    # Both were scored on the candidate's splits (seed 7), not on the project's.
    for split in ("test", "test_ood"):
        project_split = hashlib.md5((pipeline_project / f"datasets/{split}.jsonl").read_bytes()).hexdigest()
        assert len(last["scored_on"][split]) == 32 and last["scored_on"][split] != project_split
    assert "**rejected**" in retrained["report"] and "below the floor" in retrained["report"]
    assert "Both models scored on the candidate's splits" in retrained["report"]


def test_a_retrain_leaves_the_workspace_as_it_was(retrained, pipeline_project):
    before, after = retrained["workspace"]
    assert after == before and before[1] == ""  # same HEAD, `git status` clean, params.yaml byte-identical
    assert "up to date" in run(["dvc", "status"], pipeline_project).stdout
    rev = retrained["result"]["experiment_rev"]
    assert experiment_params(pipeline_project, rev)["train"]["sft"]["max_steps"] == 1
    assert retrained["result"]["experiment"] in run(["dvc", "exp", "list", "--name-only"], pipeline_project).stdout


def test_a_second_retrain_does_not_inherit_the_first_ones_overrides(retrained, pipeline_project, tmp_path):
    workspace = git_state(pipeline_project)
    result = retrain(project_dir=str(pipeline_project), seed=8,
                     set_params=[f"promote.registry={tmp_path / 'registry'}", "train.sft.logging_steps=4"])
    params = experiment_params(pipeline_project, result["experiment_rev"])
    project_params = yaml.safe_load((pipeline_project / "params.yaml").read_text())
    assert params["train"]["sft"]["logging_steps"] == 4
    assert params["train"]["sft"]["max_steps"] == project_params["train"]["sft"]["max_steps"] == TINY["train"]["sft"]["max_steps"]
    assert params["promote"]["registry"] == str(tmp_path / "registry")  # not the first run's
    assert params["generate"]["seed"] == 8
    assert git_state(pipeline_project) == workspace


def answers_as_gold(project: Path, dst: Path) -> Path:
    """The project's splits with its fine-tuned model's own answers as their labels: data on which that
    model scores 1 and any other model less (a real split, real answers; only the labels are chosen)."""
    from relsft.files import read_jsonl, write_jsonl

    dst.mkdir()
    for split in ("test", "test_ood"):
        answers = {r["id"]: r["answer"] for r in read_jsonl(project / f"reports/eval/predictions/finetuned_{split}.jsonl")}
        write_jsonl(dst / f"{split}.jsonl", [dict(e, output=answers[e["id"]]) for e in
                                             read_jsonl(project / f"datasets/{split}.jsonl")])
    return dst


def with_recorded(export: Path, dst: Path, value: float) -> Path:
    """A copy of an exported model whose relsft.json claims `value` on every metric and split."""
    shutil.copytree(export, dst)
    card = json.loads((dst / "relsft.json").read_text())
    for by_split in card["metrics"].values():
        for m in by_split.values():
            m.update({k: value for k in m})
    (dst / "relsft.json").write_text(json.dumps(card))
    return dst


# ROUGE-L of the answer text: the tiny models write no well-formed triple, so F1 is 0 for both; the
# gate's code is the same whichever metric it compares.
SAME_DATA = dict(LENIENT, metric="rougeL", splits=["test", "test_ood"], keep=5)


@pytest.fixture
def same_data(pipeline_project, tmp_path) -> promote.ScoringData:
    params = yaml.safe_load((pipeline_project / "params.yaml").read_text())
    return promote.ScoringData(answers_as_gold(pipeline_project, tmp_path / "datasets"), pipeline_project / "data",
                               params["evaluate"])


def test_the_gate_promotes_a_candidate_better_on_the_same_data_whatever_production_recorded(
        retrained, pipeline_project, same_data, tmp_path):
    on, registry = same_data, tmp_path / "registry"
    assert promote.promote_candidate(with_recorded(retrained["worse"], tmp_path / "proud", 0.99), registry,
                                     SAME_DATA, on).promote  # production: the 1-step model, claiming 0.99
    decision = promote.promote_candidate(pipeline_project / "export/relsft-model", registry, SAME_DATA, on)
    assert decision.promote, decision.reasons
    assert decision.candidate == {"test": 1.0, "test_ood": 1.0}
    assert all(decision.production[s] < 0.9 for s in ("test", "test_ood")), decision.production
    last = promote.history(registry)[-1]
    assert last["scored_on"] == on.md5(["test", "test_ood"]) and last["candidate_recorded"]["test"] < 0.99


def test_the_gate_rejects_a_candidate_worse_on_the_same_data_whatever_it_recorded(
        retrained, pipeline_project, same_data, tmp_path):
    on, registry = same_data, tmp_path / "registry"
    modest = with_recorded(pipeline_project / "export/relsft-model", tmp_path / "modest", 0.0)
    assert promote.promote_candidate(modest, registry, SAME_DATA, on).promote
    before = production_state(registry)
    boastful = with_recorded(retrained["worse"], tmp_path / "boastful", 1.0)
    decision = promote.promote_candidate(boastful, registry, SAME_DATA, on)
    assert not decision.promote and any("worse than production" in r for r in decision.reasons), decision.reasons
    assert decision.production == {"test": 1.0, "test_ood": 1.0}
    assert production_state(registry) == before


def test_promote_reject_and_roll_back_with_the_cli(retrained, pipeline_project, tmp_path):
    registry, worse, params_file = tmp_path / "registry", retrained["worse"], retrained["params_file"]
    promote_cli(pipeline_project, params_file, "--registry", str(registry), "--export", str(worse))
    first = production_state(registry)
    assert first[1] == tree_digest(worse)
    # The project's own export (fully trained) is not worse than the 1-step production model.
    proc = promote_cli(pipeline_project, params_file, "--registry", str(registry))
    assert "promoted as v0002" in proc.stdout
    second = production_state(registry)
    assert second[1] == tree_digest(pipeline_project / "export/relsft-model")
    proc = promote_cli(pipeline_project, retrained["strict_file"], "--registry", str(registry), "--export", str(worse),
                       check=False)
    assert proc.returncode == 1 and "rejected, production unchanged" in proc.stderr and "below the floor" in proc.stderr
    assert production_state(registry) == second
    proc = run(["relsft", "--params", str(params_file), "rollback", "--registry", str(registry)], pipeline_project)
    assert "production is v0001 again" in proc.stdout
    assert production_state(registry) == first
    assert [e["event"] for e in promote.history(registry)] == ["promote", "promote", "reject", "rollback"]


def test_old_versions_are_pruned_and_rollback_says_when_it_cannot(retrained, pipeline_project, tmp_path):
    registry, settings = tmp_path / "registry", dict(LENIENT, splits=["test", "test_ood"], keep=2)
    params = yaml.safe_load((pipeline_project / "params.yaml").read_text())
    on = promote.ScoringData(pipeline_project / "datasets", pipeline_project / "data", params["evaluate"])
    for _ in range(3):
        assert promote.promote_candidate(retrained["worse"], registry, settings, on).promote
    assert sorted(p.name for p in (registry / promote.VERSIONS).iterdir()) == ["v0002", "v0003"]
    assert promote.rollback(registry) == "v0002"
    with pytest.raises(RuntimeError, match="v0001 was pruned"):
        promote.rollback(registry)
    assert os.readlink(registry / promote.PRODUCTION) == "versions/v0002"


# --- deployment to a real Prefect server --------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def prefect_server(tmp_path):
    port = free_port()
    home = tmp_path / "prefect-home"
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_MEMO_STORE_PATH=str(home / "memo_store.toml"),
               PREFECT_API_URL=f"http://127.0.0.1:{port}/api", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{env['PREFECT_API_URL']}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(1)
        yield env
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def test_prefect_deploy_creates_the_scheduled_retraining_deployment(prefect_server):
    def prefect(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(["prefect", "--no-prompt", *args], cwd=ROOT, env=prefect_server, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    prefect("work-pool", "create", "relsft", "--type", "process")
    prefect("deploy", "--all")
    api = prefect_server["PREFECT_API_URL"]
    deployment = httpx.get(f"{api}/deployments/name/relsft-retrain/relsft-retrain", timeout=30).json()
    [schedule] = deployment["schedules"]
    assert schedule["schedule"]["cron"] == "0 3 * * 1" and schedule["active"]
    assert deployment["entrypoint"] == "flows/retrain.py:retrain" and deployment["work_pool_name"] == "relsft"
    assert deployment["parameters"] == {"project_dir": ".", "set_params": []}
    assert deployment["global_concurrency_limit"]["limit"] == 1, deployment
    assert deployment["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(ROOT)
    assert "flows/pipeline.py:pipeline" in prefect("deployment", "inspect", "relsft-pipeline/relsft-pipeline").stdout
    # The scheduler fills in upcoming runs (it fails with SQLAlchemy 2.1, see PLATFORM.md).
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        runs = httpx.post(f"{api}/flow_runs/filter", timeout=30, json={
            "deployments": {"id": {"any_": [deployment["id"]]}}}).json()
        if runs:
            break
        time.sleep(3)
    assert runs and all(r["state_type"] == "SCHEDULED" for r in runs)
