"""The taught test model: the tiny export trained a little more, so it answers well-formed lines and stops,
and STORY's passages by heart (integration/conftest.py's taught_model); and what it answers in-process."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path


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
    # The project's hand-written passages (data/annotated/) state up to three relations: not one-relation.
    rows = [json.loads(line) for line in train.read_text(encoding="utf-8").splitlines()]
    answered = [r for r in rows if r["output"] and not r["id"].startswith("annotated-")]
    answered += [{"id": f"by-heart-{i}-{j}", **example} for i in range(repeat) for j, example in enumerate(by_heart)]
    train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in answered), encoding="utf-8")
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


def without_confidence(edges: list[dict]) -> list[dict]:
    """Edges as in-process answers give them: served answers carry their lines' confidences, these do not."""
    return [{**{k: v for k, v in e.items() if k != "confidence"},
             "evidence": [{k: v for k, v in ev.items() if k != "confidence"} for ev in e["evidence"]]} for e in edges]
