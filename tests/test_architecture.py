"""The import graph points one way (docs/architecture.md): no module imports from a layer above it.

Layers, bottom to top:
  0  the package root and its leaf modules (errors, limits, atomic, paths, argtypes; these may
     import each other)
  1  audio      (load/save, resample, click, bars and beats)
  2  engine     (the STAGE model and its decoder)
  3  bridge, train   (peers: neither imports the other)
  4  bench, eval   (the `stage-bridge bench` and `eval` commands; peers)
  5  cli        (the entry point)
Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "stage_bridge"
LAYERS = {
    "": 0, "errors": 0, "limits": 0, "atomic": 0, "paths": 0, "argtypes": 0,
    "audio": 1,
    "engine": 2,
    "bridge": 3, "train": 3,
    "bench": 4, "eval": 4,
    "cli": 5,
}


def _part(module: str) -> str:
    """`stage_bridge.engine.lm` -> `engine`; `stage_bridge` -> ``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _module_name(path: Path, root: Path = PACKAGE) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, absolute module) for every stage_bridge import in `path`, relative ones resolved."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
    return [(line, m) for line, m in found if m == "stage_bridge" or m.startswith("stage_bridge.")]


def upward_imports(root: Path = PACKAGE) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        here = _part(_module_name(path, root))
        for line, target in imports_of(path, root):
            there = _part(target)
            if LAYERS[there] > LAYERS[here] or (LAYERS[there] == LAYERS[here] > 0 and there != here):
                bad.append(f"{path.relative_to(root.parent)}:{line} ({here or 'root'}) imports {target} ({there})")
    return bad


def test_every_module_belongs_to_a_layer():
    parts = {_part(_module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert parts <= set(LAYERS), f"new top-level modules need a layer in this test: {sorted(parts - set(LAYERS))}"


def test_no_module_imports_from_a_layer_above_or_beside_it():
    assert upward_imports() == []


@pytest.mark.parametrize("where, source, flagged", [
    ("audio/x.py", "from ..bridge import jobs\n", True),          # up two layers
    ("engine/x.py", "from ..engine.lm import StageLM\n", False),  # same package
    ("audio/x.py", "from . import click\n", False),
    ("train/x.py", "def f():\n    from ..bridge.jobs import Job\n", True),  # beside it, lazily
    ("errors.py", "import stage_bridge.cli\n", True),
    ("cli.py", "from .engine.model import build_model\n", False),
])
def test_the_checker_sees_upward_and_sideways_imports(tmp_path, where, source, flagged):
    """The checker itself must flag a bad import (a test that cannot fail proves nothing)."""
    root = tmp_path / "stage_bridge"
    fake = root / where
    fake.parent.mkdir(parents=True)
    fake.write_text(source)
    assert bool(upward_imports(root)) is flagged
