"""Shared fixtures: a tiny but real configuration of the pipeline (same code, small sizes)."""

from __future__ import annotations

import atexit
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Prefect (test_flows.py): a private home and memo file instead of ~/.prefect, and time for its
# temporary server to start on a busy 2-core machine (../shared/PLATFORM.md).
_prefect_home = tempfile.mkdtemp(prefix="relsft-prefect-")
atexit.register(shutil.rmtree, _prefect_home, ignore_errors=True)
os.environ.setdefault("PREFECT_HOME", _prefect_home)
os.environ.setdefault("PREFECT_MEMO_STORE_PATH", os.path.join(os.environ["PREFECT_HOME"], "memo_store.toml"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

TINY = {
    # head_dim 32, the smallest vLLM's CPU attention supports (the tests serve this model); 4 heads,
    # the fewest the copy circuit needs.
    "base": {"builtin": {"hidden_size": 128, "intermediate_size": 128, "num_layers": 2, "num_heads": 4,
                         "num_kv_heads": 4, "max_position_embeddings": 512}},
    "generate": {"sizes": {"train": 400, "val": 24, "test": 24, "test_ood": 24}},
    "train": {"sft": {"max_steps": 40, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8,
                      "logging_steps": 5, "eval_steps": 20, "save_steps": 20, "learning_rate": 0.005,
                      "warmup_steps": 0.0},
              "lora": {"r": 8, "lora_alpha": 16}},
    "evaluate": {"max_new_tokens": 32, "batch_size": 24, "max_examples": 24},  # the first 24 of gold too
    "merge": {"parity_examples": 24, "batch_size": 24},
}


def deep_update(d: dict, u: dict) -> dict:
    for k, v in u.items():
        d[k] = deep_update(d.get(k, {}), v) if isinstance(v, dict) else v
    return d


@pytest.fixture(scope="session")
def params() -> dict:
    """params.yaml over its recipe, as the stages read it."""
    from relsft.params import load_params

    return load_params(ROOT / "params.yaml")


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


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def make_project(dst: Path, params: dict) -> Path:
    """A fresh git + DVC project with this repo's pipeline, recipes, package sources and `params`
    (resolved: every key in params.yaml, so the recipe it names sets nothing)."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dvc.yaml", dst / "dvc.yaml")
    shutil.copytree(ROOT / "recipes", dst / "recipes")
    shutil.copytree(ROOT / "src", dst / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / ".gitignore", dst / ".gitignore")
    params = {"recipe": "builtin-cpu", **params}  # dvc.yaml names recipes/${recipe}.yaml; params.yaml overrides it all
    (dst / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")
    run(["git", "init", "-q", "-b", "main"], dst)
    run(["git", "config", "user.email", "ci@relsft.invalid"], dst)
    run(["git", "config", "user.name", "relsft ci"], dst)
    run(["dvc", "init", "-q"], dst)
    run(["dvc", "config", "core.analytics", "false"], dst)
    run(["relsft", "init-data"], dst)
    run(["dvc", "add", "-q", "data"], dst)
    run(["git", "add", "-A"], dst)
    run(["git", "commit", "-q", "-m", "project"], dst)
    return dst


@pytest.fixture(scope="session")
def pipeline_project(tmp_path_factory, tiny_params) -> Path:
    """One real git + DVC project on the tiny config, `dvc repro`ed and committed.

    Shared by every test that needs a trained, merged and exported model (pipeline, serving,
    flows); tests that change it must put it back as they found it.
    """
    proj = make_project(tmp_path_factory.mktemp("pipeline") / "proj", tiny_params)
    run(["dvc", "repro"], proj)
    run(["git", "add", "-A"], proj)
    run(["git", "commit", "-q", "-m", "pipeline run"], proj)
    return proj


def teach_one_relation(export: Path, data_dir: Path, tiny_params: dict, work: Path, steps: int = 300,
                       by_heart: Sequence[dict] = (), repeat: int = 30) -> Path:
    """An exported model trained a little more on one-relation examples, in the export layout.

    A tiny pipeline's model never ends an answer and nothing it says parses, which would leave
    stop handling and parsing untested. `steps` (300: ~30 s) on one-relation examples, made by the
    generate and format stages, teach it to answer one well-formed line and stop (not the task:
    the names are often wrong); the files stay the export's own (tokenizer, chat template,
    generation_config). The examples it was taught on are kept beside it (`work/datasets`).
    `by_heart` examples ({"text", "output"}) join the training split `repeat` times each: with
    ~1000 steps the model answers them exactly (story_examples: a graph with real names).
    """
    import torch

    from relsft.formatting import format_dataset
    from relsft.synthetic.passages import generate
    from relsft.train import build_trainer

    dst = work / "relsft-model"
    shutil.copytree(export, dst)
    one_relation = dict(tiny_params["generate"], relation_weights=[0, 1], distractor_weights=[1], lead_rate=0.0,
                        trail_rate=0.0,
                        sizes={"train": 400, "val": 16, "test": 48, "test_ood": 8})
    generate(data_dir, work / "datasets", one_relation)
    # An unanswered kinship word (侄女) gives an empty answer; its one token would outweigh any single
    # first character of a name under greedy decoding, and the model would answer nothing at all.
    train = work / "datasets" / "train.jsonl"
    answered = [line for line in train.read_text(encoding="utf-8").splitlines() if json.loads(line)["output"]]
    answered += [json.dumps({"id": f"by-heart-{i}-{j}", **example}, ensure_ascii=False)
                 for i in range(repeat) for j, example in enumerate(by_heart)]
    train.write_text("".join(line + "\n" for line in answered), encoding="utf-8")
    format_dataset(export, work / "datasets", work / "formatted", tiny_params["format"])
    cfg = dict(tiny_params["train"], max_length=tiny_params["format"]["max_length"], num_threads=1)
    cfg["sft"] = dict(cfg["sft"], max_steps=steps, learning_rate=0.01, logging_steps=100)
    threads = torch.get_num_threads()
    try:
        trainer = build_trainer(export, work / "formatted", cfg, work / "run", eval_strategy="no",
                                save_strategy="no", disable_tqdm=True)
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    trainer.model.merge_and_unload().save_pretrained(dst)
    shutil.copy(export / "generation_config.json", dst / "generation_config.json")
    return dst


# A short chapter on six characters, one pair with contradicting labels (萧炎/林清: 好友, 敌对),
# cut as `relsft extract-book --max-chars STORY_MAX_CHARS --overlap 1` cuts it. The taught model
# learns its passages by heart (taught_model), so a graph made through the server has real
# characters, edges with evidence and a conflict to show (tests/test_ui.py).
STORY = (("韩立与紫灵是师徒关系。", "韩立-紫灵:师徒"), ("萧炎是林清的好友。", "萧炎-林清:好友"),
         ("药老是萧炎的师父。", "药老-萧炎:师父"), ("那一年,韩立与南宫婉结为夫妻。", "韩立-南宫婉:夫妻"),
         ("萧炎与林清彼此敌对,水火不容。", "萧炎-林清:敌对"), ("紫灵和南宫婉是姐妹。", "紫灵-南宫婉:姐妹"),
         ("众所周知,韩立和萧炎是好友关系。", "韩立-萧炎:好友"), ("林清的师姐是紫灵。", "紫灵-林清:师姐"))
STORY_MAX_CHARS = 40
TAUGHT_KEY = "test-key-book"


def story_examples() -> list[dict]:
    """STORY's passages, each answered with the relations of its sentences."""
    from relsft.book.split import Chapter, passages, split_sentences

    labels = dict(STORY)
    _, book = passages([Chapter("story", "".join(s for s, _ in STORY))], STORY_MAX_CHARS, 1)
    return [{"text": p.text, "output": "\n".join(labels[s.text] for s in split_sentences(p.text))} for p in book]


def inprocess_answers(model_dir: Path, texts: list[str], tiny_params: dict) -> list[str]:
    """The served directory's greedy answers, decoded in-process (what the server must answer)."""
    from relsft.decoding import greedy_generate, load_for_inference

    model, tok = load_for_inference(model_dir)
    cfg = tiny_params["evaluate"]
    return [r["answer"] for r in greedy_generate(model, tok, texts, cfg["max_new_tokens"], cfg["batch_size"])]


def inprocess_graph(model_dir: Path, chapters, max_chars: int, overlap: int, tiny_params: dict, data_dir: Path,
                    aliases: Path | None = None):
    """The in-process answers to every passage, merged by extract-book's code."""
    from relsft.book.aliases import read_alias_file
    from relsft.book.extract import grounded_graph
    from relsft.book.split import passages
    from relsft.vocabulary import load_relations_or_packaged

    _, book = passages(chapters, max_chars, overlap)
    answers = inprocess_answers(model_dir, [p.text for p in book], tiny_params)
    return grounded_graph(chapters, book, answers, load_relations_or_packaged(data_dir),
                          read_alias_file(aliases) if aliases else None)


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
