"""CI and packaging: ``.ci/run`` runs the README's Quick start commands, and every package
the tests (and the examples and benchmarks they run) import is declared in setup.cfg."""
from __future__ import annotations

import ast
import configparser
import importlib.metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    """The lines of the README's Quick start code blocks that follow a numbered comment."""
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Quick start\s*$(.*?)(?=^## )", text, re.M | re.S).group(1)
    commands = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", section, re.M | re.S):
        lines = block.splitlines()
        commands += [line for comment, line in zip(lines, lines[1:])
                     if re.match(r"#\s*\d+\.\s", comment)]
    return commands


def test_ci_runs_the_readme_commands():
    commands = readme_commands()
    assert commands == ['pip install -e ".[torch]" && python examples/repghostnet.py',
                        'pip install -e ".[torch,test]" && python -m pytest -q']
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash to run .ci/run with")
    r = subprocess.run([bash, str(ROOT / ".ci" / "run"), "--print-commands"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == commands


def _requirement_name(line: str) -> str:
    return re.split(r"[\s<>=!~;\[]", line.strip(), maxsplit=1)[0]


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines()
    for extra in cfg["options.extras_require"].values():
        lines += extra.splitlines()
    return {_normalize(_requirement_name(line)) for line in lines if line.strip()}


def imported_modules(paths) -> dict[str, str]:
    """``{top-level module: a file that imports it}`` for ``import``/``from`` statements
    (anywhere in a file) and ``pytest.importorskip("...")`` calls."""
    found = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == "importorskip" and node.args
                  and isinstance(node.args[0], ast.Constant)):
                names = [node.args[0].value]
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_every_imported_package_is_declared():
    files = [p for d in ("tests", "examples", "benchmarks") for p in (ROOT / d).rglob("*.py")]
    local = {p.stem for p in files} | {"tests", "zoo", "reparam"}
    third_party = {m: f for m, f in imported_modules(files).items()
                   if m not in sys.stdlib_module_names and m not in local}
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for module, where in sorted(third_party.items()):
        # a module not installed here is taken to be its own distribution's name
        names = {_normalize(d) for d in distributions.get(module, [module])}
        if not names & declared():
            missing.append(f"{module} (imported by {where}; distribution {sorted(names)})")
    assert not missing, "not in setup.cfg's install_requires or extras: " + ", ".join(missing)
