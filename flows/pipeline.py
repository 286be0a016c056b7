"""The relsft pipeline as a Prefect flow: one task per DVC stage, in dvc.yaml's order.

DVC decides what actually runs (`dvc repro <stage>` skips a stage whose inputs did not change);
Prefect adds retries, timeouts, logs, run history and a metrics artifact.

    python flows/pipeline.py                 # the whole pipeline in the current directory
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from relsft.dvcrun import run_dvc
from relsft.paths import load_pipeline, stage_paths_or_empty
from relsft.report import metrics_table

STAGES = list(load_pipeline(Path(__file__).resolve().parents[1] / "dvc.yaml"))  # dvc.yaml's order
HOUR = 3600


@task(task_run_name="dvc repro {stage}", cache_policy=NO_CACHE)
def run_stage(project_dir: str, stage: str, timeout_seconds: float) -> str:
    return run_dvc(["repro", stage], project_dir, get_run_logger().info, stage=stage, timeout=timeout_seconds)


def metrics_report(project: Path) -> str:
    metrics_file = stage_paths_or_empty("evaluate", project / "dvc.yaml").get("metrics")
    docs = stage_paths_or_empty("validate", project / "dvc.yaml").get("docs")
    lines = [f"# relsft pipeline: `{project}`", ""]
    if metrics_file and (project / metrics_file).exists():
        lines.append(metrics_table(json.loads((project / metrics_file).read_text(encoding="utf-8"))))
    else:
        lines.append(f"No metrics yet (`{metrics_file}` is written by the evaluate stage)." if metrics_file else
                     "No evaluate stage in dvc.yaml, no metrics.")
    lines += ["", f"- Data Docs: `{project / (docs or '-') / 'index.html'}`",
              f"- Plots: `dvc plots show` in `{project}`, then open `dvc_plots/index.html`",
              "- Compare runs: `dvc metrics show`, `dvc exp show`"]
    return "\n".join(lines)


@flow(name="relsft-pipeline")
def pipeline(project_dir: str = ".", stages: list[str] | None = None, retry_stages: list[str] | None = None,
             retries: int = 2, retry_delay_seconds: float = 30.0, stage_timeout_seconds: float = 2 * HOUR,
             train_timeout_seconds: float = 12 * HOUR) -> str:
    """Run the DVC stages in order; a failing stage fails the flow, naming the stage.

    Training is retried with exponential backoff (a preempted, OOM-killed or timed-out run;
    `train.resume` continues from the last checkpoint). Other stages are deterministic: a retry
    would fail again.
    """
    project = Path(project_dir).resolve()
    retried = {"train"} if retry_stages is None else set(retry_stages)
    for stage in stages or list(load_pipeline(project / "dvc.yaml")):
        step = run_stage
        if stage in retried:
            step = step.with_options(retries=retries, retry_delay_seconds=exponential_backoff(retry_delay_seconds))
        step(str(project), stage, train_timeout_seconds if stage == "train" else stage_timeout_seconds)
    report = metrics_report(project)
    create_markdown_artifact(key="relsft-pipeline", markdown=report, description="metrics of the pipeline run")
    return report


if __name__ == "__main__":
    pipeline()
