"""Scheduled retraining: fresh data, the pipeline as a DVC experiment, then the promotion gate.

Deployed with a cron schedule from prefect.yaml (`prefect deploy --all`). A run generates new
synthetic data (a new `generate.seed`), runs every stage as `dvc exp run`, and promotes the
exported candidate into the registry only if `relsft.promote.gate` accepts it; a rejected
candidate leaves production untouched and the run's artifact says why.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from relsft import promote
from relsft.dvcrun import run_dvc

EXPORT = "export/relsft-model"


@task(task_run_name="dvc exp run {name}", cache_policy=NO_CACHE)
def run_experiment(project_dir: str, name: str, set_params: list[str], timeout_seconds: float) -> None:
    args = ["exp", "run", "--name", name] + [a for p in set_params for a in ("-S", p)]
    run_dvc(args, project_dir, get_run_logger().info, timeout=timeout_seconds)


@task(cache_policy=NO_CACHE)
def gate_and_promote(project_dir: str, experiment: str) -> promote.Decision:
    project = Path(project_dir)
    settings = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))["promote"]
    lock = yaml.safe_load((project / "dvc.lock").read_text(encoding="utf-8"))
    datasets_md5 = lock["stages"]["generate"]["outs"][0]["md5"]
    decision = promote.promote_candidate(project / EXPORT, project / settings["registry"], settings,
                                         {"experiment": experiment, "datasets_md5": datasets_md5})
    get_run_logger().info("candidate %s %s", experiment, decision.summary())
    if decision.promote:
        promote.run_reload_hook(settings.get("reload_command", ""), project / settings["registry"])
    return decision


def decision_report(experiment: str, decision: promote.Decision) -> str:
    rows = [f"| {s} | {f1:.4f} | {'-' if not decision.production else f'{decision.production[s]:.4f}'} |"
            for s, f1 in decision.candidate.items()]
    verdict = f"**promoted** as `{decision.version}`" if decision.promote else "**rejected**: production unchanged"
    return "\n".join([f"# Retraining `{experiment}`: {verdict}", "",
                      f"| split | candidate {decision.metric} | production {decision.metric} |", "|---|---|---|", *rows, "",
                      *[f"- {r}" for r in decision.reasons]])


@flow(name="relsft-retrain")
def retrain(project_dir: str = ".", seed: int | None = None, set_params: list[str] | None = None,
            timeout_seconds: float = 14 * 3600) -> dict:
    """Retrain on fresh data (`seed`, default: from the clock) and promote the result if it passes the gate.

    `set_params` are extra `dvc exp run -S` overrides, e.g. ["train.max_steps=2000"].
    """
    seed = int(time.time()) if seed is None else seed
    experiment = f"retrain-{datetime.now(UTC):%Y%m%dT%H%M%S}-s{seed}"
    run_experiment(str(Path(project_dir).resolve()), experiment, [f"generate.seed={seed}", *(set_params or [])],
                   timeout_seconds)
    decision = gate_and_promote(str(Path(project_dir).resolve()), experiment)
    create_markdown_artifact(key="relsft-retrain", markdown=decision_report(experiment, decision),
                             description="promotion gate decision")
    return {"experiment": experiment, **promote.decision_dict(decision)}


if __name__ == "__main__":
    retrain()
