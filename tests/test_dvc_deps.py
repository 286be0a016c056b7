"""dvc.yaml declares, for every stage, all the relsft code it runs and every param it reads.

Both are derived from the source, not listed by hand: the stage's command is `relsft <name>`, the
CLI function behind it is read with `ast`, its imports are followed through the package (every
import in a module counts, a function-level one too: a superset, never a miss), and the params it
reads are the `params["section"]["key"]` subscripts in that function (a stage function never gets
`params` whole, so nothing is read out of sight). Editing what a stage runs must re-run it.
"""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

PACKAGE = ROOT / "src" / "relsft"
CLI = PACKAGE / "cli.py"


def module_file(name: str) -> Path:
    return PACKAGE / f"{name.replace('.', '/')}.py"


def relsft_imports(node: ast.AST, package: str = "") -> set[str]:
    """relsft modules imported anywhere under `node` (relative `from .x import` or absolute `relsft.x`)."""
    found = set()
    for n in ast.walk(node):
        if isinstance(n, ast.ImportFrom):
            if n.level == 1:
                found.add(n.module or "__init__")
            elif n.level == 0 and n.module and n.module.startswith("relsft."):
                found.add(n.module.removeprefix("relsft."))
        elif isinstance(n, ast.Import):
            found |= {a.name.removeprefix("relsft.") for a in n.names if a.name.startswith("relsft.")}
    return found


def module_level_imports(tree: ast.Module) -> set[str]:
    return relsft_imports(ast.Module(body=[s for s in tree.body if isinstance(s, (ast.Import, ast.ImportFrom))],
                                     type_ignores=[]))


def cli_function(command: str) -> ast.FunctionDef:
    tree = ast.parse(CLI.read_text(encoding="utf-8"))
    name = "cmd_" + command.replace("-", "_")
    return next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)


def code_of(command: str) -> set[str]:
    """Every relsft source file `relsft <command>` runs: cli.py's own imports, the command's, and theirs."""
    cli_tree = ast.parse(CLI.read_text(encoding="utf-8"))
    todo = module_level_imports(cli_tree) | relsft_imports(cli_function(command)) | {"__init__"}
    seen = {"cli"}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo |= relsft_imports(ast.parse(module_file(name).read_text(encoding="utf-8")))
    return {f"src/relsft/{n}.py" for n in seen}


def subscript_chain(node: ast.AST) -> list[ast.AST] | None:
    """params["a"]["b"] -> [params, "a", "b"] (keys as AST nodes); None if not a subscript chain on a name."""
    keys = []
    while isinstance(node, ast.Subscript):
        keys.append(node.slice)
        node = node.value
    return [node, *reversed(keys)] if isinstance(node, ast.Name) and keys else None


def params_read(command: str) -> set[str]:
    """`section` or `section.key` for each `params[...]` the command's function reads."""
    fn = cli_function(command)
    read = set()
    constants = {t.id: n.value for n in ast.parse(CLI.read_text(encoding="utf-8")).body if isinstance(n, ast.Assign)
                 for t in n.targets if isinstance(t, ast.Name)}
    loop_values = {}  # `{s: params[s] for s in SECTIONS}` with a constant tuple: s stands for each of them
    for n in ast.walk(fn):
        if isinstance(n, ast.comprehension) and isinstance(n.target, ast.Name):
            values = constants.get(n.iter.id) if isinstance(n.iter, ast.Name) else n.iter
            if isinstance(values, ast.Tuple):
                loop_values[n.target.id] = [e.value for e in values.elts]
    parents = {child: parent for parent in ast.walk(fn) for child in ast.iter_child_nodes(parent)}
    for n in ast.walk(fn):
        if not (isinstance(n, ast.Name) and n.id == "params"):
            continue
        outer = n
        while isinstance(parents.get(outer), ast.Subscript) and parents[outer].value is outer:
            outer = parents[outer]
        chain = subscript_chain(outer)
        if chain is None:
            raise AssertionError(f"cmd_{command} passes `params` whole: pass the sections it reads instead")
        first = chain[1]
        if isinstance(first, ast.Name) and first.id in loop_values:
            read |= set(loop_values[first.id])
            continue
        keys = [k.value for k in chain[1:3] if isinstance(k, ast.Constant)]
        assert len(keys) == len(chain[1:3]), f"cmd_{command}: params read with a key the test cannot follow"
        read.add(".".join(keys))
    return read


def stage_command(stage: dict) -> str:
    words = shlex.split(stage["cmd"])
    assert words[0] == "relsft", stage["cmd"]
    return words[1]


def declared_params(stage: dict) -> set[str]:
    """Keys of params.yaml, and keys listed under another params file (the recipe); a file listed
    without keys tracks all of it."""
    out = set()
    for p in stage.get("params", []):
        if not isinstance(p, dict):
            out.add(p)
            continue
        for file, keys in p.items():
            out |= set(keys) if keys else {""}
    return out


def covered(param: str, declared: set[str]) -> bool:
    parts = param.split(".")
    return "" in declared or any(".".join(parts[:i]) in declared for i in range(1, len(parts) + 1))


def missing_deps(dvc_yaml: dict) -> dict[str, list[str]]:
    missing = {}
    for name, stage in dvc_yaml["stages"].items():
        deps = set(stage.get("deps", []))
        command = stage_command(stage)
        lacks = sorted(f for f in code_of(command) if f not in deps and "src/relsft" not in deps)
        lacks += sorted(f"param {p}" for p in params_read(command) if not covered(p, declared_params(stage)))
        if "metric_path(" in "".join(module_file(m.removeprefix("src/relsft/").removesuffix(".py")).read_text()
                                     for m in code_of(command)) and "src/relsft/resources/metrics" not in deps:
            lacks.append("src/relsft/resources/metrics")
        if lacks:
            missing[name] = lacks
    return missing


def load_dvc_yaml() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))


def test_every_stage_declares_the_code_it_runs_and_the_params_it_reads():
    assert missing_deps(load_dvc_yaml()) == {}


@pytest.mark.parametrize("stage, dep", [("format", "src/relsft/relations.py"), ("train", "src/relsft/sampling.py"),
                                        ("merge", "src/relsft/generation.py")])
def test_removing_a_dep_is_caught(stage, dep):
    pipeline = load_dvc_yaml()
    pipeline["stages"][stage]["deps"].remove(dep)
    assert missing_deps(pipeline) == {stage: [dep]}


def test_an_undeclared_param_is_caught():
    pipeline = load_dvc_yaml()
    recipe = next(p for p in pipeline["stages"]["merge"]["params"] if isinstance(p, dict))
    recipe["recipes/${recipe}.yaml"].remove("evaluate.max_new_tokens")
    assert missing_deps(pipeline) == {"merge": ["param evaluate.max_new_tokens"]}


def test_the_instruction_is_a_dependency_of_every_stage_that_formats_or_reads_answers():
    needs = {name for name, stage in load_dvc_yaml()["stages"].items() if "src/relsft/relations.py" in stage["deps"]}
    assert {"format", "train", "evaluate", "merge"} <= needs
