"""The answer format's two forms agree: `relations.ANSWER_REGEX` (what decoding is held to with
evaluate.enforce_format) accepts exactly the answers `parse_output` reads without a bad line; and
relsft's client asks a server for it where the project's recipe evaluates so."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import yaml

from helpers import ROOT
from relsft.client import Endpoint, endpoint_from_args
from relsft.evaluate import decode_splits
from relsft.relations import ANSWER_REGEX, parse_output

WELL_FORMED = ["", "韩立-紫灵:师徒", "韩立-紫灵:师徒\n萧炎-林清:好友", "欧阳锋-欧阳克:父子\n甲-乙:夫妻\n丙-丁:兄弟"]
MALFORMED = ["韩立-紫灵-南宫婉:师徒", "雪-霜:姐妹\n师父", "韩立-紫灵:", "-紫灵:师徒", "韩立紫灵:师徒", "韩立-紫灵:师 徒",
             "韩立-紫灵:师徒\n", "韩立-紫灵:师徒\n\n萧炎-林清:好友", "韩立-紫灵:师:徒", "从以下小说内容中提取人物关系:韩立"]


@pytest.mark.parametrize("answer", WELL_FORMED + MALFORMED)
def test_the_regex_accepts_what_the_parser_reads(answer):
    held = re.fullmatch(ANSWER_REGEX, answer) is not None
    # the parser skips blank lines and surrounding whitespace; the held format never writes them
    reads = not parse_output(answer).failed and answer == answer.strip() and "\n\n" not in answer
    assert held == reads == (answer in WELL_FORMED)


def test_the_client_asks_for_the_format_only_when_told():
    free, held = Endpoint("http://127.0.0.1:1/v1"), Endpoint("http://127.0.0.1:1/v1", enforce_format=True)
    assert "extra_body" not in free.request("x")
    assert held.request("x", stream=True)["extra_body"] == {"structured_outputs": {"regex": ANSWER_REGEX}}


def test_a_project_client_asks_as_its_recipe_evaluates():
    args = SimpleNamespace(url=None, api_key=None, model_name="relsft")
    for recipe, engine_is_vllm in (("qwen2.5-coder-1.5b-gguf", True), ("builtin-cpu", False)):
        evaluate = yaml.safe_load((ROOT / "recipes" / f"{recipe}.yaml").read_text(encoding="utf-8"))["evaluate"]
        assert evaluate["enforce_format"] is engine_is_vllm and (evaluate["engine"] == "vllm") is engine_is_vllm
        assert endpoint_from_args(args, {"evaluate": evaluate}).enforce_format is engine_is_vllm
    assert endpoint_from_args(args, {}).enforce_format is False  # outside a project: the builtin's


def test_transformers_cannot_hold_the_format(tmp_path):
    cfg = {"engine": "transformers", "dtype": "float32", "enforce_format": True, "max_new_tokens": 8}
    with pytest.raises(ValueError, match="evaluate.engine: vllm"):
        decode_splits(tmp_path, {"test": ["x"]}, cfg, desc="x")
