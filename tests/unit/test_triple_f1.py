"""triple_f1, the metric the promotion gate compares: its semantics on hand-made answers."""

from __future__ import annotations

import pytest

from relsft.evaluate import score


def f1(predictions, references, symmetric=("朋友",)):
    return score(predictions, references, list(symmetric))


def test_a_perfect_answer_scores_one_whatever_its_line_order():
    out = f1(["韩立-紫灵:朋友\n墨大夫-韩立:师父"], ["墨大夫-韩立:师父\n韩立-紫灵:朋友"])
    assert out["strict_f1"] == out["unordered_f1"] == out["exact_match"] == 1.0
    assert out["parse_failure_rate"] == 0.0


def test_a_symmetric_pair_reversed_counts_only_unordered():
    out = f1(["紫灵-韩立:朋友"], ["韩立-紫灵:朋友"])
    assert out["strict_f1"] == 0.0 and out["unordered_f1"] == 1.0 and out["exact_match"] == 1.0


def test_an_asymmetric_pair_reversed_is_wrong_both_ways():
    out = f1(["韩立-墨大夫:师父"], ["墨大夫-韩立:师父"])
    assert out["strict_f1"] == out["unordered_f1"] == out["exact_match"] == 0.0


def test_a_repeated_triple_counts_once_against_one_gold():
    out = f1(["墨大夫-韩立:师父\n墨大夫-韩立:师父"], ["墨大夫-韩立:师父"])
    assert out["strict_precision"] == 0.5 and out["strict_recall"] == 1.0
    assert out["strict_f1"] == pytest.approx(2 / 3) and out["exact_match"] == 0.0


def test_an_unparsable_line_is_a_parse_failure_and_its_good_lines_still_count():
    out = f1(["墨大夫-韩立:师父\n墨大夫是韩立的师父", "", "韩立紫灵朋友"],
             ["墨大夫-韩立:师父", "韩立-紫灵:朋友", "韩立-紫灵:朋友"])
    # One bad line fails its answer, good lines beside it or not; an empty answer is no failure, just wrong.
    assert out["parse_failure_rate"] == pytest.approx(2 / 3)
    assert out["strict_precision"] == 1.0 and out["strict_recall"] == pytest.approx(1 / 3)
    assert out["exact_match"] == pytest.approx(1 / 3)


def test_micro_average_weighs_examples_by_their_triples():
    out = f1(["a-b:师父\nc-d:师父\ne-f:师父", "g-h:徒弟"], ["a-b:师父\nc-d:师父\ne-f:师父", "h-g:徒弟"])
    assert out["strict_precision"] == out["strict_recall"] == 0.75
    assert out["per_relation"]["师父"] == {"f1": 1.0, "support": 3}
    assert out["per_relation"]["徒弟"] == {"f1": 0.0, "support": 1}


def test_no_predictions_and_no_gold_score_zero_not_an_error():
    out = f1(["", ""], ["", ""])
    assert out["strict_f1"] == 0.0 and out["exact_match"] == 1.0


def test_an_empty_answer_to_a_passage_without_relations_is_a_perfect_rouge():
    assert f1(["", "墨大夫-韩立:师父"], ["", "墨大夫-韩立:师父"])["rougeL"] == 1.0
    assert f1([""], ["墨大夫-韩立:师父"])["rougeL"] == f1(["墨大夫-韩立:师父"], [""])["rougeL"] == 0.0
