"""Each person's sex as the book's answers state it, and the answer lines that contradict it.

Most labels fix the sexes of their two people (relations.tsv's sexes column: `A-B:父女` is a man and
a woman, `A-B:姐妹` two women). Summed over every grounded answer line of the book, each weighted by
the probability the model gave it (1 where unknown), those labels say which sex the model takes a
person for. A line whose label needs the other sex for one of its people (宝玉-黛玉:姐妹, where the
book's lines make 宝玉 a man) is dropped and listed under `rejected` with the weights; so is a pair
the lines make two women as 夫妻. A person the lines split evenly, or whom no sexed label names, is
held to nothing. Without it, a model that is unsure of a pair states it as several kin bonds across
passages (兄弟 here, 姐妹 there), and each becomes an edge.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ..relations import parse_line
from ..vocabulary import RelationType
from .graph import drop_lines
from .split import Passage

SEX_WORDS = {"m": "a man", "f": "a woman"}


def fixed_sexes(rt: RelationType) -> tuple[str | None, str | None]:
    """The sex the label fixes for A and for B of `A-B:label` (None: either)."""
    xs, ys = {x for x, _ in rt.sexes}, {y for _, y in rt.sexes}
    return (xs.pop() if len(xs) == 1 else None), (ys.pop() if len(ys) == 1 else None)


def sex_weights(answers: list[str], relations: dict[str, RelationType], person: dict[str, str],
                confidences: list[dict[str, float] | None] | None = None) -> dict[str, dict[str, float]]:
    """person -> {"m": weight, "f": weight} from every answer line whose label fixes a sex; `person`
    maps a name to its node (an unlisted name is a person of its own)."""
    weights: dict[str, dict[str, float]] = defaultdict(lambda: {"m": 0.0, "f": 0.0})
    for i, answer in enumerate(answers):
        sure = (confidences[i] if confidences else None) or {}
        for line in answer.splitlines():
            r = parse_line(line)
            if r is None or r.rel not in relations:
                continue
            for name, sex in zip((r.a, r.b), fixed_sexes(relations[r.rel])):
                if sex:
                    weights[person.get(name, name)][sex] += sure.get(line.strip(), 1.0)
    return weights


def contradiction(line: str, relations: dict[str, RelationType], person: dict[str, str],
                  weights: dict[str, dict[str, float]]) -> str | None:
    """Why the line's label cannot hold for its people as the book's lines sex them, or None."""
    r = parse_line(line)
    if r is None or r.rel not in relations:
        return None
    a, b = person.get(r.a, r.a), person.get(r.b, r.b)

    def against(who: str, sex: str) -> bool:  # the other sex outweighs it
        w = weights.get(who, {"m": 0.0, "f": 0.0})
        return w["f" if sex == "m" else "m"] > w[sex]

    if any(not against(a, x) and not against(b, y) for x, y in relations[r.rel].sexes):
        return None
    told = "; ".join(f"{who} is {SEX_WORDS[max('mf', key=lambda s: weights[who][s])]} by the book's lines "
                     f"({weights[who]['m']:.2f} m, {weights[who]['f']:.2f} f)"
                     for who in dict.fromkeys((a, b)) if who in weights and weights[who]["m"] != weights[who]["f"])
    return f"{r.rel} needs other sexes: {told}"


def without_sex_contradictions(passages: list[Passage], answers: list[str], relations: dict[str, RelationType],
                               person: dict[str, str], weights: dict[str, dict[str, float]]
                               ) -> tuple[list[str], list[dict[str, Any]]]:
    """Each answer without the lines that contradict its people's sexes, and those lines with why."""
    return drop_lines(passages, answers, lambda _, __, line: contradiction(line, relations, person, weights))
