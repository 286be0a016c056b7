"""How well a character graph agrees with the hand-checked relations of relations.tsv.

    python examples/hongloumeng/check.py hongloumeng-graph/graph.json [--json out.json] [--curve curve.csv]

A graph node is a listed character when one of its names is one of the character's (the listed
aliases, `甄士隐|士隐|甄费`). An edge recovers a listed relation when its two ends are the listed
pair and it states the listed bond (relations.tsv's bond column: `贾雨村-黛玉:师徒` is recovered by
an edge stated as 师父, or as 徒弟 the other way); symmetric bonds match in either order.

recall: the listed relations that some edge recovers. precision: of the edges whose both ends are
listed characters, those that recover a listed relation. The list holds what chapters 1-5 state
that a reader would check first, not every relation they state, so precision is a lower bound.

--curve: the same at each minimum confidence (`extract-book --min-confidence`: an edge is kept when
the model gave one of its statements at least that probability), as CSV for `dvc plots`.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from relsft.vocabulary import RelationType, load_relations_or_packaged

LISTED = Path(__file__).with_name("relations.tsv")


def listed_relations(path: Path = LISTED) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            a, b, rel, chapter, evidence = line.split("\t")
            rows.append({"a": a.split("|"), "b": b.split("|"), "relation": rel, "chapter": int(chapter),
                         "evidence": evidence})
    return rows


def bond(source: str, target: str, rel: str, relations: dict[str, RelationType]) -> tuple[str, str, str, bool]:
    """(from, to, bond, symmetric) of `source-target:rel`, whether rel is a label or already a bond
    (graph.json's edges are bonds; a graph made before bonds has labels)."""
    rt = relations.get(rel)
    if rt is None:
        return source, target, rel, any(r.bond == rel and r.symmetric for r in relations.values())
    return *rt.edge(source, target), rt.bond, rt.symmetric


def check(graph: dict, rows: list[dict], relations: dict[str, RelationType] | None = None) -> dict:
    relations = relations or load_relations_or_packaged(None)
    people = {name: r[side][0] for r in rows for side in "ab" for name in r[side]}  # any name -> listed character
    node_person = {}  # a graph node -> the listed character it is, where exactly one
    for n in graph["nodes"]:
        found = {people[name] for name in n.get("names", [n["id"]]) if name in people}
        if len(found) == 1:
            node_person[n["id"]] = found.pop()
    listed = {}  # (from, to, bond) of each listed relation, both orders for a symmetric bond -> its row's pair
    for r in rows:
        a, b, rel, symmetric = bond(r["a"][0], r["b"][0], r["relation"], relations)
        pair = f"{r['a'][0]}-{r['b'][0]}:{r['relation']}"
        listed.update({(a, b, rel): pair, **({(b, a, rel): pair} if symmetric else {})})
    recovered, judged = set(), []
    for e in graph["edges"]:
        if e["source"] not in node_person or e["target"] not in node_person:
            continue
        a, b, rel, _ = bond(node_person[e["source"]], node_person[e["target"]], e["relation"], relations)
        pair = listed.get((a, b, rel))
        if pair:
            recovered.add(pair)
        judged.append({"edge": f"{e['source']}-{e['target']}:{e['relation']}", "listed": pair})
    found = [{"pair": p, "recovered": p in recovered} for p in dict.fromkeys(listed.values())]
    correct = sum(j["listed"] is not None for j in judged)
    return {"edges": len(graph["edges"]), "nodes": len(graph["nodes"]), "listed": len(found),
            "recovered": len(recovered), "recall": ratio(len(recovered), len(found)),
            "judged_edges": len(judged), "correct_edges": correct, "precision": ratio(correct, len(judged)),
            "relations": found, "judged": judged}


THRESHOLDS = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)


def curve(graph: dict, rows: list[dict], relations: dict[str, RelationType] | None = None,
          thresholds=THRESHOLDS) -> list[dict]:
    """Edges, recall and precision of the graph cut at each minimum confidence (an edge of unknown
    confidence, from answers without logprobs, is kept)."""
    out = []
    for t in thresholds:
        kept = [e for e in graph["edges"] if e.get("confidence") is None or e["confidence"] >= t]
        r = check(dict(graph, edges=kept), rows, relations)
        out.append({"min_confidence": t, **{k: r[k] for k in ("edges", "recovered", "recall", "judged_edges",
                                                               "correct_edges", "precision")}})
    return out


def ratio(n: int, d: int) -> float | None:
    return round(n / d, 4) if d else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("graph", type=Path)
    ap.add_argument("--json", type=Path, help="also write the result here")
    ap.add_argument("--curve", type=Path, help="write recall and precision at each minimum confidence (CSV)")
    args = ap.parse_args()
    graph, rows = json.loads(args.graph.read_text(encoding="utf-8")), listed_relations()
    result = check(graph, rows)
    for f in result["relations"]:
        print(f"{'✓' if f['recovered'] else '·'} {f['pair']}")
    for j in result["judged"]:
        if j["listed"] is None:
            print(f"✗ {j['edge']} (between listed characters, not listed)")
    print(f"{result['edges']} edges, {result['nodes']} characters; "
          f"recall {result['recovered']} of {result['listed']} hand-checked relations ({result['recall']}); "
          f"precision {result['correct_edges']} of {result['judged_edges']} edges between listed characters "
          f"({result['precision']})")
    if args.json:
        args.json.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    if args.curve:
        points = curve(graph, rows)
        for pt in points:
            print(f"min confidence {pt['min_confidence']:.2f}: {pt['edges']} edges, recall {pt['recall']}, "
                  f"precision {pt['precision']} ({pt['correct_edges']} of {pt['judged_edges']})")
        with args.curve.open("w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(points[0]))
            w.writeheader()
            w.writerows(points)


if __name__ == "__main__":
    main()
