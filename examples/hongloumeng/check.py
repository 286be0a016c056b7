"""How many of the hand-checked relations of relations.tsv a character graph recovers.

    python examples/hongloumeng/check.py hongloumeng-graph/graph.json [--json out.json]

An edge recovers a listed relation when its two names are names of the listed pair (any of the
aliases) and its label is the listed one; symmetric labels (relations.tsv) match in either order.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LISTED = Path(__file__).with_name("relations.tsv")


def listed_relations(path: Path = LISTED) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            a, b, rel, chapter, evidence = line.split("\t")
            rows.append({"a": a.split("|"), "b": b.split("|"), "relation": rel, "chapter": int(chapter),
                         "evidence": evidence})
    return rows


def recovers(edge: dict, row: dict) -> bool:
    if edge["relation"] != row["relation"]:
        return False
    forward = edge["source"] in row["a"] and edge["target"] in row["b"]
    backward = edge["source"] in row["b"] and edge["target"] in row["a"]
    return forward or (backward and edge["symmetric"])  # extract-book marks symmetric labels


def check(graph: dict, rows: list[dict]) -> dict:
    found = [{"pair": f"{r['a'][0]}-{r['b'][0]}:{r['relation']}",
              "recovered": any(recovers(e, r) for e in graph["edges"])} for r in rows]
    return {"edges": len(graph["edges"]), "nodes": len(graph["nodes"]), "listed": len(rows),
            "recovered": sum(f["recovered"] for f in found), "relations": found}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("graph", type=Path)
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args()
    result = check(json.loads(args.graph.read_text(encoding="utf-8")), listed_relations())
    for f in result["relations"]:
        print(f"{'✓' if f['recovered'] else '·'} {f['pair']}")
    print(f"{result['edges']} edges, {result['nodes']} characters; "
          f"recovered {result['recovered']} of {result['listed']} hand-checked relations")
    if args.json:
        args.json.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
