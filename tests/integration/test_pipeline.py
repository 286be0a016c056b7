"""The whole pipeline as a user runs it: a real git + DVC project, `dvc repro` on a tiny config.

One project is built per session (module fixture); the tests then read what each stage wrote,
run an experiment, render plots, and break the data to check nothing good is lost.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from helpers import TINY, run


@pytest.fixture
def project(pipeline_project) -> Path:
    return pipeline_project


def tree_digest(d: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(d.rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(d)).encode() + f.read_bytes())
    return h.hexdigest()


def test_second_repro_is_a_no_op(project):
    proc = run(["dvc", "repro"], project)
    assert "didn't change, skipping" in proc.stdout and "Running stage" not in proc.stdout
    assert "up to date" in run(["dvc", "status"], project).stdout


def dvclive_curve(project: Path, name: str) -> list[tuple[int, float]]:
    with (project / "reports/training/plots/metrics" / f"{name}.tsv").open() as f:
        return [(int(r["step"]), float(r[Path(name).name])) for r in csv.DictReader(f, delimiter="\t")]


def test_training_loss_falls(project):
    losses = dvclive_curve(project, "train/loss")
    train = TINY["train"]["sft"]
    # One row per logging step, at the optimizer step (not DVCLive's count of log calls).
    assert [s for s, _ in losses] == list(range(train["logging_steps"], train["max_steps"] + 1, train["logging_steps"]))
    assert losses[-1][1] < losses[0][1] * 0.8, losses
    assert [s for s, _ in dvclive_curve(project, "eval/loss")] == list(range(train["eval_steps"], train["max_steps"] + 1,
                                                                           train["eval_steps"]))
    summary = json.loads((project / "reports/training/metrics.json").read_text())
    assert summary["steps"] == summary["step"] == train["max_steps"]
    assert summary["train"]["loss"] == losses[-1][1]


def test_metrics_have_both_models_and_splits(project):
    metrics = json.loads((project / "metrics/eval.json").read_text())
    assert set(metrics) == {"finetuned", "base"}
    for model in metrics.values():
        assert set(model) == {"test", "test_ood", "gold"}
        # gold: the first evaluate.max_examples hand-written passages, F1 per phenomenon beside the total
        assert model["gold"]["examples"] == TINY["evaluate"]["max_examples"]
        tags = model["gold"]["phenomena"]
        assert "no_relation" in tags and 0 <= tags["no_relation"]["empty_answer_rate"] <= 1
        assert all(0 <= v["f1"] <= 1 and v["passages"] >= 1 for t, v in tags.items() if t != "no_relation")
        for m in model.values():
            for key in ("strict_f1", "unordered_f1", "exact_match", "parse_failure_rate", "rougeL", "stopped_rate"):
                assert 0.0 <= m[key] <= 1.0
    # The tiny config's few steps teach little (its loss curve is checked above), but base and
    # fine-tuned are two different models, each scored on every example of both splits.
    predictions = project / "reports/eval/predictions"
    for split in ("test", "test_ood"):
        answers = {name: [json.loads(line)["answer"] for line in
                          (predictions / f"{name}_{split}.jsonl").read_text(encoding="utf-8").splitlines()]
                   for name in ("base", "finetuned")}
        assert len(answers["base"]) == len(answers["finetuned"]) == TINY["generate"]["sizes"][split]
        assert answers["base"] != answers["finetuned"]
    shown = run(["dvc", "metrics", "show", "--json"], project).stdout
    assert "strict_f1" in shown and "test_ood" in shown


def test_metrics_agree_with_the_parser_clients_use(project):
    """triple_f1 has its own copy of the line format (it is loaded by path); counted here with
    relsft.relations, the parser of the client and of validation, the scores must be the same."""
    from collections import Counter

    from relsft.files import read_jsonl
    from relsft.relations import parse_output

    metrics = json.loads((project / "metrics/eval.json").read_text())
    for name in ("finetuned", "base"):
        for split in ("test", "test_ood", "gold"):
            rows = list(read_jsonl(project / f"reports/eval/predictions/{name}_{split}.jsonl"))
            tp = n_pred = n_gold = failed = 0
            for r in rows:
                pred, gold = parse_output(r["answer"]), parse_output(r["gold"])
                pc, gc = Counter(pred.relations), Counter(gold.relations)
                tp, n_pred, n_gold = tp + sum((pc & gc).values()), n_pred + len(pred.relations), n_gold + len(gold.relations)
                failed += pred.failed
            p, rec = (tp / n_pred if n_pred else 0.0), (tp / n_gold if n_gold else 0.0)
            m = metrics[name][split]
            assert m["strict_precision"] == round(p, 4) and m["strict_recall"] == round(rec, 4), (name, split)
            assert m["parse_failure_rate"] == round(failed / len(rows), 4), (name, split)


def test_editing_a_user_command_reruns_nothing_and_editing_the_instruction_reruns_what_uses_it(project, tmp_path):
    """After `dvc repro`, a flag of `relsft ui` (a user command, cli.py) is edited: `dvc status` stays
    clean, as no stage runs cli.py. The instruction (relations.py) is edited: format, train, evaluate and
    merge are changed. In a copy of the project (git and DVC included), so the shared one stays as it is."""
    proj = tmp_path / "proj"
    shutil.copytree(project, proj, symlinks=True)
    assert "up to date" in run(["dvc", "status"], proj).stdout  # the copy is the repro'd project

    cli = proj / "src/relsft/cli.py"
    flag = """p.add_argument("--port", type=int, default=8765, help="the page's port (default: 8765)")"""
    source = cli.read_text(encoding="utf-8")
    assert source.count(flag) == 1, "relsft ui's --port flag moved: edit another of its flags here"
    cli.write_text(source.replace(flag, flag.replace("the page's port", "the port the page is served on")),
                   encoding="utf-8")
    assert run(["git", "diff", "--name-only"], proj).stdout.split() == ["src/relsft/cli.py"]
    status = run(["dvc", "status"], proj).stdout
    assert "Data and pipelines are up to date" in status, status
    assert json.loads(run(["dvc", "status", "--json"], proj).stdout) == {}

    relations = proj / "src/relsft/relations.py"
    original = relations.read_text(encoding="utf-8")
    assert original.count('INSTRUCTION = "') == 1
    relations.write_text(original.replace('INSTRUCTION = "', 'INSTRUCTION = "请', 1), encoding="utf-8")
    changed = json.loads(run(["dvc", "status", "--json"], proj).stdout)
    assert {"format", "train", "evaluate", "merge"} <= set(changed), changed
    for stage in ("format", "train", "evaluate", "merge"):
        assert {"changed deps": {"src/relsft/relations.py": "modified"}} in changed[stage], (stage, changed[stage])
    relations.write_text(original, encoding="utf-8")  # the instruction back: clean again, cli.py still edited
    assert "up to date" in run(["dvc", "status"], proj).stdout


def test_merge_parity_was_checked(project):
    report = json.loads((project / "models/merged/merge_parity.json").read_text())
    assert report == {"prompts": 24, "mismatches": 0}


def test_export_is_self_contained_and_servable(project):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = project / "export/relsft-model"
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))
    gen = json.loads((out / "generation_config.json").read_text())
    tok = AutoTokenizer.from_pretrained(out)
    assert gen["eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")
    assert not {"do_sample", "temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens"} & set(gen)
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "strict F1" in card and "sha256" in card
    AutoModelForCausalLM.from_pretrained(out)  # loads with no adapter, no remote code


def test_experiment_runs_with_a_changed_train_param(project):
    before = json.loads((project / "metrics/eval.json").read_text())
    proc = run(["dvc", "exp", "run", "-S", "train.sft.learning_rate=0.001"], project)
    assert "Running stage 'train'" in proc.stdout
    assert "Running stage 'generate'" not in proc.stdout  # only what depends on train runs again
    exps = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    text = json.dumps(exps)
    assert '"learning_rate": 0.001' in text and "strict_f1" in text
    assert "reports/training/metrics.json" in text and '"final_eval_loss"' in text  # DVCLive's summary
    columns = run(["dvc", "exp", "show", "--md", "--no-pager"], project).stdout
    assert "eval.loss" in columns and "train.loss" in columns, columns[:2000]
    summary = json.loads((project / "reports/training/metrics.json").read_text())
    assert summary["steps"] == TINY["train"]["sft"]["max_steps"]
    # The committed baseline stays in git, for `dvc metrics diff` against the experiment.
    run(["dvc", "metrics", "diff"], project)
    assert json.loads(run(["git", "show", "HEAD:metrics/eval.json"], project).stdout) == before
    run(["git", "checkout", "--", "."], project)
    run(["dvc", "checkout", "-q", "--force"], project)


def test_plots_render_loss_curve_and_per_relation_f1(project, tmp_path):
    run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], project)
    html = (tmp_path / "plots" / "index.html").read_text(encoding="utf-8")
    assert "train/loss.tsv" in html and "eval/loss.tsv" in html  # DVCLive's curves
    assert "per_relation_f1_test.json" in html and "per_relation_f1_test_ood.json" in html and "relation" in html
    assert "Training and validation loss" in html and "Per-relation F1 of the fine-tuned model" in html


def test_bad_rows_stop_at_validate_and_keep_the_exported_model(project):
    export = project / "export/relsft-model"
    before = tree_digest(export)
    data = project / "data"
    saved = {p.relative_to(data): p.read_bytes() for p in data.rglob("*") if p.is_file()}
    # `dvc repro` records the changed data source in data.dvc before validate runs; restore both.
    tracked = (project / "data.dvc").read_bytes()
    try:
        with (data / "annotated" / "examples.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps({"text": "韩立与紫灵是朋友。", "output": "韩立-紫灵:朋友"}, ensure_ascii=False) + "\n")
            f.write(json.dumps({"text": "萧炎与林动是好友。", "output": "萧炎林动好友"}, ensure_ascii=False) + "\n")
            f.write(json.dumps({"text": "他们二人是好友。", "output": "萧炎-林动:好友"}, ensure_ascii=False) + "\n")
        proc = run(["dvc", "repro"], project, check=False)
        assert proc.returncode != 0
        log = proc.stdout + proc.stderr
        assert "stage validate: error" in log
        for part in ("relations are in relations.tsv", "every output line is `A-B:rel`",
                     "every labelled name occurs in the text", "朋友", "萧炎林动好友"):
            assert part in log, part
        assert "Running stage 'format'" not in log and "Running stage 'train'" not in log
        assert tree_digest(export) == before
    finally:
        for name, content in saved.items():
            (data / name).write_bytes(content)
        (project / "data.dvc").write_bytes(tracked)
    assert "up to date" in run(["dvc", "status", "data.dvc"], project).stdout
