"""The default raw inputs shipped in the package, and `relsft init-data`, which writes them to data/.

init-data writes them byte-identically, so a fresh clone without a reachable DVC remote still
matches data.dvc (`dvc status` is clean).
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

FILES = (
    "relations.tsv", "prose/statements.tsv", "prose/clauses.tsv", "prose/kinship.tsv", "surnames.txt",
    "given_male.txt", "given_female.txt", "chars_general_standard.txt", "annotated/examples.jsonl",
    "annotated/novels.jsonl", "gold.jsonl",
)


def packaged_data_dir():
    return resources.files("relsft") / "resources" / "data"


def init_data(data_dir: str | Path = "data", force: bool = False) -> list[Path]:
    """Write the packaged default inputs to `data_dir`. Existing different files are kept unless `force`."""
    d = Path(data_dir)
    d.mkdir(parents=True, exist_ok=True)
    written, kept = [], []
    for name in FILES:
        src, dst = packaged_data_dir() / name, d / name
        data = src.read_bytes()
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists() and dst.read_bytes() != data and not force:
            kept.append(dst)
            continue
        if not dst.exists() or dst.read_bytes() != data:
            with resources.as_file(src) as p:
                shutil.copyfile(p, dst)
            written.append(dst)
    if kept:
        print(f"kept {len(kept)} locally changed file(s) (use --force to overwrite): {', '.join(map(str, kept))}")
    return written
