"""The book's character graph, merged from every passage's answer, and its JSON, GraphML and CSV.

Nodes are the names the model gave, with `mentions` (occurrences of the name in the book's text,
counted without overlap, chapter by chapter: independent of how the text was cut into passages)
and `passages` (how many passages' answers name them). Edges are relations with every passage
that states them as evidence. A symmetric relation (relations.tsv) is one undirected edge whatever
the order the model wrote; an asymmetric one keeps its direction (`A-B:师父`: A is B's 师父).

A relation enters the graph only if its passage supports it (`grounded`): both names are written
in the passage, they differ, and the label is one of relations.tsv. The rest is listed under
`rejected` with the reason, so a model that copies a clause fragment as a name or invents a label
adds no character and no edge.

A pair with more than one (label, direction), `A-B:好友` and `A-B:敌对` or `A-B:父子` and
`B-A:父子`, is a conflict: every such edge is kept, flagged `conflict: true` and listed under
`conflicts`. Everything is sorted, so the same answers give byte-identical files.
"""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import atomic_file, write_json
from ..relations import parse_line, parse_output
from .split import Chapter, Passage


@dataclass(frozen=True)
class EdgeKey:
    source: str
    target: str
    relation: str
    symmetric: bool

    @classmethod
    def of(cls, a: str, b: str, rel: str, symmetric: bool) -> "EdgeKey":
        if symmetric:
            a, b = sorted((a, b))
        return cls(a, b, rel, symmetric)

    def pair(self) -> tuple[str, str]:
        return tuple(sorted((self.source, self.target)))


def evidence(passage: Passage, chapters: list[Chapter]) -> dict[str, Any]:
    return {"chapter": chapters[passage.chapter].name, "chapter_index": passage.chapter, "passage": passage.index,
            "sentences": [passage.first, passage.last], "chars": [passage.start, passage.end], "text": passage.text}


def grounded(passages: list[Passage], answers: list[str],
             vocabulary: set[str]) -> tuple[list[str], list[dict[str, Any]]]:
    """Each answer with only the relations its passage supports (unparsed lines are kept, for
    `unparsed`), and the dropped lines with their reason."""
    kept, rejected = [], []
    for p, answer in zip(passages, answers):
        lines = []
        for line in answer.strip().splitlines():
            r = parse_line(line)
            reason = None if r is None else (
                "the same name twice" if r.a == r.b else
                "a name not in the passage" if r.a not in p.text or r.b not in p.text else
                "a relation not in relations.tsv" if r.rel not in vocabulary else None)
            if reason:
                rejected.append({"passage": p.index, "line": line.strip(), "reason": reason})
            else:
                lines.append(line)
        kept.append("\n".join(lines))
    return kept, rejected


def build_graph(chapters: list[Chapter], passages: list[Passage], answers: list[str],
                symmetric: set[str]) -> dict[str, Any]:
    """answers[i] is the model's answer to passages[i]."""
    by_index = {p.index: p for p in passages}
    edges: dict[EdgeKey, list[int]] = defaultdict(list)
    named: dict[str, set[int]] = defaultdict(set)
    unparsed = []
    for p, answer in zip(passages, answers):
        parsed = parse_output(answer)
        unparsed += [{"passage": p.index, "line": line} for line in parsed.bad_lines]
        for r in parsed.relations:
            key = EdgeKey.of(r.a, r.b, r.rel, r.rel in symmetric)
            if p.index not in edges[key]:  # a line repeated in one answer is one piece of evidence
                edges[key].append(p.index)
            named[r.a].add(p.index)
            named[r.b].add(p.index)

    by_pair: dict[tuple[str, str], list[EdgeKey]] = defaultdict(list)
    for key in edges:
        by_pair[key.pair()].append(key)
    conflicting = {pair for pair, keys in by_pair.items() if len(keys) > 1}

    def sort_key(k: EdgeKey):
        return k.source, k.target, k.relation, k.symmetric

    edge_rows = [{"source": k.source, "target": k.target, "relation": k.relation, "symmetric": k.symmetric,
                  "conflict": k.pair() in conflicting,
                  "evidence": [evidence(by_index[i], chapters) for i in sorted(edges[k])]}
                 for k in sorted(edges, key=sort_key)]
    conflicts = [{"pair": list(pair), "edges": [{"source": k.source, "target": k.target, "relation": k.relation}
                                                for k in sorted(by_pair[pair], key=sort_key)]}
                 for pair in sorted(conflicting)]
    nodes = [{"id": name, "mentions": sum(c.text.count(name) for c in chapters), "passages": len(named[name])}
             for name in sorted(named)]
    return {"chapters": [{"name": c.name, "chars": len(c.text),
                          "passages": sum(p.chapter == i for p in passages)} for i, c in enumerate(chapters)],
            "passages": len(passages), "nodes": nodes, "edges": edge_rows, "conflicts": conflicts,
            "unparsed": sorted(unparsed, key=lambda u: u["passage"])}


def _key(parent: ET.Element, id_: str, for_: str, name: str, type_: str) -> None:
    ET.SubElement(parent, "key", {"id": id_, "for": for_, "attr.name": name, "attr.type": type_})


def _data(parent: ET.Element, key: str, value: Any) -> None:
    ET.SubElement(parent, "data", {"key": key}).text = str(value).lower() if isinstance(value, bool) else str(value)


def write_graphml(graph: dict[str, Any], path: str | Path) -> None:
    """GraphML for Gephi and networkx: a directed multigraph whose symmetric edges say `symmetric`
    (networkx refuses GraphML that mixes in `directed="false"` edges); evidence as a count (`weight`)
    and the passages' `chapter#passage` list, since GraphML holds no nested data."""
    root = ET.Element("graphml", {"xmlns": "http://graphml.graphdrawing.org/xmlns"})
    for id_, for_, name, type_ in (("label", "node", "label", "string"), ("mentions", "node", "mentions", "int"),
                                   ("npassages", "node", "passages", "int"),
                                   ("relation", "edge", "relation", "string"), ("weight", "edge", "weight", "int"),
                                   ("symmetric", "edge", "symmetric", "boolean"),
                                   ("conflict", "edge", "conflict", "boolean"),
                                   ("evidence", "edge", "evidence", "string")):
        _key(root, id_, for_, name, type_)
    g = ET.SubElement(root, "graph", {"id": "book", "edgedefault": "directed"})
    for n in graph["nodes"]:
        node = ET.SubElement(g, "node", {"id": n["id"]})
        _data(node, "label", n["id"])
        _data(node, "mentions", n["mentions"])
        _data(node, "npassages", n["passages"])
    for i, e in enumerate(graph["edges"]):
        edge = ET.SubElement(g, "edge", {"id": f"e{i}", "source": e["source"], "target": e["target"]})
        _data(edge, "relation", e["relation"])
        _data(edge, "weight", len(e["evidence"]))
        _data(edge, "symmetric", e["symmetric"])
        _data(edge, "conflict", e["conflict"])
        _data(edge, "evidence", " ".join(f"{ev['chapter']}#{ev['passage']}" for ev in e["evidence"]))
    ET.indent(root)
    with atomic_file(path, "wb") as f:
        ET.ElementTree(root).write(f, encoding="utf-8", xml_declaration=True)


CSV_FIELDS = ["source", "target", "relation", "symmetric", "conflict", "evidence_count", "chapters", "first_evidence"]


def write_csv(graph: dict[str, Any], path: str | Path) -> None:
    with atomic_file(path) as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, lineterminator="\n")
        w.writeheader()
        for e in graph["edges"]:
            chapters = dict.fromkeys(ev["chapter"] for ev in e["evidence"])
            w.writerow({"source": e["source"], "target": e["target"], "relation": e["relation"],
                        "symmetric": e["symmetric"], "conflict": e["conflict"], "evidence_count": len(e["evidence"]),
                        "chapters": ";".join(chapters), "first_evidence": e["evidence"][0]["text"]})


def write_graph_json(graph: dict[str, Any], path: str | Path) -> None:
    write_json(path, graph)


OUTPUTS = {"graph.json": write_graph_json, "graph.graphml": write_graphml, "relations.csv": write_csv}


def write_outputs(graph: dict[str, Any], out_dir: str | Path) -> list[Path]:
    paths = [Path(out_dir) / name for name in OUTPUTS]
    for path, writer in zip(paths, OUTPUTS.values()):
        writer(graph, path)
    return paths
