"""Dependencies point one way: cli/commands -> pipeline -> export, targets -> edgeprune.
Read from the source with `ast` (every import, at any depth, function-level ones included), so a
hidden upward import fails here rather than as an import cycle on some later day."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> the top-level modules it must never import
FORBIDDEN = {
    "edgeprune": {"export", "targets", "pipeline", "commands", "cli"},
    "export": {"targets", "pipeline", "commands", "cli"},
    "targets": {"export", "pipeline", "commands", "cli", "torch", "norse"},
    "pipeline": {"commands", "cli"},
}


def _imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_one_way(package):
    sources = ([ROOT / f"{package}.py"] if (ROOT / f"{package}.py").is_file()
               else sorted((ROOT / package).rglob("*.py")))
    assert sources, f"no sources under {package}/"
    bad = [f"{src.relative_to(ROOT)}:{line} imports {name}"
           for src in sources for line, name in _imports(src)
           if name.split(".")[0] in FORBIDDEN[package]]
    assert not bad, "\n".join(bad)


def test_the_check_sees_function_level_imports(tmp_path):
    """The walk must find an import buried in a function (as the old pipeline's were)."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    if True:\n        from export.stage import export\n")
    assert [n for _, n in _imports(src)] == ["export.stage"]
