"""The recipes' train section passes through: `train.sft` is trl.SFTConfig's keyword arguments, `train.lora`
peft.LoraConfig's, `train.precision` picks the mixed precision; a key either does not know fails by name."""

from __future__ import annotations

import pytest
import yaml

from helpers import ROOT
from relsft.params import load_params

RECIPES = sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))


def train_cfg(recipe: str, **overrides) -> dict:
    cfg = dict(load_params(ROOT / "recipes" / f"{recipe}.yaml")["train"], max_length=512)
    return {**cfg, "precision": "fp32", **overrides}  # fp32: the same on every machine


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_builds_its_sft_and_lora_config(recipe, tmp_path):
    from relsft.train import lora_config, sft_config

    cfg = train_cfg(recipe)
    sft = sft_config(cfg, tmp_path / "run")
    for key, value in cfg["sft"].items():
        assert getattr(sft, key) == value, key  # passed through as written
    assert sft.output_dir == str(tmp_path / "run") and sft.max_length == 512 and not sft.bf16 and not sft.fp16
    lora = lora_config(cfg["lora"])
    assert lora.r == cfg["lora"]["r"] and lora.task_type == "CAUSAL_LM"


# What the train stage reads of the train section (relsft/train.py); any other key would be ignored.
TRAIN_KEYS = {"precision", "base_dtype", "sft", "lora", "num_threads", "resume", "checkpoint_dir"}


@pytest.mark.parametrize("path", ["params.yaml", *(f"recipes/{r}.yaml" for r in RECIPES)])
def test_no_settings_file_sets_a_train_key_outside_sft_and_lora(path):
    """The old schema's train.max_steps, train.learning_rate, train.lora_r ... would be silently ignored."""
    train = yaml.safe_load((ROOT / path).read_text(encoding="utf-8")).get("train", {})
    assert set(train) <= TRAIN_KEYS, sorted(set(train) - TRAIN_KEYS)


@pytest.mark.parametrize("section, key, message", [pytest.param(section, key, message, id=f"{section}.{key}") for
                                                   section, key, message in [
    ("sft", "max_step", r"train\.sft\.max_step: not a field of trl\.SFTConfig"),
    ("sft", "output_dir", r"train\.sft\.output_dir: set by the stage"),
    ("sft", "bf16", r"train\.sft\.bf16: set by the stage \(train\.precision"),
    ("sft", "max_length", r"train\.sft\.max_length: set by the stage .*format\.max_length"),
    ("lora", "rank", r"train\.lora\.rank: not a field of peft\.LoraConfig"),
]])
def test_a_key_the_config_does_not_take_fails_by_name(section, key, message, tmp_path):
    from relsft.train import lora_config, sft_config

    cfg = train_cfg("builtin-cpu")
    cfg[section] = dict(cfg[section], **{key: 1})
    with pytest.raises(ValueError, match=message):
        sft_config(cfg, tmp_path) if section == "sft" else lora_config(cfg["lora"])


def test_precision_names_are_checked():
    from relsft.train import mixed_precision

    args, said = mixed_precision("fp32")
    assert args["bf16"] is args["fp16"] is False and said.startswith("fp32 on ")
    with pytest.raises(ValueError, match="train.precision must be auto, bf16, fp16 or fp32, not 'float16'"):
        mixed_precision("float16")


def test_the_base_is_held_in_bf16_only_when_training_runs_in_bf16():
    import torch

    from relsft.train import base_dtype

    assert base_dtype({"precision": "fp32"}) == torch.float32  # the default
    assert base_dtype({"precision": "fp32", "base_dtype": "auto"}) == torch.float32
    assert base_dtype({"precision": "bf16", "base_dtype": "auto"}) == torch.bfloat16
    assert base_dtype({"precision": "bf16", "base_dtype": "float32"}) == torch.float32
    with pytest.raises(ValueError, match="bfloat16 needs bf16 training .* set it to auto or float32"):
        base_dtype({"precision": "fp32", "base_dtype": "bfloat16"})
    with pytest.raises(ValueError, match="train.base_dtype must be auto, float32 or bfloat16, not 'fp16'"):
        base_dtype({"precision": "bf16", "base_dtype": "fp16"})
