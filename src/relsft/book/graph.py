"""The book's character graph, merged from every passage's answer, and its JSON, GraphML and CSV.

Nodes are people: the names the model gave, merged where they are one person (aliases.py), with
their `names`, `mentions` (occurrences of any of the names in the book's text, counted without
overlap, chapter by chapter: independent of how the text was cut into passages) and `passages`
(how many passages' answers name them). Every merge is listed under `merges` with its reason, and
every merge not made under `kept_apart`.

Edges are bonds (relations.tsv's bond column): `A-B:师父`, `A-B:师尊` and `B-A:徒弟` are one edge
A→B `师徒`, with every label it was stated with (`labels`) and every passage that states it as
evidence, with the answer lines it came from. A symmetric bond is one undirected edge whatever the
order the model wrote; an asymmetric one points the bond's way (师徒: master → disciple).

A relation enters the graph only if its passage supports it (`grounded`): both names are written
in the passage, they differ, and the label is one of relations.tsv. The rest is listed under
`rejected` with the reason, so a model that copies a clause fragment as a name or invents a label
adds no character and no edge; so is a line whose two names turn out to be one person, and one whose
label needs a sex the book's other lines deny its person (sexes.py).

A pair with more than one edge is a conflict: one bond both ways (A father of B and B father of A)
or several bonds (好友 and 敌对: a story can turn friends into enemies, so both are shown, each with
its chapters). Every such edge is kept, flagged `conflict: true` and listed under `conflicts`.
Everything is sorted, so the same answers give byte-identical files.
"""

from __future__ import annotations

import csv
import re
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..files import atomic_file, write_json
from ..relations import parse_line, parse_output
from ..vocabulary import RelationType
from .aliases import AliasFile, resolve
from .split import Chapter, Passage


# extract-book's default cut (--min-confidence). On gold, the default's answer lines at >= 0.3 keep 97% of
# the correct ones and drop 31% of the wrong; on 红楼梦 ch. 1-5 the graph halves at the same recall
# (docs/experiments.md). Every dropped line stays under `rejected`; 0 keeps them all.
DEFAULT_MIN_CONFIDENCE = 0.3


@dataclass(frozen=True, order=True)
class EdgeKey:
    source: str
    target: str
    relation: str  # the bond
    symmetric: bool

    @classmethod
    def of(cls, a: str, b: str, rt: RelationType) -> "EdgeKey":
        a, b = sorted((a, b)) if rt.symmetric else rt.edge(a, b)
        return cls(a, b, rt.bond, rt.symmetric)

    def pair(self) -> tuple[str, str]:
        return tuple(sorted((self.source, self.target)))


def evidence(passage: Passage, chapters: list[Chapter], lines: list[str]) -> dict[str, Any]:
    return {"chapter": chapters[passage.chapter].name, "chapter_index": passage.chapter, "passage": passage.index,
            "sentences": [passage.first, passage.last], "chars": [passage.start, passage.end], "text": passage.text,
            "lines": lines}


def drop_lines(passages: list[Passage], answers: list[str],
               why: Callable[[int, Passage, str], str | None]) -> tuple[list[str], list[dict[str, Any]]]:
    """Each answer without the lines `why(i, passages[i], line)` gives a reason for, and those lines
    with their reason."""
    kept, rejected = [], []
    for i, (p, answer) in enumerate(zip(passages, answers)):
        lines = []
        for line in answer.strip().splitlines():
            if reason := why(i, p, line):
                rejected.append({"passage": p.index, "line": line.strip(), "reason": reason})
            else:
                lines.append(line)
        kept.append("\n".join(lines))
    return kept, rejected


def grounded(passages: list[Passage], answers: list[str], vocabulary: set[str] | dict[str, RelationType],
             confidences: list[dict[str, float] | None] | None = None,
             min_confidence: float = 0.0) -> tuple[list[str], list[dict[str, Any]]]:
    """Each answer with only the relations its passage supports and the model was at least
    `min_confidence` sure of (a line of unknown confidence is kept; unparsed lines are kept, for
    `unparsed`), and the dropped lines with their reason."""
    def why(i: int, p: Passage, line: str) -> str | None:
        r = parse_line(line)
        sure = (confidences[i] if confidences else None) or {}
        return None if r is None else (
            "the same name twice" if r.a == r.b else
            "a name not in the passage" if r.a not in p.text or r.b not in p.text else
            "a relation not in relations.tsv" if r.rel not in vocabulary else
            f"confidence {sure[line.strip()]:.3f} below {min_confidence}"
            if sure.get(line.strip(), 1.0) < min_confidence else None)

    return drop_lines(passages, answers, why)


def without_rare_names(passages: list[Passage], answers: list[str], rare: dict[str, int],
                       min_mentions: int) -> tuple[list[str], list[dict[str, Any]]]:
    """Each answer without the lines naming a person the book names fewer than `min_mentions` times
    (`rare`: name -> mentions). Most such names are a clause fragment or a poem's word taken for a
    name; a character the book really names once is lost with them."""
    def why(_: int, __: Passage, line: str) -> str | None:
        r = parse_line(line)
        name = next((n for n in (r.a, r.b) if n in rare), None) if r else None
        return f"{name} named {rare[name]} time(s) in the book, fewer than {min_mentions}" if name else None

    return drop_lines(passages, answers, why)


def mentions(names: list[str], chapters: list[Chapter]) -> int:
    """Occurrences of any of the names, without overlap: 贾宝玉 is one mention, not one of 宝玉 too."""
    pattern = re.compile("|".join(map(re.escape, sorted(names, key=len, reverse=True))))
    return sum(len(pattern.findall(c.text)) for c in chapters)


def build_graph(chapters: list[Chapter], passages: list[Passage], answers: list[str],
                relations: dict[str, RelationType], aliases: AliasFile | None = None,
                confidences: list[dict[str, float] | None] | None = None) -> dict[str, Any]:
    """answers[i] is the model's answer to passages[i], confidences[i] its lines' (line_confidences);
    a label outside `relations` is a bond of its own."""
    by_index = {p.index: p for p in passages}
    parsed = [(p, parse_output(answer)) for p, answer in zip(passages, answers)]
    sure = {p.index: {(r.line() if (r := parse_line(line)) else line): v for line, v in c.items()}
            for p, c in zip(passages, confidences or []) if c is not None}  # by the lines' written form
    people = resolve({n for _, a in parsed for r in a.relations for n in (r.a, r.b)}, aliases,
                     "\n".join(c.text for c in chapters))
    edges: dict[EdgeKey, dict[int, list[str]]] = defaultdict(dict)  # passage -> the answer lines stating it
    labels: dict[EdgeKey, set[str]] = defaultdict(set)
    named: dict[str, set[int]] = defaultdict(set)
    unparsed, one_person = [], []
    for p, answer in parsed:
        unparsed += [{"passage": p.index, "line": line} for line in answer.bad_lines]
        for r in answer.relations:
            a, b = people.node[r.a], people.node[r.b]
            if a == b:
                one_person.append({"passage": p.index, "line": r.line(), "reason": f"one person twice ({a})"})
                continue
            key = EdgeKey.of(a, b, relations.get(r.rel) or RelationType(r.rel, False, ()))
            lines = edges[key].setdefault(p.index, [])
            if r.line() not in lines:  # a line repeated in one answer is one piece of evidence
                lines.append(r.line())
            labels[key].add(r.rel)
            named[a].add(p.index)
            named[b].add(p.index)

    by_pair: dict[tuple[str, str], list[EdgeKey]] = defaultdict(list)
    for key in sorted(edges):
        by_pair[key.pair()].append(key)
    conflicting = {pair: keys for pair, keys in by_pair.items() if len(keys) > 1}

    def confidence(passage: int, lines: list[str]) -> float | None:
        known = [sure[passage][line] for line in lines if line in sure.get(passage, {})]
        return max(known) if known else None

    edge_rows = []
    for k in sorted(edges):
        proofs = [{**evidence(by_index[i], chapters, sorted(lines)), "confidence": confidence(i, lines)}
                  for i, lines in sorted(edges[k].items())]
        known = [e["confidence"] for e in proofs if e["confidence"] is not None]
        edge_rows.append({"source": k.source, "target": k.target, "relation": k.relation,
                          "labels": sorted(labels[k]), "symmetric": k.symmetric, "conflict": k.pair() in conflicting,
                          # the surest statement of it: a bond stated once with conviction is not made doubtful
                          # by a second, hesitant passage
                          "confidence": max(known) if known else None, "evidence": proofs})
    conflicts = [{"pair": list(pair), "reason": "one bond both ways" if len({k.relation for k in keys}) < len(keys)
                  else "several bonds",
                  "edges": [{"source": k.source, "target": k.target, "relation": k.relation} for k in keys]}
                 for pair, keys in sorted(conflicting.items())]
    groups = people.groups()
    nodes = [{"id": node, "names": groups[node], "mentions": mentions(groups[node], chapters),
              "passages": len(named[node])} for node in sorted(named)]
    return {"chapters": [{"name": c.name, "chars": len(c.text),
                          "passages": sum(p.chapter == i for p in passages)} for i, c in enumerate(chapters)],
            "passages": len(passages), "nodes": nodes, "edges": edge_rows, "conflicts": conflicts,
            "merges": [m for m in people.merges if m["into"] in named],
            "kept_apart": [k for k in people.kept_apart if k["name"] in named],
            "unparsed": sorted(unparsed, key=lambda u: u["passage"]),
            "rejected": sorted(one_person, key=lambda r: r["passage"])}


def _key(parent: ET.Element, id_: str, for_: str, name: str, type_: str) -> None:
    ET.SubElement(parent, "key", {"id": id_, "for": for_, "attr.name": name, "attr.type": type_})


def _data(parent: ET.Element, key: str, value: Any) -> None:
    ET.SubElement(parent, "data", {"key": key}).text = str(value).lower() if isinstance(value, bool) else str(value)


def merge_notes(graph: dict[str, Any]) -> dict[str, str]:
    """Each merged node's merges, `宝玉: given name of exactly one full name`, for the flat formats."""
    notes: dict[str, list[str]] = defaultdict(list)
    for m in graph["merges"]:
        notes[m["into"]].append(f"{'|'.join(m['names'])}: {m['reason']}")
    return {node: "; ".join(n) for node, n in notes.items()}


def write_graphml(graph: dict[str, Any], path: str | Path) -> None:
    """GraphML for Gephi and networkx: a directed multigraph whose symmetric edges say `symmetric`
    (networkx refuses GraphML that mixes in `directed="false"` edges); evidence as a count (`weight`)
    and the passages' `chapter#passage` list, names and labels `|`-joined, since GraphML holds no
    nested data."""
    root = ET.Element("graphml", {"xmlns": "http://graphml.graphdrawing.org/xmlns"})
    for id_, for_, name, type_ in (("label", "node", "label", "string"), ("names", "node", "names", "string"),
                                   ("merges", "node", "merges", "string"), ("mentions", "node", "mentions", "int"),
                                   ("npassages", "node", "passages", "int"),
                                   ("relation", "edge", "relation", "string"), ("labels", "edge", "labels", "string"),
                                   ("weight", "edge", "weight", "int"),
                                   ("symmetric", "edge", "symmetric", "boolean"),
                                   ("conflict", "edge", "conflict", "boolean"),
                                   ("evidence", "edge", "evidence", "string")):
        _key(root, id_, for_, name, type_)
    g = ET.SubElement(root, "graph", {"id": "book", "edgedefault": "directed"})
    notes = merge_notes(graph)
    for n in graph["nodes"]:
        node = ET.SubElement(g, "node", {"id": n["id"]})
        _data(node, "label", n["id"])
        _data(node, "names", "|".join(n["names"]))
        _data(node, "merges", notes.get(n["id"], ""))
        _data(node, "mentions", n["mentions"])
        _data(node, "npassages", n["passages"])
    for i, e in enumerate(graph["edges"]):
        edge = ET.SubElement(g, "edge", {"id": f"e{i}", "source": e["source"], "target": e["target"]})
        _data(edge, "relation", e["relation"])
        _data(edge, "labels", "|".join(e["labels"]))
        _data(edge, "weight", len(e["evidence"]))
        _data(edge, "symmetric", e["symmetric"])
        _data(edge, "conflict", e["conflict"])
        _data(edge, "evidence", " ".join(f"{ev['chapter']}#{ev['passage']}" for ev in e["evidence"]))
    ET.indent(root)
    with atomic_file(path, "wb") as f:
        ET.ElementTree(root).write(f, encoding="utf-8", xml_declaration=True)


CSV_FIELDS = ["source", "target", "relation", "labels", "symmetric", "conflict", "evidence_count", "chapters",
              "first_evidence", "source_names", "target_names"]


def write_csv(graph: dict[str, Any], path: str | Path) -> None:
    """One row per edge; a merged end's names (`贾宝玉|宝玉`) in source_names / target_names."""
    names = {n["id"]: "|".join(n["names"]) for n in graph["nodes"]}
    with atomic_file(path) as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, lineterminator="\n")
        w.writeheader()
        for e in graph["edges"]:
            chapters = dict.fromkeys(ev["chapter"] for ev in e["evidence"])
            w.writerow({"source": e["source"], "target": e["target"], "relation": e["relation"],
                        "labels": "|".join(e["labels"]), "symmetric": e["symmetric"], "conflict": e["conflict"],
                        "evidence_count": len(e["evidence"]), "chapters": ";".join(chapters),
                        "first_evidence": e["evidence"][0]["text"], "source_names": names[e["source"]],
                        "target_names": names[e["target"]]})


def write_graph_json(graph: dict[str, Any], path: str | Path) -> None:
    write_json(path, graph)


OUTPUTS = {"graph.json": write_graph_json, "graph.graphml": write_graphml, "relations.csv": write_csv}


def write_outputs(graph: dict[str, Any], out_dir: str | Path) -> list[Path]:
    paths = [Path(out_dir) / name for name in OUTPUTS]
    for path, writer in zip(paths, OUTPUTS.values()):
        writer(graph, path)
    return paths
