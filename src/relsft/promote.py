"""The model registry and its promotion gate: a candidate replaces production only if it is good enough.

Layout of the registry directory (`promote.registry` in params.yaml):

    versions/v0001/, v0002/, ...   exported model directories, immutable once written
    production -> versions/v0002   the pointer a server loads; flipped atomically with os.replace
    history.jsonl                  one line per promotion, rejection and rollback

The gate compares like with like: production and candidate are both scored, greedily and with
`relsft.evaluate`'s code, on the candidate's own test splits (`promote.splits`; a hand-labelled
split such as `gold` joins by adding it there), and each history line records the md5 of every
split both were scored on. The numbers a model was exported with are never compared across data:
two draws of the same recipe differ by more than the tolerance on test_ood.

The production *stack* is history replayed: a promotion pushes its version, a rollback pops one,
so `rollback` always returns to the model that was production before the current one. The
newest `keep` versions of the stack are kept on disk; older ones are deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PRODUCTION = "production"
VERSIONS = "versions"
HISTORY = "history.jsonl"


@dataclass
class Decision:
    promote: bool
    reasons: list[str]
    candidate: dict[str, float]
    production: dict[str, float] | None
    metric: str = "strict_f1"
    version: str | None = None          # the new production version, when promoted
    record: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        verdict = f"promoted as {self.version}" if self.promote else "rejected"
        return f"{verdict}: " + "; ".join(self.reasons)


def scores(metrics: dict[str, Any], splits: list[str], metric: str = "strict_f1") -> dict[str, float]:
    """The fine-tuned model's `metric` per split, from metrics/eval.json (or relsft.json's `metrics`)."""
    missing = [s for s in splits if metric not in metrics.get("finetuned", {}).get(s, {})]
    if missing:
        raise ValueError(f"metrics have no fine-tuned {metric} for {missing}")
    return {s: float(metrics["finetuned"][s][metric]) for s in splits}


@dataclass(frozen=True)
class ScoringData:
    """The splits both models are scored on: the candidate's datasets, its raw data (symmetric relations)
    and the evaluate settings (max_new_tokens, batch_size, max_examples) it was evaluated with."""
    datasets: Path
    data: Path
    evaluate: dict[str, Any]

    @classmethod
    def from_params(cls, datasets: str | Path, data: str | Path, params: dict[str, Any]) -> "ScoringData":
        """Scored as the evaluate stage scores: its settings and the context length it gives vLLM."""
        from .evaluate import evaluate_settings

        return cls(Path(datasets), Path(data), evaluate_settings(params["evaluate"], params["format"]["max_length"]))

    def md5(self, splits: list[str]) -> dict[str, str]:
        from .evaluate import split_path

        return {s: hashlib.md5(split_path(self.datasets, s, self.data).read_bytes()).hexdigest() for s in splits}


def score_model(model_dir: str | Path, on: ScoringData, splits: list[str], metric: str = "strict_f1") -> dict[str, float]:
    """`metric` of the exported model in `model_dir` on each split, greedy, as the evaluate stage scores."""
    from .evaluate import decode_splits, load_split, score_answers
    from .vocabulary import symmetric_relations

    symmetric = symmetric_relations(on.data)
    examples = {s: load_split(on.datasets, s, on.evaluate.get("max_examples", 0), on.data) for s in splits}
    answers, decoding = decode_splits(model_dir, {s: [e["text"] for e in ex] for s, ex in examples.items()},
                                      on.evaluate, desc=f"gate {Path(model_dir).name}")
    return {s: round(float(score_answers(examples[s], answers[s], symmetric, decoding)[0][metric]), 4) for s in splits}


def gate(candidate: dict[str, float], production: dict[str, float] | None, floors: dict[str, float],
         tolerance: float, metric: str = "strict_f1") -> Decision:
    """Promote only if every split is at or above its floor and at most `tolerance` below production."""
    reasons, ok = [], True
    for split, f1 in candidate.items():
        floor = float(floors.get(split, 0.0))
        if f1 < floor:
            ok = False
            reasons.append(f"{split} {metric} {f1:.4f} is below the floor {floor:.4f}")
        if production is not None and split in production and f1 < production[split] - tolerance:
            ok = False
            reasons.append(f"{split} {metric} {f1:.4f} is worse than production's {production[split]:.4f} "
                           f"by more than the tolerance {tolerance:.4f}")
    if ok:
        reasons.append("no production model yet" if production is None else
                       f"{metric} not worse than production: " + ", ".join(
                           f"{s} {candidate[s]:.4f} vs {production.get(s, float('nan')):.4f}" for s in candidate))
        reasons.append(f"{metric} floors met: " + ", ".join(f"{s} >= {float(floors.get(s, 0.0)):.4f}" for s in candidate))
    return Decision(ok, reasons, candidate, production, metric)


def history(registry: str | Path) -> list[dict[str, Any]]:
    path = Path(registry) / HISTORY
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def production_stack(registry: str | Path) -> list[str]:
    stack: list[str] = []
    for event in history(registry):
        if event["event"] == "promote":
            stack.append(event["version"])
        elif event["event"] == "rollback":
            stack.pop()
    return stack


def production_dir(registry: str | Path) -> Path | None:
    """The directory the production pointer resolves to, or None before the first promotion."""
    pointer = Path(registry) / PRODUCTION
    return pointer.resolve() if pointer.is_symlink() else None


def model_metrics(model_dir: str | Path) -> dict[str, Any]:
    """An exported model's own record (relsft.json: metrics, data hash, params)."""
    return json.loads((Path(model_dir) / "relsft.json").read_text(encoding="utf-8"))


@contextlib.contextmanager
def _locked(registry: Path) -> Iterator[None]:
    # Two runs promoting at once would race for the same version number and pointer.
    registry.mkdir(parents=True, exist_ok=True)
    with (registry / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _append(registry: Path, record: dict[str, Any]) -> None:
    with (registry / HISTORY).open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _point_production_at(registry: Path, version: str) -> None:
    # A new symlink under a temporary name, renamed over the old one: readers see old or new, never neither.
    tmp = registry / f".{PRODUCTION}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(Path(VERSIONS) / version, tmp)
    os.replace(tmp, registry / PRODUCTION)


def _next_version(registry: Path) -> str:
    used = [int(p.name[1:]) for p in (registry / VERSIONS).glob("v[0-9]*")]
    used += [int(e["version"][1:]) for e in history(registry) if e.get("version")]
    return f"v{max(used, default=0) + 1:04d}"


def _prune(registry: Path, keep: int) -> None:
    kept = set(production_stack(registry)[-max(1, keep):])
    for d in (registry / VERSIONS).iterdir():
        if d.is_dir() and d.name not in kept and not d.name.startswith("."):
            shutil.rmtree(d)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def promote_candidate(export_dir: str | Path, registry: str | Path, settings: dict[str, Any], on: ScoringData,
                      record: dict[str, Any] | None = None) -> Decision:
    """Score the exported model in `export_dir` and production on the same data `on`; promote the
    candidate into the registry if the gate passes, or record why not.

    A rejected candidate changes nothing but a `reject` line in history.jsonl.
    """
    export_dir, registry = Path(export_dir), Path(registry)
    card = model_metrics(export_dir)
    splits, metric = list(settings["splits"]), settings.get("metric", "strict_f1")
    scored_on = on.md5(splits)  # fails early, with the file's name, when a split is missing
    candidate = score_model(export_dir, on, splits, metric)
    with _locked(registry):
        current = production_dir(registry)
        production = score_model(current, on, splits, metric) if current else None
        decision = gate(candidate, production, settings["floors"], float(settings["tolerance"]), metric)
        decision.record = {"time": _now(), "event": "promote" if decision.promote else "reject", "metric": metric,
                           "candidate": candidate, "production": production, "scored_on": scored_on,
                           "candidate_recorded": {s: m.get(metric) for s, m in card["metrics"].get("finetuned", {}).items()
                                                  if s in splits},
                           "production_version": current.name if current else None,
                           "data_sha256": card.get("data_sha256"),
                           "generate_seed": card.get("params", {}).get("generate", {}).get("seed"),
                           "reasons": decision.reasons, **(record or {})}
        if decision.promote:
            version = _next_version(registry)
            staging = registry / VERSIONS / f".{version}.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(export_dir, staging)
            staging.chmod(0o755)  # exports are written 0700 (mkdtemp); a server may run as another user
            staging.rename(registry / VERSIONS / version)
            decision.version = decision.record["version"] = version
            _append(registry, decision.record)       # history first: a crash here leaves production as it was
            _point_production_at(registry, version)
            _prune(registry, int(settings.get("keep", 5)))
        else:
            _append(registry, decision.record)
    return decision


def promote_and_reload(export_dir: str | Path, registry: str | Path, settings: dict[str, Any], on: ScoringData,
                       record: dict[str, Any] | None = None, say: Callable[[str], None] = print) -> Decision:
    """What `relsft promote` and the retraining flow both run: the gate (`promote_candidate`), its
    verdict passed to `say`, then the reload hook (`promote.reload_command`) if production changed."""
    decision = promote_candidate(export_dir, registry, settings, on, record)
    say(decision.summary())
    if decision.promote:
        run_reload_hook(settings.get("reload_command", ""), registry)
    return decision


def rollback(registry: str | Path) -> str:
    """Point production back at the version that was production before the current one."""
    registry = Path(registry)
    with _locked(registry):
        stack = production_stack(registry)
        if len(stack) < 2:
            raise RuntimeError(f"nothing to roll back to in {registry}: production history is {stack or 'empty'}")
        current, previous = stack[-1], stack[-2]
        if not (registry / VERSIONS / previous).is_dir():
            raise RuntimeError(f"{previous} was pruned from {registry} (raise promote.keep to keep more versions)")
        _append(registry, {"time": _now(), "event": "rollback", "version": previous, "from_version": current})
        _point_production_at(registry, previous)
    return previous


def run_reload_hook(command: str, registry: str | Path) -> None:
    """Tell a running server about the new production model (e.g. restart vLLM); no-op when unset."""
    if not command:
        return
    env = dict(os.environ, RELSFT_PRODUCTION=str(Path(registry).resolve() / PRODUCTION))
    proc = subprocess.run(command, shell=True, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"reload hook `{command}` failed ({proc.returncode}): {proc.stderr[-2000:]}")


def decision_dict(decision: Decision) -> dict[str, Any]:
    return asdict(decision)
