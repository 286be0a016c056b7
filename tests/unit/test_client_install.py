"""`relsft[client]` is openai and the parser: importing the client must pull in nothing heavy."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ["torch", "transformers", "dvc", "dvclive", "prefect", "great_expectations", "vllm", "datasets", "peft"]

# An import hook that fails any heavy import, as a venv without them would.
BLOCKER = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HEAVY!r}:
            raise ImportError("blocked heavy import: " + name)
sys.meta_path.insert(0, Block())
"""


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True, text=True)


def test_the_client_and_the_parser_import_without_the_training_stack():
    proc = python("from relsft.client import RelationClient\nfrom relsft.relations import parse_output\n"
                  "c = RelationClient('http://127.0.0.1:9/v1', api_key='k')\n"
                  "print(parse_output('韩立-紫灵:朋友').relations[0].rel)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "朋友"


def test_the_blocker_does_block():
    proc = python("import relsft.train, relsft.decoding\nrelsft.decoding.load_for_inference('x')")
    assert proc.returncode != 0 and "blocked heavy import: torch" in proc.stderr


def test_relsft_extract_runs_outside_a_project_without_the_training_stack(tmp_path):
    proc = subprocess.run([sys.executable, "-c", BLOCKER + "import sys\nfrom relsft.cli import main\n"
                           "sys.exit(main(['extract', '韩立与紫灵是师徒关系。', '--url', 'http://127.0.0.1:9/v1', "
                           "'--api-key', 'k']))"], cwd=tmp_path, capture_output=True, text=True)
    # No server there: a one-line error, not a traceback, and no heavy import on the way.
    assert proc.returncode == 1 and "relsft extract: error: http://127.0.0.1:9/v1" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
