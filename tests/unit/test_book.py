"""`relsft extract-book`: splitting, windowing and merging, answering through a fake server (no model).

The real runs, against one vLLM server on the tiny taught model, are tests/integration/test_book_cli.py.
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import subprocess
import random
import sys
from pathlib import Path

import httpx
import pytest

from helpers import ROOT
from relsft.book.aliases import FILE, GIVEN_NAME, SEVERAL, STRAY, AliasFile, read_alias_file
from relsft.book.extract import AnswerCache, Endpoint, answer_all, grounded_graph
from relsft.book.graph import build_graph, grounded, write_outputs
from relsft.book.split import Chapter, fit_sentences, passages, read_book, split_chapters, split_sentences
from relsft.relations import INSTRUCTION
from relsft.serve import free_port
from relsft.vocabulary import RawDataError, load_relations, load_relations_or_packaged

VOCABULARY = load_relations_or_packaged(None)


def texts(sentences):
    return [s.text for s in sentences]


# --- sentences and passages ------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("韩立与紫灵是师徒关系。萧炎是林清的好友。", ["韩立与紫灵是师徒关系。", "萧炎是林清的好友。"]),
    # a quotation's terminators stay inside; the sentence ends after the closing mark
    ("他说：“我走了。你保重。”她点头。", ["他说：“我走了。你保重。”", "她点头。"]),
    ("「师父！」『嗯。』他应道", ["「师父！」", "『嗯。』", "他应道"]),
    ("人称“韩老魔”的韩立来了。", ["人称“韩老魔”的韩立来了。"]),  # no terminator before the closing mark
    ("他说：“‘师兄’是谁？”无人应答。", ["他说：“‘师兄’是谁？”", "无人应答。"]),  # nested marks
    # runs of terminators count once: ellipses, !? and ！？ mixes
    ("他沉默了……良久才道：“走吧！？”", ["他沉默了……", "良久才道：“走吧！？”"]),
    ("真的?!假的！？不……", ["真的?!", "假的！？", "不……"]),
    ("\"Go!\" she said. 好。", ['"Go!"', "she said. 好。"]),  # ASCII quotes; '.' does not end a sentence
    # no final punctuation; line breaks end sentences and close an unbalanced quote
    ("第一句。\n“没有收尾的引号。还在里面。\n  下一段没有标点  ", ["第一句。", "“没有收尾的引号。还在里面。", "下一段没有标点"]),
    ("", []),
    ("  \u3000\n ", []),
])
def test_split_sentences(text, expected):
    sentences = split_sentences(text)
    assert texts(sentences) == expected
    assert all(text[s.start:s.end] == s.text for s in sentences)  # offsets point into the text


def test_long_sentence_is_cut_at_the_best_break_and_nothing_is_dropped():
    text = "韩立与紫灵是师徒关系，萧炎是林清的好友，" + "长" * 25 + "。"
    pieces = fit_sentences(split_sentences(text), text, 12)
    assert all(len(p.text) <= 12 for p in pieces)
    assert texts(pieces)[:2] == ["韩立与紫灵是师徒关系，", "萧炎是林清的好友，"]  # at commas, then hard cuts
    assert "".join(texts(pieces)) == text
    assert all(text[p.start:p.end] == p.text for p in pieces)


def test_passages_fit_overlap_and_cover_every_sentence():
    chapter = "".join(f"第{i}人与第{i + 1}人是好友。" for i in range(30)) + "“一句很长很长很长很长很长很长很长很长很长的话！”"
    sentences, book = passages([Chapter("c1", chapter)], max_chars=40, overlap=1)
    sentences = sentences[0]
    assert all(len(p.text) <= 40 for p in book)
    assert [p.index for p in book] == list(range(len(book)))
    assert book[0].first == 0 and book[-1].last == len(sentences)
    for prev, nxt in zip(book, book[1:]):
        assert nxt.first == prev.last - 1  # one sentence repeated
        assert prev.first < nxt.first  # always moving on
    for p in book:
        assert p.text == "".join(s.text for s in sentences[p.first:p.last])
        assert chapter[p.start:p.end] == p.text  # no spaces here, so the span is the text
    _, no_overlap = passages([Chapter("c1", chapter)], max_chars=40, overlap=0)
    assert all(b.first == a.last for a, b in zip(no_overlap, no_overlap[1:]))
    assert "".join(p.text for p in no_overlap) == chapter


def test_overlap_gives_way_to_a_sentence_that_needs_the_room():
    chapter = "短句一。" + "长" * 17 + "。"  # 4 + 18 chars: with 20 max, no room to repeat the first
    _, book = passages([Chapter("c", chapter)], max_chars=20, overlap=1)
    assert [p.text for p in book] == ["短句一。", "长" * 17 + "。"]
    with pytest.raises(ValueError):
        passages([Chapter("c", chapter)], max_chars=0)


def test_read_book_directory_file_headings_and_stdin(tmp_path, monkeypatch):
    book = tmp_path / "book"
    book.mkdir()
    for n in (10, 2, 1):
        (book / f"chapter{n}.txt").write_text(f"第{n}章的正文。", encoding="utf-8")
    (book / ".hidden").write_text("x")
    assert [c.name for c in read_book(book)] == ["chapter1.txt", "chapter2.txt", "chapter10.txt"]
    text = "楔子。\n第一回　甄士隐梦幻识通灵\n正文一。\n第二回合，他又输了。\n第二回 贾夫人仙逝扬州城\n正文二。\n"
    assert split_chapters("hlm.txt", text) == [
        Chapter("hlm.txt", "楔子。\n"), Chapter("第一回　甄士隐梦幻识通灵", "\n正文一。\n第二回合，他又输了。\n"),
        Chapter("第二回 贾夫人仙逝扬州城", "\n正文二。\n")]
    (tmp_path / "one.txt").write_text("只有一章。", encoding="utf-8")
    assert read_book(tmp_path / "one.txt") == [Chapter("one.txt", "只有一章。")]
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("来自标准输入。"))
    assert read_book("-") == [Chapter("stdin", "来自标准输入。")]
    with pytest.raises(FileNotFoundError):
        read_book(tmp_path / "missing.txt")


# --- merging ---------------------------------------------------------------------------------

def merged(answers: list[str], chapters=None, aliases=None):
    chapters = chapters or [Chapter("c1", "韩立。紫灵。萧炎。林清。韩立！"), Chapter("c2", "韩立与萧炎。")]
    _, book = passages(chapters, max_chars=3, overlap=0)
    assert len(book) >= len(answers)
    return build_graph(chapters, book[:len(answers)], answers, VOCABULARY, aliases), book


def edge(graph, source, target, rel):
    found = [e for e in graph["edges"] if (e["source"], e["target"], e["relation"]) == (source, target, rel)]
    assert len(found) == 1, (source, target, rel, graph["edges"])
    return found[0]


def test_symmetric_pairs_merge_and_duplicates_count_once():
    graph, book = merged(["韩立-紫灵:好友\n韩立-紫灵:好友", "紫灵-韩立:好友", "韩立-紫灵:师父"])
    friends = edge(graph, "紫灵", "韩立", "好友")  # one undirected edge, names in sorted order
    assert friends["symmetric"] is True
    assert [ev["passage"] for ev in friends["evidence"]] == [0, 1]  # a line repeated in one answer: once
    ev = friends["evidence"][0]
    assert ev == {"chapter": "c1", "chapter_index": 0, "passage": 0, "sentences": [book[0].first, book[0].last],
                  "chars": [book[0].start, book[0].end], "text": book[0].text, "lines": ["韩立-紫灵:好友"],
                  "confidence": None}  # answers without logprobs: confidence unknown
    assert friends["evidence"][1]["lines"] == ["紫灵-韩立:好友"]  # as the model wrote it
    assert edge(graph, "韩立", "紫灵", "师徒")["symmetric"] is False  # direction kept


def test_contradictions_are_kept_and_flagged():
    graph, _ = merged(["韩立-萧炎:好友", "萧炎-韩立:敌对", "紫灵-林清:父子", "林清-紫灵:父子", "紫灵-韩立:好友"])
    assert edge(graph, "萧炎", "韩立", "好友")["conflict"] and edge(graph, "萧炎", "韩立", "敌对")["conflict"]
    # an asymmetric label in both directions is a contradiction too
    assert edge(graph, "紫灵", "林清", "父子")["conflict"] and edge(graph, "林清", "紫灵", "父子")["conflict"]
    assert not edge(graph, "紫灵", "韩立", "好友")["conflict"]
    assert graph["conflicts"] == [
        {"pair": ["林清", "紫灵"], "reason": "one bond both ways",
         "edges": [{"source": "林清", "target": "紫灵", "relation": "父子"},
                   {"source": "紫灵", "target": "林清", "relation": "父子"}]},
        {"pair": ["萧炎", "韩立"], "reason": "several bonds",
         "edges": [{"source": "萧炎", "target": "韩立", "relation": "好友"},
                   {"source": "萧炎", "target": "韩立", "relation": "敌对"}]},
    ]


def test_an_inverse_or_a_synonym_is_the_same_edge_and_no_conflict():
    graph, _ = merged(["韩立-紫灵:师父", "紫灵-韩立:徒弟\n韩立-紫灵:师尊", "萧炎-林清:师兄", "林清-萧炎:师妹"])
    assert graph["conflicts"] == [] and len(graph["edges"]) == 2
    bond = edge(graph, "韩立", "紫灵", "师徒")  # master -> disciple, whichever side the model spoke from
    assert bond["labels"] == ["师尊", "师父", "徒弟"] and not bond["conflict"]
    assert [ev["lines"] for ev in bond["evidence"]] == [["韩立-紫灵:师父"], ["紫灵-韩立:徒弟", "韩立-紫灵:师尊"]]
    assert edge(graph, "萧炎", "林清", "师兄/师姐")["labels"] == ["师兄", "师妹"]
    # the inverse the wrong way round says the opposite: a contradiction
    graph, _ = merged(["韩立-紫灵:师父", "韩立-紫灵:徒弟"])
    assert graph["conflicts"] == [{"pair": ["紫灵", "韩立"], "reason": "one bond both ways", "edges": [
        {"source": "紫灵", "target": "韩立", "relation": "师徒"}, {"source": "韩立", "target": "紫灵", "relation": "师徒"}]}]


def test_nodes_unparsed_lines_and_determinism():
    answers = ["韩立-紫灵:好友\n不是关系", "", "萧炎-韩立:敌对", "韩立-紫灵:好友"]
    graph, _ = merged(answers)
    assert graph["nodes"] == [{"id": "紫灵", "names": ["紫灵"], "mentions": 1, "passages": 2},
                              {"id": "萧炎", "names": ["萧炎"], "mentions": 2, "passages": 1},
                              {"id": "韩立", "names": ["韩立"], "mentions": 3, "passages": 3}]
    assert graph["merges"] == [] and graph["kept_apart"] == []
    assert graph["unparsed"] == [{"passage": 0, "line": "不是关系"}]
    # The same answers in any order of arrival give the same graph (answers are matched by passage).
    chapters = [Chapter("c1", "韩立。紫灵。萧炎。林清。韩立！"), Chapter("c2", "韩立与萧炎。")]
    _, book = passages(chapters, max_chars=3, overlap=0)
    order = list(range(len(answers)))
    random.Random(0).shuffle(order)
    shuffled = build_graph(chapters, [book[i] for i in order], [answers[i] for i in order], VOCABULARY)
    assert shuffled == graph


def test_writers(tmp_path):
    import networkx as nx

    graph, _ = merged(["韩立-紫灵:好友", "萧炎-韩立:敌对\n韩立-萧炎:师父", "韩立-紫灵:好友"])
    paths = write_outputs(graph, tmp_path / "out")
    assert [p.name for p in paths] == ["graph.json", "graph.graphml", "relations.csv"]
    assert json.loads(paths[0].read_text(encoding="utf-8")) == graph
    g = nx.read_graphml(paths[1])
    assert set(g.nodes) == {"紫灵", "萧炎", "韩立"} and g.nodes["韩立"]["mentions"] == 3
    assert sorted((u, v, d["relation"], d["labels"], d["weight"], d["conflict"]) for u, v, d in g.edges(data=True)) \
        == [("紫灵", "韩立", "好友", "好友", 2, False), ("萧炎", "韩立", "敌对", "敌对", 1, True),
            ("韩立", "萧炎", "师徒", "师父", 1, True)]
    rows = list(csv.DictReader(paths[2].open(encoding="utf-8")))
    assert [(r["source"], r["target"], r["relation"], r["labels"], r["evidence_count"], r["chapters"])
            for r in rows] == [("紫灵", "韩立", "好友", "好友", "2", "c1"), ("萧炎", "韩立", "敌对", "敌对", "1", "c1"),
                               ("韩立", "萧炎", "师徒", "师父", "1", "c1")]


# --- one node per person ---------------------------------------------------------------------

BOOK = [Chapter("第一回", "贾政是贾宝玉的父亲。宝玉爱着林黛玉。宝玉与黛玉同来。王宝玉见了贾政。士隐与甄士隐。")]
ANSWERS = ["贾政-贾宝玉:父子", "宝玉-林黛玉:恋人", "宝玉-黛玉:恋人\n黛玉-宝玉:恋人"]


def people(answers, aliases=None):
    _, book = passages(BOOK, max_chars=10, overlap=0)  # one sentence a passage
    assert [p.text for p in book][:2] == ["贾政是贾宝玉的父亲。", "宝玉爱着林黛玉。"]
    graph = build_graph(BOOK, book[:len(answers)], answers, VOCABULARY, aliases)
    return graph, {n["id"]: n for n in graph["nodes"]}


def test_a_given_name_merges_into_its_only_full_name():
    graph, nodes = people(ANSWERS)
    assert sorted(nodes) == ["林黛玉", "贾宝玉", "贾政"]
    assert nodes["贾宝玉"]["names"] == ["贾宝玉", "宝玉"] and nodes["林黛玉"]["names"] == ["林黛玉", "黛玉"]
    assert nodes["林黛玉"]["mentions"] == 2  # 林黛玉 once, 黛玉 once: not 黛玉 inside 林黛玉 again
    assert graph["merges"] == [{"into": "林黛玉", "names": ["黛玉"], "reason": GIVEN_NAME},
                               {"into": "贾宝玉", "names": ["宝玉"], "reason": GIVEN_NAME}]
    love = edge(graph, "林黛玉", "贾宝玉", "恋人")
    assert [ev["lines"] for ev in love["evidence"]] == [["宝玉-林黛玉:恋人"], ["宝玉-黛玉:恋人", "黛玉-宝玉:恋人"]]
    assert edge(graph, "贾政", "贾宝玉", "父子") and len(graph["edges"]) == 2 and graph["kept_apart"] == []


def test_a_given_name_of_two_full_names_stays_apart_and_is_listed():
    graph, nodes = people(ANSWERS + ["王宝玉-贾政:好友"])
    assert sorted(nodes) == ["宝玉", "林黛玉", "王宝玉", "贾宝玉", "贾政"] and nodes["宝玉"]["names"] == ["宝玉"]
    assert graph["kept_apart"] == [{"name": "宝玉", "candidates": ["王宝玉", "贾宝玉"], "reason": SEVERAL}]
    assert edge(graph, "宝玉", "林黛玉", "恋人") and graph["merges"] == [
        {"into": "林黛玉", "names": ["黛玉"], "reason": GIVEN_NAME}]


def test_an_alias_file_forces_and_undoes_merges(tmp_path):
    alias_file = tmp_path / "aliases.tsv"
    alias_file.write_text("# names of one person\n贾宝玉|宝玉|宝二爷\n!黛玉\n甄士隐|士隐\n", encoding="utf-8")
    aliases = read_alias_file(alias_file)
    assert aliases == AliasFile({"贾宝玉": "贾宝玉", "宝玉": "贾宝玉", "宝二爷": "贾宝玉", "甄士隐": "甄士隐",
                                 "士隐": "甄士隐"}, frozenset({"黛玉"}))
    answers = ANSWERS + ["王宝玉-贾政:好友", "士隐-甄士隐:好友\n士隐-贾政:好友"]
    without, _ = people(answers)
    # 甄 is no surname of surnames.txt, but 甄士隐 is written once: 士隐 with a stray character
    assert {"into": "士隐", "names": ["甄士隐"], "reason": STRAY} in without["merges"]
    assert {"passage": 4, "line": "士隐-甄士隐:好友", "reason": "one person twice (士隐)"} in without["rejected"]
    graph, nodes = people(answers, aliases)
    assert graph["merges"] == [{"into": "甄士隐", "names": ["士隐"], "reason": FILE},
                               {"into": "贾宝玉", "names": ["宝玉"], "reason": FILE}]  # despite 王宝玉
    assert graph["kept_apart"] == [{"name": "黛玉", "candidates": ["林黛玉"], "reason": FILE}]
    assert sorted(nodes) == ["林黛玉", "王宝玉", "甄士隐", "贾宝玉", "贾政", "黛玉"]
    assert nodes["甄士隐"]["names"] == ["甄士隐", "士隐"] and edge(graph, "甄士隐", "贾政", "好友")
    assert graph["rejected"] == [{"passage": 4, "line": "士隐-甄士隐:好友", "reason": "one person twice (甄士隐)"}]
    # the demo's hand-checked list is an alias file too
    hlm = read_alias_file(ROOT / "examples" / "hongloumeng" / "relations.tsv")
    assert hlm.canonical["甄费"] == hlm.canonical["士隐"] == "甄士隐" and hlm.canonical["林公"] == "林如海"
    alias_file.write_text("贾宝玉|宝玉\n甄宝玉|宝玉\n", encoding="utf-8")
    with pytest.raises(RawDataError, match=r"aliases.tsv:2: 宝玉 is already a name of 贾宝玉"):
        read_alias_file(alias_file)
    with pytest.raises(FileNotFoundError, match="no such alias file"):
        read_alias_file(tmp_path / "missing.tsv")


STRAYS = [Chapter("第一回", "贾代化袭了官，其子贾敬。贾敬是贾代化的儿子。薛蟠父早亡，留下薛蟠和宝钗。宝钗道好。宝钗道谢。")]


def test_a_name_with_a_stray_character_merges_into_the_name_inside_it():
    _, book = passages(STRAYS, max_chars=20, overlap=0)
    answers = ["贾代化袭-贾敬:父子", "贾代化-贾敬:父子", "薛蟠父-宝钗:父女\n薛蟠-宝钗:兄弟", "宝钗道-薛蟠:兄弟"]
    graph = build_graph(STRAYS, book[:4], answers, VOCABULARY)
    nodes = {n["id"]: n["names"] for n in graph["nodes"]}
    # 贾代化袭 is written once (the answer copied 袭 of 袭了官); 薛蟠父 is 薛蟠's father (父 names another
    # person); 宝钗道 is written twice (a string the text repeats is not one slip): both stay apart
    assert graph["merges"] == [{"into": "贾代化", "names": ["贾代化袭"], "reason": STRAY}]
    assert nodes == {"贾代化": ["贾代化", "贾代化袭"], "贾敬": ["贾敬"], "薛蟠父": ["薛蟠父"], "薛蟠": ["薛蟠"],
                     "宝钗": ["宝钗"], "宝钗道": ["宝钗道"]}
    assert [ev["passage"] for ev in edge(graph, "贾代化", "贾敬", "父子")["evidence"]] == [0, 1]
    # the alias file undoes it (`!name`) or forces another reading
    kept = build_graph(STRAYS, book[:4], answers, VOCABULARY, AliasFile(apart=frozenset({"贾代化袭"})))
    assert kept["merges"] == [] and edge(kept, "贾代化袭", "贾敬", "父子")
    # without the book's text (resolve's default) the rule is off
    from relsft.book.aliases import resolve
    assert resolve({"贾代化袭", "贾代化"}).merges == []


def test_the_files_carry_the_merges(tmp_path):
    import networkx as nx

    alias_file = tmp_path / "aliases.tsv"
    alias_file.write_text("贾宝玉|宝玉\n", encoding="utf-8")
    graph, _ = people(ANSWERS, read_alias_file(alias_file))
    paths = write_outputs(graph, tmp_path / "out")
    assert json.loads(paths[0].read_text(encoding="utf-8"))["merges"] == graph["merges"] == [
        {"into": "林黛玉", "names": ["黛玉"], "reason": GIVEN_NAME}, {"into": "贾宝玉", "names": ["宝玉"], "reason": FILE}]
    g = nx.read_graphml(paths[1])
    assert (g.nodes["贾宝玉"]["names"], g.nodes["贾宝玉"]["merges"]) == ("贾宝玉|宝玉", "宝玉: alias file")
    assert (g.nodes["贾政"]["names"], g.nodes["贾政"]["merges"]) == ("贾政", "")
    rows = list(csv.DictReader(paths[2].open(encoding="utf-8")))
    assert [(r["source_names"], r["target_names"], r["relation"]) for r in rows] == [
        ("林黛玉|黛玉", "贾宝玉|宝玉", "恋人"), ("贾政", "贾宝玉|宝玉", "父子")]


def test_only_relations_the_passage_supports_enter_the_graph():
    """Both names written in the passage, two different names, a label of the vocabulary."""
    chapters = [Chapter("c1", "韩立与紫灵是师徒。萧炎是林清的好友。")]
    _, book = passages(chapters, max_chars=100, overlap=0)
    assert len(book) == 1
    answer = "韩立-紫灵:师徒\n萧炎-林清曾:好友\n韩立-韩立:好友\n萧炎-林清:挚交\n乱写一行\n萧炎-林清:好友"
    kept, rejected = grounded(book, [answer], {"师徒", "好友"})
    assert kept == ["韩立-紫灵:师徒\n乱写一行\n萧炎-林清:好友"]
    assert [(r["line"], r["reason"]) for r in rejected] == [
        ("萧炎-林清曾:好友", "a name not in the passage"), ("韩立-韩立:好友", "the same name twice"),
        ("萧炎-林清:挚交", "a relation not in relations.tsv")]
    graph = grounded_graph(chapters, book, [answer], {r: VOCABULARY[r] for r in ("师徒", "好友")})
    assert [(e["source"], e["target"], e["relation"]) for e in graph["edges"]] == [("林清", "萧炎", "好友"),
                                                                                 ("韩立", "紫灵", "师徒")]
    assert {n["id"] for n in graph["nodes"]} == {"韩立", "紫灵", "萧炎", "林清"}  # no 林清曾
    assert graph["unparsed"] == [{"passage": 0, "line": "乱写一行"}] and len(graph["rejected"]) == 3


def test_symmetric_relations_from_the_packaged_data(raw_data_dir):
    assert load_relations_or_packaged(raw_data_dir) == VOCABULARY
    symmetric = {n for n, r in VOCABULARY.items() if r.symmetric}
    assert {"好友", "夫妻"} <= symmetric and "师父" not in symmetric and "师父" in VOCABULARY



def test_bonds_of_the_vocabulary_and_old_files_still_load(tmp_path):
    v = VOCABULARY
    assert {n for n, r in v.items() if r.bond == "师徒"} == {"师徒", "师父", "师傅", "师尊", "徒弟"}
    assert [n for n, r in v.items() if r.reverse] == ["师妹", "徒弟"]
    assert v["徒弟"].edge("紫灵", "韩立") == ("韩立", "紫灵") == v["师父"].edge("韩立", "紫灵")  # the inverse
    assert v["师妹"].bond == v["师兄"].bond == v["师姐"].bond and v["师兄弟"].bond == "同门"
    assert v["师叔"].bond == "师叔" and v["父子"].bond == "父子"  # no inverse label: a bond of its own
    # relations.tsv before bonds (3 or 4 columns) loads as it did: every label a bond of its own
    (tmp_path / "relations.tsv").write_text("师父\tno\trole\n师姐\tno\trole\tf-\n", encoding="utf-8")
    old = load_relations(tmp_path)
    assert old["师父"].bond == "师父" and not old["师父"].reverse and old["师姐"].sexes == v["师姐"].sexes
    for bad in ("好友\tyes\tpair\t--\t~好友", "师父\tno\trole\t--\t", "师父\tno\trole\t--\t师徒\tx",
                "师父\tno\trole\t--\t同门\n同门\tyes\tpair"):
        (tmp_path / "relations.tsv").write_text(bad + "\n", encoding="utf-8")
        with pytest.raises(RawDataError, match="relations.tsv"):
            load_relations(tmp_path)

# --- requests, retries and the cache, on a fake server ---------------------------------------

class FakeServer:
    """An OpenAI-compatible stand-in: answers `<first two characters>-林清:好友`, after the `fail` errors."""

    def __init__(self, fail: list[int] | None = None):
        self.fail = list(fail or [])
        self.requests: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [
                {"id": "relsft", "object": "model", "created": 0, "owned_by": "vllm", "root": "/models/tiny"}]})
        body = json.loads(request.content)
        assert body["temperature"] == 0 and body["max_tokens"] == 32 and not body["stream"] and body["logprobs"]
        text = body["messages"][0]["content"]
        self.requests.append(text)
        if self.fail:  # the client's policy honours a server's retry-after: these tests need not wait
            return httpx.Response(self.fail.pop(0), json={"error": {"message": "boom"}},
                                  headers={"retry-after-ms": "1"})
        name = text.removeprefix(INSTRUCTION)[:2]
        return httpx.Response(200, json={
            "id": "x", "object": "chat.completion", "created": 0, "model": "relsft",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"{name}-林清:好友"},
                         "logprobs": {"content": [{"token": f"{name}-林清:好友", "logprob": -0.1, "bytes": None,
                                                   "top_logprobs": []}]}}]})

    def client(self):
        """ENDPOINT's client (key, timeout, retries), talking to this object instead of a network."""
        return ENDPOINT.connect(asynchronous=True, http_client=httpx.AsyncClient(transport=httpx.MockTransport(self)))


ENDPOINT = Endpoint("http://fake/v1", "k", max_tokens=32)


def run_answers(server: FakeServer, passage_texts: list[str], cache_path: Path, concurrency: int = 4):
    cache = AnswerCache(cache_path)
    try:
        return asyncio.run(answer_all(passage_texts, ENDPOINT, cache, concurrency, progress=False,
                                      client=server.client()))
    finally:
        cache.close()


def test_transient_errors_are_retried_and_4xx_is_not(tmp_path):
    server = FakeServer(fail=[503, 429, 502])
    answers, stats, served = run_answers(server, ["张三来了。", "李四来了。"], tmp_path / "c.jsonl", concurrency=1)
    assert answers == ["张三-林清:好友", "李四-林清:好友"] and served == "/models/tiny"
    assert len(server.requests) == 5 and stats.requested == 2
    assert server.requests[0].startswith(INSTRUCTION)  # relations.user_messages' prompt
    refused = FakeServer(fail=[400])
    with pytest.raises(RuntimeError, match="lower --max-chars"):
        run_answers(refused, ["王五来了。"], tmp_path / "d.jsonl")
    assert len(refused.requests) == 1
    with pytest.raises(RuntimeError):
        run_answers(FakeServer(fail=[500] * 10), ["赵六来了。"], tmp_path / "e.jsonl")


def test_cache_resumes_and_survives_a_torn_line(tmp_path):
    cache_path = tmp_path / "cache.jsonl"
    book = [f"第{i}人来了。" for i in range(6)] + ["第0人来了。"]  # a repeated passage is asked once
    first = FakeServer()
    answers, stats, _ = run_answers(first, book[:3], cache_path)
    assert stats.requested == 3
    with cache_path.open("a", encoding="utf-8") as f:
        f.write('{"key": "torn')  # a run killed mid-write
    again = FakeServer()
    resumed, stats, _ = run_answers(again, book, cache_path)
    assert sorted(again.requests) == sorted(INSTRUCTION + t for t in book[3:6])
    assert (stats.passages, stats.distinct, stats.cached, stats.requested) == (7, 6, 3, 3)
    assert resumed[:3] == answers and resumed[6] == resumed[0]
    lines = cache_path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 7 and lines[3] == '{"key": "torn'
    assert run_answers(FakeServer(), book, cache_path)[1].requested == 0
    # each answer's lines are cached with the probability the model gave them
    assert AnswerCache(cache_path).confidences[json.loads(lines[0])["key"]] == {"第0-林清:好友": 0.904837}
    # another model behind the same name, another answer length or an enforced format is asked afresh
    key = AnswerCache.key("relsft", "/models/tiny", 32, book[0])
    assert key not in (AnswerCache.key("relsft", "/models/other", 32, book[0]),
                       AnswerCache.key("relsft", "/models/tiny", 16, book[0]),
                       AnswerCache.key("relsft", "/models/tiny", 32, book[0], enforce_format=True))


def test_each_answer_is_reported_once_as_it_is_known(tmp_path):
    """answer_all's on_answer (relsft ui grows its graph with it): cached texts first, then each
    requested one as it arrives, a repeated text once, each with its lines' confidences."""
    cache_path = tmp_path / "cache.jsonl"
    run_answers(FakeServer(), ["张三来了。"], cache_path)
    reported = []
    cache = AnswerCache(cache_path)
    try:
        asyncio.run(answer_all(["李四来了。", "张三来了。", "李四来了。"], ENDPOINT, cache, 1, progress=False,
                               client=FakeServer().client(), on_answer=lambda *answered: reported.append(answered)))
    finally:
        cache.close()
    assert reported == [("张三来了。", "张三-林清:好友", {"张三-林清:好友": 0.904837}),
                        ("李四来了。", "李四-林清:好友", {"李四-林清:好友": 0.904837})]


def test_cli_outside_a_project_without_a_server_says_so(tmp_path, monkeypatch, capsys):
    from relsft.cli import main

    (tmp_path / "book.txt").write_text("韩立与紫灵是师徒关系。", encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the defaults
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    assert main(["extract-book", "book.txt", "--url", url, "--no-progress"]) == 1
    assert f"relsft extract-book: error: {url}: Connection error" in capsys.readouterr().err
    assert not (tmp_path / "book-graph" / "graph.json").exists()
    assert main(["extract-book", "book.txt", "--url", url, "--aliases", "missing.tsv"]) == 1  # read before asking
    assert capsys.readouterr().err.strip() == "relsft extract-book: error: missing.tsv: no such alias file"


def test_hongloumeng_checklist_and_checker(raw_data_dir):
    """The demo's hand-checked list uses the vocabulary, and the checker honours direction, bonds
    and aliases, and measures precision over the edges between listed characters."""
    sys.path.insert(0, str(ROOT / "examples" / "hongloumeng"))
    try:
        from check import check, listed_relations
    finally:
        sys.path.pop(0)
    from relsft.synthetic.inputs import load_raw

    rows = listed_relations()
    assert len(rows) >= 15 and {r["relation"] for r in rows} <= set(load_raw(raw_data_dir).relations)
    assert len({(r["a"][0], r["b"][0], r["relation"]) for r in rows}) == len(rows)

    def graph(*edges, names=None):
        names = names or {}
        ends = sorted({n for s, t, *_ in edges for n in (s, t)})
        return {"nodes": [{"id": n, "names": names.get(n, [n])} for n in ends],
                "edges": [{"source": s, "target": t, "relation": r, "symmetric": sym} for s, t, r, sym in edges]}

    def recovered(*edges):
        return {f["pair"] for f in check(graph(*edges), rows)["relations"] if f["recovered"]}

    assert recovered(("如海", "黛玉", "父女", False)) == {"林如海-黛玉:父女"}      # an alias
    assert recovered(("黛玉", "林如海", "父女", False)) == set()                  # direction matters
    assert recovered(("封氏", "甄士隐", "夫妻", True)) == {"甄士隐-封氏:夫妻"}    # symmetric: either order
    assert recovered(("林如海", "黛玉", "母女", False)) == set()                  # the label must agree
    # one bond: 师父 or 徒弟 the other way recover 师徒 (a graph before bonds has labels, not bonds)
    assert recovered(("雨村", "黛玉", "师父", False)) == recovered(("黛玉", "贾雨村", "徒弟", False)) \
        == recovered(("贾雨村", "林黛玉", "师徒", False)) == {"贾雨村-黛玉:师徒"}
    assert recovered(("黛玉", "贾雨村", "师父", False)) == set()

    result = check(graph(("林如海", "黛玉", "父女", False), ("贾政", "贾宝玉", "父子", False),
                         ("贾政", "黛玉", "父女", False), ("韩立", "黛玉", "好友", True),
                         names={"林如海": ["林如海", "如海"], "贾宝玉": ["贾宝玉", "宝玉"]}), rows)
    assert (result["recovered"], result["listed"], result["judged_edges"], result["correct_edges"]) == (
        2, len(rows), 3, 2)  # 韩立 is no listed character: his edge is not judged
    assert result["precision"] == round(2 / 3, 4) and result["recall"] == round(2 / len(rows), 4)
    assert [j["edge"] for j in result["judged"] if j["listed"] is None] == ["贾政-黛玉:父女"]
    assert check(graph(), rows)["precision"] is None


def test_hongloumeng_checker_cli(tmp_path):
    """`check.py graph.json --json out` as the README runs it, on a graph extract-book's code made."""
    chapters = [Chapter("第二回", "林如海之女黛玉。雨村教黛玉，林如海谢他。")]
    _, book = passages(chapters, max_chars=12, overlap=0)
    assert len(book) == 2
    sure = [{"林如海-黛玉:父女": 0.97}, {"黛玉-雨村:徒弟": 0.8, "雨村-林如海:好友": 0.4}]
    graph = grounded_graph(chapters, book, ["林如海-黛玉:父女", "黛玉-雨村:徒弟\n雨村-林如海:好友"], VOCABULARY,
                           confidences=sure)
    write_outputs(graph, tmp_path)
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "hongloumeng" / "check.py"),
                           str(tmp_path / "graph.json"), "--json", str(tmp_path / "check.json"),
                           "--curve", str(tmp_path / "curve.csv")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "✗ 林如海-雨村:好友 (between listed characters, not listed)" in proc.stdout
    assert "precision 2 of 3 edges between listed characters (0.6667)" in proc.stdout
    assert json.loads((tmp_path / "check.json").read_text(encoding="utf-8"))["recovered"] == 2
    # the unlisted 好友 edge (0.4) goes at 0.5, the 师徒 one (0.8) at 0.9: precision rises, recall falls
    points = {float(r["min_confidence"]): r for r in csv.DictReader((tmp_path / "curve.csv").open(encoding="utf-8"))}
    assert [points[t]["precision"] for t in (0.0, 0.5, 0.9)] == ["0.6667", "1.0", "1.0"]
    assert [points[t]["edges"] for t in (0.0, 0.5, 0.9, 0.99)] == ["3", "2", "1", "0"]
    assert points[0.9]["recovered"] == "1" and points[0.99]["precision"] == ""


# --- confidence: the served model's own token log-probabilities --------------------------------

def test_a_line_is_as_sure_as_its_tokens_and_the_break_before_it():
    from relsft.client import line_confidences

    tokens = [("韩", -0.1), ("立", 0.0), ("-紫灵", -0.2), (":", 0.0), ("师徒", -0.1), ("\n", -0.7),
              ("萧", -0.05), ("\ufffd", -0.05), ("-林清:好友", 0.0), ("<|im_end|>", -0.01)]
    got = line_confidences("韩立-紫灵:师徒\n萧炎-林清:好友", tokens)
    assert got == {"韩立-紫灵:师徒": round(math.exp(-0.4), 6), "萧炎-林清:好友": round(math.exp(-0.8), 6)}
    assert line_confidences("", [("", -0.2)]) == {}  # an empty answer states nothing


def test_min_confidence_drops_unsure_lines_and_edges_keep_their_surest_statement():
    chapters = [Chapter("c1", "韩立与紫灵是师徒关系。紫灵是韩立的好友。李四来了。")]
    _, book = passages(chapters, max_chars=12, overlap=0)
    answers = ["韩立-紫灵:师徒", "紫灵-韩立:好友"] + [""] * (len(book) - 2)
    sure = [{"韩立-紫灵:师徒": 0.9}, {"紫灵-韩立:好友": 0.3}] + [{}] * (len(book) - 2)
    graph = grounded_graph(chapters, book, answers, VOCABULARY, confidences=sure, min_confidence=0.5)
    assert [(e["relation"], e["confidence"]) for e in graph["edges"]] == [("师徒", 0.9)]
    assert [r["reason"] for r in graph["rejected"]] == ["confidence 0.300 below 0.5"]
    everything = grounded_graph(chapters, book, answers, VOCABULARY, confidences=sure)
    assert sorted(e["confidence"] for e in everything["edges"]) == [0.3, 0.9]
    unknown = grounded_graph(chapters, book, answers, VOCABULARY, min_confidence=0.5)  # no logprobs: kept
    assert len(unknown["edges"]) == 2 and all(e["confidence"] is None for e in unknown["edges"])


def test_min_mentions_drops_relations_naming_a_person_the_book_names_too_rarely():
    """A fragment taken for a name (张口, once in the book) loses its lines; a person named in
    several places, under any of his names (宝玉 twice, 贾宝玉 once: one person, three mentions), keeps his."""
    chapters = [Chapter("c1", "贾政的儿子是贾宝玉。宝玉与黛玉见了贾政。黛玉张口便说宝玉是好友。")]
    _, book = passages(chapters, max_chars=12, overlap=0)
    answers = ["贾政-贾宝玉:父子", "", "张口-宝玉:好友\n黛玉-宝玉:好友"][:len(book)]
    assert len(book) == 3
    everything = grounded_graph(chapters, book, answers, VOCABULARY)
    assert {n["id"] for n in everything["nodes"]} == {"贾政", "贾宝玉", "黛玉", "张口"}
    graph = grounded_graph(chapters, book, answers, VOCABULARY, min_mentions=2)
    assert {n["id"]: n["mentions"] for n in graph["nodes"]} == {"贾政": 2, "贾宝玉": 3, "黛玉": 2}
    assert [(e["source"], e["target"], e["relation"]) for e in graph["edges"]] == [
        ("贾宝玉", "黛玉", "好友"), ("贾政", "贾宝玉", "父子")]
    assert [(r["line"], r["reason"]) for r in graph["rejected"]] == [
        ("张口-宝玉:好友", "张口 named 1 time(s) in the book, fewer than 2")]
    assert grounded_graph(chapters, book, answers, VOCABULARY, min_mentions=1) == everything


def test_a_line_whose_label_needs_a_sex_the_books_lines_deny_is_dropped():
    """宝玉 is a son twice (父子, 母子), a sister once, with less conviction: the sister line goes, with
    its weights, and with it the edge; 夫妻 of two women goes too. 黛玉, whom the lines split evenly,
    and 秦钟, whom no sexed label names, are held to nothing; the same lines kept pass with --no-sex-check."""
    chapters = [Chapter("c1", "贾政与宝玉是父子。王夫人与宝玉是母子。宝玉与黛玉是姐妹。黛玉与宝钗是姐妹。"
                              "黛玉与宝玉是兄弟。王夫人与宝钗是夫妻。秦钟与宝玉是好友。")]
    _, book = passages(chapters, max_chars=12, overlap=0)
    answers = ["贾政-宝玉:父子", "王夫人-宝玉:母子", "宝玉-黛玉:姐妹", "黛玉-宝钗:姐妹", "黛玉-宝玉:兄弟",
               "王夫人-宝钗:夫妻", "秦钟-宝玉:好友"]
    assert len(book) == len(answers)
    sure = [{a: c} for a, c in zip(answers, (0.9, 0.8, 0.25, 0.25, 0.5, 0.6, 0.7))]
    graph = grounded_graph(chapters, book, answers, VOCABULARY, confidences=sure)
    assert [(e["source"], e["target"], e["relation"]) for e in graph["edges"]] == [
        ("宝玉", "秦钟", "好友"), ("宝玉", "黛玉", "兄弟"), ("宝钗", "黛玉", "姐妹"), ("王夫人", "宝玉", "母子"),
        ("贾政", "宝玉", "父子")]
    assert [(r["line"], r["reason"]) for r in graph["rejected"]] == [
        ("宝玉-黛玉:姐妹", "姐妹 needs other sexes: 宝玉 is a man by the book's lines (2.20 m, 0.25 f)"),
        ("王夫人-宝钗:夫妻", "夫妻 needs other sexes: 王夫人 is a woman by the book's lines (0.00 m, 0.80 f); "
                          "宝钗 is a woman by the book's lines (0.00 m, 0.25 f)")]
    unchecked = grounded_graph(chapters, book, answers, VOCABULARY, confidences=sure, sex_check=False)
    assert len(unchecked["edges"]) == 7 and unchecked["rejected"] == []
