"""Nothing read from a config, manifest, download or results file is ever unpickled or evaluated.

The package, the built-in methods and the workflow's scripts are scanned (by syntax tree, so
comments and strings do not count): no pickle-family module, no ``eval``/``exec``, no
``yaml.load`` (``yaml.safe_load`` only), no ``allow_pickle=True``, no ``pandas.read_pickle``,
no ``shell=True``, and every ``torch.load`` passes ``weights_only=True``.  Plugins are imported
on purpose (``importlib``'s ``exec_module``), and run with the user's rights (README, "Adding a
method").
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*ROOT.glob("qsmbench/**/*.py"), *ROOT.glob("methods/**/*.py"), *ROOT.glob("workflow/scripts/*.py")])
WORKFLOW_TEXT = sorted([ROOT / "Snakefile", *ROOT.glob("workflow/rules/*.smk")])

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "jsonpickle"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def problems_in(source: str, filename: str) -> list[str]:
    """Every unsafe construct of one Python file, as 'file:line: what'."""
    found = []
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                if name.split(".")[0] in UNSAFE_MODULES:
                    found.append(f"{where}: imports {name}")
        if not isinstance(node, ast.Call):
            continue
        func = _dotted(node.func)
        if func in ("eval", "exec", "builtins.eval", "builtins.exec", "__import__"):
            found.append(f"{where}: calls {func}()")
        if func.endswith("yaml.load") or func.endswith("yaml.unsafe_load") or func.endswith("yaml.full_load"):
            found.append(f"{where}: {func}() can build arbitrary objects; use yaml.safe_load")
        if func.endswith("read_pickle") or func.endswith("joblib.load"):
            found.append(f"{where}: calls {func}() (unpickles)")
        allow = _keyword(node, "allow_pickle")
        if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
            found.append(f"{where}: {func}(allow_pickle=...) other than False")
        shell = _keyword(node, "shell")
        if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
            found.append(f"{where}: {func}(shell=...) runs a shell")
        if func == "torch.load" or func.endswith(".torch.load"):
            weights_only = _keyword(node, "weights_only")
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                found.append(f"{where}: torch.load without weights_only=True (would unpickle code)")
    return found


def test_the_scan_covers_the_code():
    names = {p.relative_to(ROOT).as_posix() for p in SOURCES}
    assert {"qsmbench/io.py", "qsmbench/runner.py", "qsmbench/datasets/extract.py",
            "workflow/scripts/reconstruct.py"} <= names
    assert any(n.startswith("methods/uqsm/") for n in names)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_unpickling_or_evaluation(path):
    assert problems_in(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix()) == []


@pytest.mark.parametrize("path", WORKFLOW_TEXT, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_workflow_rules_do_not_unpickle_or_evaluate(path):
    """Rules are not plain Python (the ast cannot read them): a text scan for the same names."""
    text = "\n".join(line.split("#", 1)[0] for line in path.read_text(encoding="utf-8").splitlines())
    pattern = (r"\b(pickle|dill|shelve|marshal|yaml\.load|yaml\.unsafe_load|read_pickle|allow_pickle)\b"
               r"|(?<![.\w])(eval|exec)\(")
    assert not re.search(pattern, text), path


@pytest.mark.parametrize("snippet,what", [
    ("import pickle\n", "imports pickle"),
    ("from dill import loads\n", "imports dill"),
    ("x = eval('1+1')\n", "calls eval()"),
    ("exec(code)\n", "calls exec()"),
    ("import yaml\nyaml.load(text, Loader=yaml.Loader)\n", "use yaml.safe_load"),
    ("import numpy as np\nnp.load(p, allow_pickle=True)\n", "allow_pickle"),
    ("import pandas as pd\npd.read_pickle(p)\n", "unpickles"),
    ("import torch\ntorch.load(p)\n", "torch.load without weights_only=True"),
    ("import torch\ntorch.load(p, weights_only=False)\n", "torch.load without weights_only=True"),
    ("import subprocess\nsubprocess.run(cmd, shell=True)\n", "runs a shell"),
])
def test_the_scanner_finds_each_construct(snippet, what):
    found = problems_in(snippet, "example.py")
    assert len(found) == 1 and what in found[0], found


@pytest.mark.parametrize("snippet", [
    "import torch\ntorch.load(p, map_location='cpu', weights_only=True)\n",
    "import yaml\nyaml.safe_load(text)\n",
    "import numpy as np\nnp.load(p)\nnp.load(p, allow_pickle=False)\n",
    "net.eval()\n",                        # torch's evaluation mode, not the builtin
    "spec.loader.exec_module(module)\n",   # how plugins are imported, on purpose
    "# eval(x) in a comment\ns = 'pickle'\n",
])
def test_the_scanner_accepts_safe_code(snippet):
    assert problems_in(snippet, "example.py") == []
