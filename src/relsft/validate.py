"""Stage `validate`: Great Expectations checks on the generated splits, before any training.

Raw inputs (prose parts, annotated passages) are free text, so mistakes surface only here: a
malformed label, a relation outside the vocabulary, a part that drops the names. Every
check is a built-in expectation, on the split columns or on a `check_*` column derived with
pandas; a derived column is null where the row is fine and otherwise holds what is wrong, so
the failure report names both the row id and the offending value.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # must be set before GX is imported

import great_expectations as gx  # noqa: E402
import great_expectations.expectations as gxe  # noqa: E402
import pandas as pd  # noqa: E402
from great_expectations.checkpoint import UpdateDataDocsAction  # noqa: E402
from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: E402

from .annotated import load_annotated  # noqa: E402
from .synthetic.passages import SPLITS, shared_name_chars  # noqa: E402
from .files import atomic_dir, write_json  # noqa: E402
from .synthetic.inputs import GOLD_SPLIT, PHENOMENA, load_raw  # noqa: E402
from .relations import LINE_RE, parse_output  # noqa: E402

KEYS = "id,output,text"
GOLD_KEYS = "genre,id,output,phenomena,text"
_LINE = LINE_RE.pattern.strip("^$")
OUTPUT_RE = rf"\A(?:{_LINE}(?:\n{_LINE})*)?\Z"  # GX uses re.search, so anchor the whole value; "" = no relation
RESULT_FORMAT = {"result_format": "SUMMARY", "unexpected_index_column_names": ["id"], "partial_unexpected_count": 20}
SHOWN = 3


class ValidationError(ValueError):
    """The generated data break an expectation; the message names split, check, rows and values."""


def _nonempty(values: list[str]) -> str | None:
    return ",".join(dict.fromkeys(values)) or None


def load_split(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise ValidationError(f"{path}: missing; run the generate stage first (`dvc repro`)")
    rows = []
    with path.open(encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec = None
            if not isinstance(rec, dict):  # keep it as a row so the schema check reports it
                rows.append({"id": f"{path.name}:{no}", "text": None, "output": None,
                             "check_keys": "<not a JSON object>"})
                continue
            # A non-string value counts as missing; the not-null checks then name the row.
            row = {k: rec.get(k) if isinstance(rec.get(k), str) else None for k in ("id", "text", "output")}
            tags = rec.get("phenomena")
            row["phenomena"] = ",".join(tags) if isinstance(tags, list) and all(isinstance(t, str) for t in tags) \
                else None if tags is None else "<not a list of strings>"
            rows.append({**row, "check_keys": ",".join(sorted(rec))})
    return pd.DataFrame(rows, columns=["id", "text", "output", "phenomena", "check_keys"], dtype=object)


def derive_gold(df: pd.DataFrame, train_texts: set[str], train_pairs: set[frozenset[str]]) -> None:
    """The gold split's own checks: known phenomenon tags, `no_relation` exactly where the output is
    empty, and nothing of train in it: no text of train contains a gold text, no gold pair of names
    is a pair of any train answer."""
    train_blob = "\n".join(train_texts)
    tags, empty, in_train, pairs = [], [], [], []
    for text, output, phenomena in zip(df["text"], df["output"], df["phenomena"]):
        listed = (phenomena or "").split(",") if phenomena else []
        tags.append(_nonempty([t for t in listed if t not in PHENOMENA]) or (None if listed else "<no tag>"))
        empty.append(None if (output == "") == ("no_relation" in listed) else f"output {output!r}")
        in_train.append(text if text and text in train_blob else None)
        rels = parse_output(output or "").relations
        pairs.append(_nonempty([r.line() for r in rels if frozenset((r.a, r.b)) in train_pairs]))
    df["check_phenomena"], df["check_no_relation"] = tags, empty
    df["check_text_in_train"], df["check_pair_in_train"] = in_train, pairs


def derive(df: pd.DataFrame, vocabulary: set[str], train_texts: set[str] | None, train_chars: set[str] | None,
           marked: set[str] = frozenset()) -> None:
    """Add the check_* columns in place; each is null where the row passes. `train_chars`: the characters of
    train names less the sex-marking ones (`marked`), which no test_ood name may have."""
    unknown, names_missing, n_lines, in_train, shared, once = [], [], [], [], [], []
    for row_id, text, output in zip(df["id"], df["text"], df["output"]):
        text, output = text or "", output or ""
        rels = parse_output(output).relations  # malformed lines are the regex check's to report
        names = [n for r in rels for n in (r.a, r.b)]
        unknown.append(_nonempty([r.rel for r in rels if r.rel not in vocabulary]))
        once.append(None if str(row_id).startswith("annotated-") and "." in str(row_id) else text)  # .2: a repeat
        names_missing.append(_nonempty([n for n in names if n not in text]))
        n_lines.append(len(output.splitlines()))
        in_train.append(text if train_texts is not None and text in train_texts else None)
        if train_chars is not None:  # "name(shared characters)", so the report shows where they come from
            shared.append(_nonempty([f"{n}({''.join(sorted(set(n) & train_chars))})" for n in names
                                     if set(n) & train_chars or not set(n) - marked]))
    df["check_unknown_relations"], df["check_names_not_in_text"] = unknown, names_missing
    df["check_output_lines"], df["check_text_once"] = n_lines, once
    if train_texts is not None:
        df["check_text_in_train"] = in_train
    if train_chars is not None:
        df["check_train_name_chars"] = shared


def expectations(split: str, params: dict[str, Any]) -> list[gxe.Expectation]:
    # The description says what a failure means; it replaces the generic text in Data Docs and the error.
    def why(cls: type[gxe.Expectation], description: str, **kw: Any) -> gxe.Expectation:
        return cls(description=description, **kw)

    gold = split == GOLD_SPLIT
    keys = GOLD_KEYS if gold else KEYS
    ex = [why(gxe.ExpectColumnValuesToBeInSet, f"each line is a JSON object with exactly {keys.replace(',', ', ')}",
              column="check_keys", value_set=[keys])]
    ex += [why(gxe.ExpectColumnValuesToNotBeNull, f"{col} is present and a string", column=col)
           for col in ("id", "text", "output")]
    ex += [
        why(gxe.ExpectColumnValueLengthsToBeBetween, "id is not empty", column="id", min_value=1),
        why(gxe.ExpectColumnValueLengthsToBeBetween, f"text has 1-{params['max_text_chars']} characters",
            column="text", min_value=1, max_value=params["max_text_chars"]),
        why(gxe.ExpectColumnValuesToBeBetween, f"output has 0-{params['max_output_lines']} lines",
            column="check_output_lines", min_value=0, max_value=params["max_output_lines"]),
        why(gxe.ExpectColumnValuesToMatchRegex, "every output line is `A-B:rel` (empty: the passage states none)",
            column="output", regex=OUTPUT_RE),
        why(gxe.ExpectColumnValuesToBeNull, "relations are in relations.tsv", column="check_unknown_relations"),
        why(gxe.ExpectColumnValuesToBeNull, "every labelled name occurs in the text", column="check_names_not_in_text"),
        why(gxe.ExpectColumnValuesToBeUnique, "ids are unique", column="id"),
        why(gxe.ExpectColumnValuesToBeUnique, "texts are unique (generate.annotated_share repeats aside)",
            column="check_text_once"),
    ]
    if gold:
        ex += [
            why(gxe.ExpectColumnValuesToBeNull, f"phenomena are tags of {', '.join(PHENOMENA)}",
                column="check_phenomena"),
            why(gxe.ExpectColumnValuesToBeNull, "the output is empty exactly where the passage is tagged no_relation",
                column="check_no_relation"),
            why(gxe.ExpectColumnValuesToBeNull, "no train text contains a gold text", column="check_text_in_train"),
            why(gxe.ExpectColumnValuesToBeNull, "no gold pair of names is a pair in train",
                column="check_pair_in_train"),
        ]
    elif split != "train":
        ex.append(why(gxe.ExpectColumnValuesToBeNull, "no text also occurs in train", column="check_text_in_train"))
    if split == "test_ood":
        ex.append(why(gxe.ExpectColumnValuesToBeNull, "names share no character with train names (sex-marking "
                      "characters aside) and have one of their own", column="check_train_name_chars"))
    return ex


UNKNOWN_RELATION_FIX = ("add the relation to data/relations.tsv (relation<TAB>yes|no<TAB>pair,role) or map it to "
                        "one there with generate.relation_map in params.yaml (e.g. relation_map: {老师: 师父})")


def describe_failure(split: str, r: Any, sources: dict[str, str] | None = None) -> str:
    cfg, res = r.expectation_config, r.result
    head = f"- {split}: {cfg.type} on `{cfg.kwargs.get('column')}` ({cfg.description})"
    # GX nests exception info per metric when one of an expectation's metrics raised.
    info = r.exception_info or {}
    errors = [i["exception_message"] for i in [info, *info.values()]
              if isinstance(i, dict) and i.get("exception_message")]
    if errors:
        return f"{head}: could not be evaluated: {errors[0]}"
    sources = sources or {}

    def where(row_id: Any) -> str:  # an annotated row: the file and line it came from
        source = sources.get(str(row_id).split(".")[0])
        return f" ({source})" if source else ""

    rows = [f"    id={row.get('id')!r}{where(row.get('id'))}: {row.get(cfg.kwargs.get('column'))!r}"
            for row in res.get("partial_unexpected_index_list", [])[:SHOWN]]
    if cfg.kwargs.get("column") == "check_unknown_relations":
        rows.append(f"    fix: {UNKNOWN_RELATION_FIX}")
    count = res.get("unexpected_count")
    more = f" (first {len(rows)} shown)" if count and count > len(rows) else ""
    return "\n".join([f"{head}: {count} unexpected row(s){more}", *rows])


def validate(data_dir: str | Path, dataset_dir: str | Path, docs_dir: str | Path, summary_path: str | Path,
             params: dict[str, Any]) -> dict[str, Any]:
    raw = load_raw(data_dir)
    vocabulary, marked = set(raw.relations), shared_name_chars(raw)
    docs_dir = Path(docs_dir).resolve()
    summary: dict[str, Any] = {}
    records = load_annotated(data_dir)
    # Records that could not be read at all: file, line and reason, before any expectation.
    failures: list[str] = [f"- annotated: {r.source}: {r.problem}" for r in records if r.problem]
    sources = {f"annotated-{j:05d}": r.source for j, r in enumerate(records)}
    # Build the docs beside the old ones and swap at the end: stale pages of earlier runs never linger.
    with atomic_dir(docs_dir) as tmp:
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        context.add_data_docs_site(site_name="relsft", site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(tmp)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })
        source = context.data_sources.add_pandas("relsft")
        train_texts: set[str] | None = None
        train_chars: set[str] | None = None
        train_pairs: set[frozenset[str]] = set()
        gold = Path(data_dir) / f"{GOLD_SPLIT}.jsonl"
        paths = {split: Path(dataset_dir) / f"{split}.jsonl" for split in SPLITS}
        paths.update({GOLD_SPLIT: gold} if gold.exists() else {})
        for split, path in paths.items():  # train first: the others are checked against it
            df = load_split(path)
            derive(df, vocabulary, train_texts, train_chars if split == "test_ood" else None, marked)
            if split == GOLD_SPLIT:
                derive_gold(df, train_texts or set(), train_pairs)
            if split == "train":
                # Only sets survive the split; the frame itself is dropped before the next one.
                train_texts = set(df["text"].dropna())
                train_rels = [r for out in df["output"].dropna() for r in parse_output(out).relations]
                train_chars = {c for r in train_rels for c in r.a + r.b} - marked
                train_pairs = {frozenset((r.a, r.b)) for r in train_rels}
                del train_rels
            batch = source.add_dataframe_asset(split).add_batch_definition_whole_dataframe(split)
            suite = context.suites.add(gx.ExpectationSuite(name=split, expectations=expectations(split, params)))
            vd = context.validation_definitions.add(gx.ValidationDefinition(name=split, data=batch, suite=suite))
            checkpoint = context.checkpoints.add(gx.Checkpoint(
                name=split, validation_definitions=[vd], result_format=RESULT_FORMAT,
                actions=[UpdateDataDocsAction(name="docs", site_names=["relsft"])]))
            result = next(iter(checkpoint.run(batch_parameters={"dataframe": df}).run_results.values()))
            failures += [describe_failure(split, r, sources) for r in result.results if not r.success]
            stats = result.statistics
            summary[split] = {"rows": len(df), "expectations": stats["evaluated_expectations"],
                              "passed": stats["successful_expectations"]}
            del df
    if failures:
        raise ValidationError(
            f"{len(failures)} expectation(s) failed on {dataset_dir}:\n" + "\n".join(failures)
            + f"\nFix the raw inputs under {data_dir}/ and run `dvc repro` again; "
            f"Data Docs: {docs_dir / 'index.html'}")
    write_json(summary_path, summary)
    return summary
