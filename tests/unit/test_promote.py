"""The promotion registry and its gate, with the scorer stubbed: versions, pruning to `promote.keep`,
rollback, the gate's decision and what it records.

`promote.score_model` (greedy decoding with evaluate's code) is replaced by a stub that reads each model
directory's `scores.json`: the registry's logic runs for real on real directories, symlinks and
history, in milliseconds. The real scorer, on real trained models, is tests/integration/test_flows.py's.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from relsft import promote

SPLITS = ["test", "test_ood"]
SETTINGS = {"metric": "strict_f1", "splits": SPLITS, "floors": {"test": 0.5, "test_ood": 0.3}, "tolerance": 0.02,
            "keep": 5}


@pytest.fixture
def scorer(monkeypatch):
    """The stub scorer: a model's scores are its directory's scores.json; every call is recorded."""
    calls = []

    def score_model(model_dir, on, splits, metric="strict_f1"):
        calls.append({"model": Path(model_dir), "on": on, "splits": list(splits), "metric": metric})
        scores = json.loads((Path(model_dir) / "scores.json").read_text())
        return {s: scores[s] for s in splits}

    monkeypatch.setattr(promote, "score_model", score_model)
    return calls


@pytest.fixture
def on(tmp_path) -> promote.ScoringData:
    """The splits both models are scored on (the stub reads none of them; the registry hashes them)."""
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    for split in SPLITS:
        (datasets / f"{split}.jsonl").write_text(json.dumps({"id": split, "text": "甲与乙是师徒。",
                                                             "output": "甲-乙:师徒"}, ensure_ascii=False) + "\n")
    return promote.ScoringData(datasets, tmp_path / "data", {"max_new_tokens": 8})


class Exports:
    """Exported-model directories (relsft.json, a weights file, scores.json for the stub scorer)."""

    def __init__(self, root: Path):
        self.root, self.made = root, 0

    def __call__(self, test: float, test_ood: float, recorded: float | None = None) -> Path:
        self.made += 1
        d = self.root / f"export-{self.made}"
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(os.urandom(64))  # tells the copies apart
        (d / "scores.json").write_text(json.dumps({"test": test, "test_ood": test_ood}))
        claimed = {"test": test, "test_ood": test_ood} if recorded is None else dict.fromkeys(SPLITS, recorded)
        card = {"metrics": {"finetuned": {s: {"strict_f1": v} for s, v in claimed.items()}},
                "data_sha256": f"sha-{self.made}", "params": {"generate": {"seed": self.made}}}
        (d / "relsft.json").write_text(json.dumps(card))
        return d


@pytest.fixture
def export(tmp_path) -> Exports:
    return Exports(tmp_path / "exports")


def versions(registry: Path) -> list[str]:
    return sorted(p.name for p in (registry / promote.VERSIONS).iterdir())


def production(registry: Path) -> str:
    return os.readlink(registry / promote.PRODUCTION)


def same_files(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and \
        all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


# --- the gate's decision rule --------------------------------------------------------------------

def test_gate_decisions():
    floors = {"test": 0.5, "test_ood": 0.3}
    assert promote.gate({"test": 0.6, "test_ood": 0.4}, None, floors, 0.02).promote
    low = promote.gate({"test": 0.6, "test_ood": 0.2}, None, floors, 0.02)
    assert not low.promote and "test_ood strict_f1 0.2000 is below the floor 0.3000" in low.reasons
    prod = {"test": 0.8, "test_ood": 0.5}
    assert promote.gate({"test": 0.79, "test_ood": 0.48}, prod, floors, 0.02).promote  # within tolerance
    worse = promote.gate({"test": 0.9, "test_ood": 0.47}, prod, floors, 0.02)
    assert not worse.promote and any("test_ood" in r and "worse than production" in r for r in worse.reasons)


def test_gate_floor_and_tolerance_are_inclusive_and_a_missing_floor_is_zero():
    prod = {"test": 0.8, "test_ood": 0.5}
    assert promote.gate({"test": 0.5, "test_ood": 0.3}, None, {"test": 0.5, "test_ood": 0.3}, 0.0).promote
    assert promote.gate({"test": 0.78, "test_ood": 0.48}, prod, {}, 0.02).promote  # exactly the tolerance below
    assert not promote.gate({"test": 0.7799, "test_ood": 0.5}, prod, {}, 0.02).promote
    assert promote.gate({"test": 0.0, "test_ood": 0.0}, None, {}, 0.02).promote  # no floors: 0


# --- versions ------------------------------------------------------------------------------------

def test_promotions_are_numbered_v0001_v0002_and_production_points_at_the_newest(scorer, on, export, tmp_path):
    registry = tmp_path / "registry"
    assert promote.production_dir(registry) is None
    exports = [export(0.6, 0.4), export(0.6, 0.4), export(0.7, 0.45)]
    for i, candidate in enumerate(exports, 1):
        decision = promote.promote_candidate(candidate, registry, SETTINGS, on, {"experiment": f"run-{i}"})
        assert decision.promote and decision.version == f"v{i:04d}", decision.reasons
        assert production(registry) == f"versions/v{i:04d}"
        assert promote.production_dir(registry) == (registry / "versions" / f"v{i:04d}").resolve()
    assert versions(registry) == ["v0001", "v0002", "v0003"]
    for i, candidate in enumerate(exports, 1):  # each version is a byte-identical copy of its export
        assert same_files(candidate, registry / "versions" / f"v{i:04d}")
    assert same_files(exports[-1], registry / promote.PRODUCTION)
    history = promote.history(registry)
    assert [(e["event"], e["version"], e["experiment"]) for e in history] == [
        ("promote", "v0001", "run-1"), ("promote", "v0002", "run-2"), ("promote", "v0003", "run-3")]
    assert promote.production_stack(registry) == ["v0001", "v0002", "v0003"]
    assert history[0]["production_version"] is None and history[2]["production_version"] == "v0002"
    assert history[2]["data_sha256"] == "sha-3" and history[2]["generate_seed"] == 3
    assert not [p for p in (registry / promote.VERSIONS).iterdir() if p.name.startswith(".")]  # no staging left


def test_a_version_number_is_never_reused(scorer, on, export, tmp_path):
    """Numbers come from the directories and the history: after pruning, or with the newest directory
    gone (rolled back from, then deleted by hand), the next version is still a new number."""
    registry, settings = tmp_path / "registry", dict(SETTINGS, keep=1)
    for _ in range(3):
        assert promote.promote_candidate(export(0.6, 0.4), registry, settings, on).promote
    assert versions(registry) == ["v0003"]
    assert promote.promote_candidate(export(0.6, 0.4), registry, settings, on).version == "v0004"
    assert versions(registry) == ["v0004"]

    registry = tmp_path / "registry-2"
    for _ in range(3):
        promote.promote_candidate(export(0.6, 0.4), registry, SETTINGS, on)
    assert promote.rollback(registry) == "v0002"
    shutil.rmtree(registry / "versions" / "v0003")
    assert promote.promote_candidate(export(0.6, 0.4), registry, SETTINGS, on).version == "v0004"


# --- pruning to promote.keep ---------------------------------------------------------------------

@pytest.mark.parametrize("keep, kept", [(2, ["v0003", "v0004"]), (3, ["v0002", "v0003", "v0004"]),
                                        (5, ["v0001", "v0002", "v0003", "v0004"]), (0, ["v0004"])])
def test_only_the_newest_keep_versions_stay_on_disk(scorer, on, export, tmp_path, keep, kept):
    registry = tmp_path / "registry"
    for _ in range(4):
        assert promote.promote_candidate(export(0.6, 0.4), registry, dict(SETTINGS, keep=keep), on).promote
    assert versions(registry) == kept  # keep 0 still keeps production
    assert production(registry) == "versions/v0004"
    assert promote.production_stack(registry) == ["v0001", "v0002", "v0003", "v0004"]  # history keeps them all


def test_a_version_rolled_back_from_is_pruned_at_the_next_promotion(scorer, on, export, tmp_path):
    """Pruning keeps the newest `keep` of the production stack, which a rollback popped v0003 from."""
    registry, settings = tmp_path / "registry", dict(SETTINGS, keep=3)
    for _ in range(3):
        promote.promote_candidate(export(0.6, 0.4), registry, settings, on)
    assert promote.rollback(registry) == "v0002"
    assert versions(registry) == ["v0001", "v0002", "v0003"]  # a rollback deletes nothing
    assert promote.promote_candidate(export(0.6, 0.4), registry, settings, on).version == "v0004"
    assert versions(registry) == ["v0001", "v0002", "v0004"]
    assert promote.production_stack(registry) == ["v0001", "v0002", "v0004"]


# --- rollback ------------------------------------------------------------------------------------

def test_rollback_returns_to_the_previous_production_one_step_at_a_time(scorer, on, export, tmp_path):
    registry = tmp_path / "registry"
    exports = [export(0.6, 0.4) for _ in range(3)]
    for candidate in exports:
        promote.promote_candidate(candidate, registry, SETTINGS, on)
    assert promote.rollback(registry) == "v0002"
    assert production(registry) == "versions/v0002" and same_files(exports[1], registry / promote.PRODUCTION)
    assert promote.rollback(registry) == "v0001"
    assert production(registry) == "versions/v0001" and same_files(exports[0], registry / promote.PRODUCTION)
    with pytest.raises(RuntimeError, match=r"nothing to roll back to .*\['v0001'\]"):
        promote.rollback(registry)
    assert production(registry) == "versions/v0001"
    events = [(e["event"], e["version"], e.get("from_version")) for e in promote.history(registry)]
    assert events[3:] == [("rollback", "v0002", "v0003"), ("rollback", "v0001", "v0002")]
    # A promotion after rollbacks goes on top of what is production now.
    assert promote.promote_candidate(export(0.6, 0.4), registry, SETTINGS, on).version == "v0004"
    assert promote.production_stack(registry) == ["v0001", "v0004"]
    assert promote.rollback(registry) == "v0001"


def test_rollback_without_history_or_to_a_pruned_version_says_why(scorer, on, export, tmp_path):
    registry = tmp_path / "registry"
    with pytest.raises(RuntimeError, match="nothing to roll back to .*: production history is empty"):
        promote.rollback(registry)
    for _ in range(3):
        promote.promote_candidate(export(0.6, 0.4), registry, dict(SETTINGS, keep=2), on)
    assert promote.rollback(registry) == "v0002"
    with pytest.raises(RuntimeError, match=r"v0001 was pruned .*raise promote.keep"):
        promote.rollback(registry)
    assert production(registry) == "versions/v0002"
    assert [e["event"] for e in promote.history(registry)] == ["promote"] * 3 + ["rollback"]


# --- the gate, in the registry -------------------------------------------------------------------

def test_both_models_are_scored_fresh_on_the_same_data(scorer, on, export, tmp_path):
    registry = tmp_path / "registry"
    first = export(0.6, 0.4)
    promote.promote_candidate(first, registry, SETTINGS, on)
    assert [c["model"] for c in scorer] == [first]  # no production yet: the candidate alone
    second = export(0.7, 0.45)
    decision = promote.promote_candidate(second, registry, dict(SETTINGS, metric="rougeL"), on)
    candidate_call, production_call = scorer[1:]
    assert candidate_call["model"] == second
    assert production_call["model"].resolve() == (registry / "versions" / "v0001").resolve()
    assert candidate_call["on"] is production_call["on"] is on
    assert candidate_call["splits"] == production_call["splits"] == SPLITS
    assert candidate_call["metric"] == production_call["metric"] == decision.metric == "rougeL"
    assert decision.candidate == {"test": 0.7, "test_ood": 0.45} and decision.production == {"test": 0.6, "test_ood": 0.4}
    record = promote.history(registry)[-1]
    assert record["scored_on"] == on.md5(SPLITS) and all(len(h) == 32 for h in record["scored_on"].values())
    assert record["candidate"] == decision.candidate and record["production"] == decision.production


def test_a_candidate_worse_than_production_is_rejected_and_changes_nothing_but_history(scorer, on, export, tmp_path):
    registry = tmp_path / "registry"
    promote.promote_candidate(export(0.7, 0.45), registry, SETTINGS, on)
    best = export(0.8, 0.5)
    promote.promote_candidate(best, registry, SETTINGS, on)
    before = (production(registry), versions(registry))
    assert before == ("versions/v0002", ["v0001", "v0002"])
    # Above every floor, within tolerance on test, more than the tolerance below production on test_ood.
    decision = promote.promote_candidate(export(0.79, 0.47), registry, SETTINGS, on, {"experiment": "worse"})
    assert not decision.promote and decision.version is None
    assert any("test_ood strict_f1 0.4700 is worse than production's 0.5000" in r for r in decision.reasons)
    assert not any(r.startswith("test strict_f1") for r in decision.reasons), decision.reasons
    assert (production(registry), versions(registry)) == before and same_files(best, registry / promote.PRODUCTION)
    last = promote.history(registry)[-1]
    assert last["event"] == "reject" and "version" not in last and last["experiment"] == "worse"
    assert last["production_version"] == "v0002" and last["reasons"] == decision.reasons
    assert promote.production_stack(registry) == ["v0001", "v0002"]
    # Within the tolerance everywhere: promoted.
    assert promote.promote_candidate(export(0.79, 0.49), registry, SETTINGS, on).version == "v0003"


def test_a_candidate_below_a_floor_is_rejected_even_with_no_production(scorer, on, export, tmp_path):
    registry = tmp_path / "registry"
    decision = promote.promote_candidate(export(0.6, 0.29), registry, SETTINGS, on)
    assert not decision.promote
    assert decision.reasons == ["test_ood strict_f1 0.2900 is below the floor 0.3000"]
    assert not (registry / promote.PRODUCTION).exists() and not (registry / promote.VERSIONS).exists()
    assert [e["event"] for e in promote.history(registry)] == ["reject"]


def test_the_gate_uses_fresh_scores_not_the_ones_a_model_recorded(scorer, on, export, tmp_path):
    """An export's relsft.json may claim anything (other data, another run): the history keeps the claim
    beside the fresh score, and only the fresh score decides."""
    registry = tmp_path / "registry"
    modest = export(0.8, 0.5, recorded=0.0)
    assert promote.promote_candidate(modest, registry, SETTINGS, on).promote
    boastful = export(0.1, 0.1, recorded=1.0)
    decision = promote.promote_candidate(boastful, registry, SETTINGS, on)
    assert not decision.promote and decision.candidate == {"test": 0.1, "test_ood": 0.1}
    assert decision.production == {"test": 0.8, "test_ood": 0.5}
    last = promote.history(registry)[-1]
    assert last["candidate_recorded"] == {"test": 1.0, "test_ood": 1.0} and last["candidate"] == decision.candidate
    assert production(registry) == "versions/v0001"


def test_a_missing_split_fails_before_anything_is_scored_or_written(scorer, on, export, tmp_path):
    registry = tmp_path / "registry"
    (on.datasets / "test_ood.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="test_ood.jsonl"):
        promote.promote_candidate(export(0.6, 0.4), registry, SETTINGS, on)
    assert scorer == [] and promote.history(registry) == []


# --- the reload hook and the CLI ---------------------------------------------------------------------

def test_the_reload_hook_gets_the_production_path_and_its_failure_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    registry = Path("registry")  # as promote.registry is usually written: relative to the project
    promote.run_reload_hook("", registry)  # unset: nothing runs
    out = tmp_path / "seen"
    promote.run_reload_hook(f'cd / && echo "$RELSFT_PRODUCTION" > {out}', registry)
    assert out.read_text().strip() == str(tmp_path.resolve() / "registry" / promote.PRODUCTION)  # absolute
    with pytest.raises(RuntimeError, match=r"reload hook `echo no >&2; exit 3` failed \(3\): no"):
        promote.run_reload_hook("echo no >&2; exit 3", registry)


def test_promote_and_rollback_commands(scorer, on, export, tmp_path, monkeypatch, capsys):
    """`relsft promote` / `relsft rollback` on the registry code: the verdict, exit codes, the reload hook."""
    from relsft import cli

    hook_log = tmp_path / "reloads"
    params = {"promote": dict(SETTINGS, registry=str(tmp_path / "registry"),
                              reload_command=f'echo "$RELSFT_PRODUCTION" >> {hook_log}'),
              "evaluate": {"max_new_tokens": 8}, "format": {"max_length": 512}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)  # no dvc.yaml here: the paths are passed
    paths = ["--datasets", str(on.datasets), "--data", str(on.data)]
    registry = tmp_path / "registry"

    assert cli.main(["promote", "--export", str(export(0.6, 0.4)), "--experiment", "first", *paths]) == 0
    assert "promote: promoted as v0001: no production model yet" in capsys.readouterr().out
    assert cli.main(["promote", "--export", str(export(0.7, 0.45)), *paths]) == 0
    assert "promoted as v0002" in capsys.readouterr().out
    assert cli.main(["promote", "--export", str(export(0.2, 0.45)), *paths]) == 1
    err = capsys.readouterr().err
    assert "relsft promote: error: candidate rejected, production unchanged: " in err and "below the floor" in err
    assert production(registry) == "versions/v0002"
    assert cli.main(["rollback"]) == 0
    assert "rollback: production is v0001 again" in capsys.readouterr().out
    assert production(registry) == "versions/v0001"
    assert cli.main(["rollback"]) == 1
    assert "relsft rollback: error: nothing to roll back to" in capsys.readouterr().err
    # The hook ran after each promotion and the rollback, not after the rejection or the failed rollback.
    assert hook_log.read_text().splitlines() == [str(registry.resolve() / promote.PRODUCTION)] * 3
    assert [(e["event"], e.get("experiment")) for e in promote.history(registry)] == [
        ("promote", "first"), ("promote", None), ("reject", None), ("rollback", None)]
