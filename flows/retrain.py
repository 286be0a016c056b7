"""Scheduled retraining: fresh data, the pipeline as a temporary DVC experiment, then the promotion gate.

Deployed with a cron schedule from prefect.yaml (`prefect deploy --all`). A run generates new
synthetic data (a new `generate.seed`) and runs every stage as `dvc exp run --temp`: DVC copies
the project into a directory of its own under .dvc/tmp/exps, applies the run's `-S` overrides
there, and records the result as an experiment (`dvc exp show`) whose outputs go to the project's
cache. The user's workspace, params.yaml included, is never written, so nothing one run sets
carries into the next. The candidate's export, splits and raw data are then read from that
experiment's commit through `dvc.api.DVCFileSystem` into a scratch directory, and
`relsft.promote` scores candidate and production on those same splits before the gate decides;
a rejected candidate leaves production untouched and the run's artifact says why.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from relsft import promote
from relsft.dvcrun import run_dvc
from relsft.params import load_params
from relsft.paths import stage_paths


@task(task_run_name="dvc exp run --temp {name}", cache_policy=NO_CACHE)
def run_experiment(project_dir: str, name: str, set_params: list[str], timeout_seconds: float) -> str:
    """Run the pipeline as experiment `name` outside the workspace; return the experiment's commit."""
    args = ["exp", "run", "--temp", "--name", name] + [a for p in set_params for a in ("-S", p)]
    run_dvc(args, project_dir, get_run_logger().info, timeout=timeout_seconds)
    refs = subprocess.run(["git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps/"],
                          cwd=project_dir, capture_output=True, text=True, check=True).stdout.split("\n")
    found = [line.split()[0] for line in refs if line.endswith(f"/{name}")]
    if len(found) != 1:
        raise RuntimeError(f"experiment {name!r}: expected one ref under refs/exps, found {len(found)}")
    return found[0]


def fetch(project: Path, rev: str, path: str, dst: Path) -> Path:
    """`path` (git- or DVC-tracked) as it is in commit `rev`, copied to `dst` from the project's cache."""
    from dvc.api import DVCFileSystem

    DVCFileSystem(str(project), rev=rev).get(path, str(dst), recursive=True)
    return dst


def git_show(project: Path, rev: str, path: str) -> str:
    return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=project, check=True, capture_output=True,
                          text=True).stdout


def experiment_params(project: Path, rev: str, scratch: Path) -> dict:
    """The experiment's settings as its stages read them: its params.yaml over the recipe it names."""
    (scratch / "params.yaml").write_text(git_show(project, rev, "params.yaml"), encoding="utf-8")
    if recipe := yaml.safe_load((scratch / "params.yaml").read_text(encoding="utf-8")).get("recipe"):
        (scratch / "recipes").mkdir()
        (scratch / "recipes" / f"{recipe}.yaml").write_text(git_show(project, rev, f"recipes/{recipe}.yaml"),
                                                            encoding="utf-8")
    return load_params(scratch / "params.yaml")


@task(cache_policy=NO_CACHE)
def gate_and_promote(project_dir: str, experiment: str, rev: str) -> promote.Decision:
    project = Path(project_dir)
    evaluated = stage_paths("evaluate", project / "dvc.yaml")
    with tempfile.TemporaryDirectory(prefix="relsft-candidate-") as scratch:
        scratch = Path(scratch)
        params = experiment_params(project, rev, scratch)
        settings = params["promote"]
        export = fetch(project, rev, stage_paths("export", project / "dvc.yaml")["out"], scratch / "export")
        on = promote.ScoringData(fetch(project, rev, evaluated["datasets"], scratch / "datasets"),
                                 fetch(project, rev, evaluated["data"], scratch / "data"), params["evaluate"])
        lock = yaml.safe_load(git_show(project, rev, "dvc.lock"))
        registry = project / settings["registry"]
        decision = promote.promote_candidate(export, registry, settings, on, {
            "experiment": experiment, "experiment_rev": rev,
            "datasets_md5": lock["stages"]["generate"]["outs"][0]["md5"]})
    get_run_logger().info("candidate %s %s", experiment, decision.summary())
    if decision.promote:
        promote.run_reload_hook(settings.get("reload_command", ""), registry)
    return decision


def decision_report(experiment: str, decision: promote.Decision) -> str:
    rows = [f"| {s} | {f1:.4f} | {'-' if not decision.production else f'{decision.production[s]:.4f}'} |"
            for s, f1 in decision.candidate.items()]
    verdict = f"**promoted** as `{decision.version}`" if decision.promote else "**rejected**: production unchanged"
    scored_on = ", ".join(f"{s} md5 `{md5}`" for s, md5 in decision.record.get("scored_on", {}).items())
    return "\n".join([f"# Retraining `{experiment}`: {verdict}", "",
                      f"Both models scored on the candidate's splits: {scored_on}", "",
                      f"| split | candidate {decision.metric} | production {decision.metric} |", "|---|---|---|", *rows, "",
                      *[f"- {r}" for r in decision.reasons]])


@flow(name="relsft-retrain")
def retrain(project_dir: str = ".", seed: int | None = None, set_params: list[str] | None = None,
            timeout_seconds: float = 14 * 3600) -> dict:
    """Retrain on fresh data (`seed`, default: from the clock) and promote the result if it passes the gate.

    `set_params` are extra `dvc exp run -S` overrides for this run only, e.g. ["+train.sft.max_steps=2000"]
    (`+`: params.yaml leaves train.sft to the recipe, so the key is added there for the run).
    """
    seed = int(time.time()) if seed is None else seed
    project = str(Path(project_dir).resolve())
    experiment = f"retrain-{datetime.now(UTC):%Y%m%dT%H%M%S}-s{seed}"
    rev = run_experiment(project, experiment, [f"generate.seed={seed}", *(set_params or [])], timeout_seconds)
    decision = gate_and_promote(project, experiment, rev)
    create_markdown_artifact(key="relsft-retrain", markdown=decision_report(experiment, decision),
                             description="promotion gate decision")
    return {"experiment": experiment, "experiment_rev": rev, **promote.decision_dict(decision)}


if __name__ == "__main__":
    retrain()
