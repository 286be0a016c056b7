"""dvc.yaml declares, for every stage, exactly the relsft code it runs and every param it reads.

Both are derived from the source, not listed by hand: a stage's command is `python -m
relsft.stages.<name>`, its module's imports are followed through the package (every import in a
module counts, a function-level one too, and a module's parent packages), and the params it reads are
the `params["section"]["key"]` subscripts in that module (a stage never passes `params` whole, so
nothing is read out of sight). Editing what a stage runs must re-run it; editing anything else must not.
"""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest
import yaml

from helpers import ROOT

SRC = ROOT / "src"
# Declared on purpose beyond the code a stage runs: the prompts train learns are format's, so editing the
# instruction shows train as changed in `dvc status` at once, not only after format re-ran.
DELIBERATE = {"train": {"src/relsft/relations.py"}}


def module_path(module: str) -> Path:
    """relsft.x.y -> src/relsft/x/y.py, or the package's __init__.py."""
    base = SRC / module.replace(".", "/")
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def package_of(module: str) -> str:
    return module if module_path(module).name == "__init__.py" else module.rsplit(".", 1)[0]


def imported(module: str) -> set[str]:
    """relsft modules that `module` imports anywhere (relative or absolute), with their parent packages."""
    found = set()
    for n in ast.walk(ast.parse(module_path(module).read_text(encoding="utf-8"))):
        if isinstance(n, ast.ImportFrom):
            if n.level:
                anchor = package_of(module).split(".")
                target = ".".join(anchor[: len(anchor) - n.level + 1] + ([n.module] if n.module else []))
            elif n.module and n.module.split(".")[0] == "relsft":
                target = n.module
            else:
                continue
            found.add(target)
            # `from . import name` / `from .pkg import sub`: a submodule is imported too
            found |= {f"{target}.{a.name}" for a in n.names if module_path(f"{target}.{a.name}").exists()}
        elif isinstance(n, ast.Import):
            found |= {a.name for a in n.names if a.name.split(".")[0] == "relsft"}
    with_parents = set()
    for m in found:
        parts = m.split(".")
        with_parents |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return with_parents


def stage_module(stage: dict) -> str:
    words = shlex.split(stage["cmd"])
    assert words[:2] == ["python", "-m"] and words[2].startswith("relsft.stages."), stage["cmd"]
    return words[2]


def code_of(module: str) -> set[str]:
    """Every relsft source file that running `module` can execute."""
    todo, seen = {module, *imported(module)}, set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo |= imported(name)
    return {module_path(m).relative_to(ROOT).as_posix() for m in seen}


def subscript_chain(node: ast.AST) -> list[ast.AST] | None:
    """params["a"]["b"] -> [params, "a", "b"] (keys as AST nodes); None if not a subscript chain on a name."""
    keys = []
    while isinstance(node, ast.Subscript):
        keys.append(node.slice)
        node = node.value
    return [node, *reversed(keys)] if isinstance(node, ast.Name) and keys else None


def params_read(module: str) -> set[str]:
    """`section` or `section.key` for each `params[...]` the stage module reads."""
    tree = ast.parse(module_path(module).read_text(encoding="utf-8"))
    read = set()
    constants = {t.id: n.value for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                 if isinstance(t, ast.Name)}
    loop_values = {}  # `{s: params[s] for s in SECTIONS}` with a constant tuple: s stands for each of them
    for n in ast.walk(tree):
        if isinstance(n, ast.comprehension) and isinstance(n.target, ast.Name):
            values = constants.get(n.iter.id) if isinstance(n.iter, ast.Name) else n.iter
            if isinstance(values, ast.Tuple):
                loop_values[n.target.id] = [e.value for e in values.elts]
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    for n in ast.walk(tree):
        if not (isinstance(n, ast.Name) and n.id == "params"):
            continue
        if isinstance(parents.get(n), ast.arg) or isinstance(parents.get(n), ast.arguments):
            continue
        outer = n
        while isinstance(parents.get(outer), ast.Subscript) and parents[outer].value is outer:
            outer = parents[outer]
        chain = subscript_chain(outer)
        if chain is None:
            raise AssertionError(f"{module} passes `params` whole: pass the sections it reads instead")
        first = chain[1]
        if isinstance(first, ast.Name) and first.id in loop_values:
            read |= set(loop_values[first.id])
            continue
        keys = [k.value for k in chain[1:3] if isinstance(k, ast.Constant)]
        assert len(keys) == len(chain[1:3]), f"{module}: params read with a key the test cannot follow"
        read.add(".".join(keys))
    return read


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


def dep_errors(dvc_yaml: dict) -> dict[str, list[str]]:
    """Per stage: code it runs but does not declare, code it declares but does not run, params it misses."""
    errors = {}
    for name, stage in dvc_yaml["stages"].items():
        module = stage_module(stage)
        declared = {d for d in stage.get("deps", []) if d.startswith("src/relsft/") and d.endswith(".py")}
        runs = code_of(module)
        if any("metric_path(" in (ROOT / f).read_text(encoding="utf-8") for f in runs):
            runs.add("src/relsft/resources/metrics")
            declared |= {d for d in stage["deps"] if d == "src/relsft/resources/metrics"}
        wrong = [f"missing {f}" for f in sorted(runs - declared)]
        wrong += [f"not run {f}" for f in sorted(declared - runs - DELIBERATE.get(name, set()))]
        wrong += [f"param {p}" for p in sorted(params_read(module)) if not covered(p, declared_params(stage))]
        if wrong:
            errors[name] = wrong
    return errors


def load_dvc_yaml() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))


def test_every_stage_declares_exactly_the_code_it_runs_and_the_params_it_reads():
    assert dep_errors(load_dvc_yaml()) == {}


@pytest.mark.parametrize("stage, dep", [("format", "src/relsft/relations.py"), ("train", "src/relsft/sampling.py"),
                                        ("merge", "src/relsft/decoding.py"), ("base", "src/relsft/builtin/circuit.py")])
def test_removing_a_dep_is_caught(stage, dep):
    pipeline = load_dvc_yaml()
    pipeline["stages"][stage]["deps"].remove(dep)
    assert dep_errors(pipeline) == {stage: [f"missing {dep}"]}


def test_a_dep_on_code_the_stage_does_not_run_is_caught():
    pipeline = load_dvc_yaml()
    pipeline["stages"]["evaluate"]["deps"].append("src/relsft/cli.py")
    assert dep_errors(pipeline) == {"evaluate": ["not run src/relsft/cli.py"]}


def test_an_undeclared_param_is_caught():
    pipeline = load_dvc_yaml()
    recipe = next(p for p in pipeline["stages"]["merge"]["params"] if isinstance(p, dict))
    recipe["recipes/${recipe}.yaml"].remove("evaluate.max_new_tokens")
    assert dep_errors(pipeline) == {"merge": ["param evaluate.max_new_tokens"]}


def test_the_instruction_is_a_dependency_of_every_stage_that_formats_or_reads_answers():
    needs = {name for name, stage in load_dvc_yaml()["stages"].items() if "src/relsft/relations.py" in stage["deps"]}
    assert {"format", "train", "evaluate", "merge"} <= needs


def test_no_stage_runs_the_user_commands_and_evaluate_runs_no_generator_code():
    stages = load_dvc_yaml()["stages"]
    for name, stage in stages.items():
        assert "src/relsft/cli.py" not in code_of(stage_module(stage)), name
    assert not [f for f in code_of(stage_module(stages["evaluate"])) if "synthetic" in f or "builtin" in f]


def test_only_the_builtin_package_imports_the_circuit_or_the_tokenizer_trainer():
    importers = set()
    for path in (SRC / "relsft").rglob("*.py"):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        if imported(module) & {"relsft.builtin.circuit", "relsft.builtin.tokenizer"}:
            importers.add(module)
    assert importers and all(m.startswith("relsft.builtin") for m in importers), importers
