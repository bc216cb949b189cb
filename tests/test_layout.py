"""The rules between shared/'s rooms (docs/architecture.md): light modules stay light, evaluation and the study keep
out of training, and no module-level import cycle."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

SHARED = REPO / "shared"
HEAVY = ("torch", "transformers", "peft", "mlflow", "datasets", "bitsandbytes", "deepspeed")
LIGHT = (
    "shared.cli",
    "shared.logs",
    "shared.options",
    "shared.outputs",
    "shared.model_source",
    "shared.precision",
    "shared.train.job",
    "shared.train.checks",
    "shared.data.records",
    "shared.data.formats",
    "shared.data.sources",
    "shared.track.redaction",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def shared_imports(path: Path, top_level_only: bool) -> set[str]:
    """The shared.* modules a file imports (every import, or only those run when the module loads)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("shared"):
            package = node.module
            found |= {
                f"{package}.{alias.name}"
                for alias in node.names
                if (SHARED.parent / package.replace(".", "/") / f"{alias.name}.py").exists()
            }
            found.add(package)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("shared")}
    return found


MODULES = {module_name(path): path for path in SHARED.rglob("*.py")}


def test_the_light_modules_import_nothing_heavy():
    code = (
        "import sys\n"
        f"for name in {LIGHT!r}: __import__(name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"light modules pulled in: {result.stdout}"


@pytest.mark.parametrize(
    ("room", "forbidden"),
    [
        ("shared.evaluate", ("shared.train",)),
        ("shared.model", ("shared.train", "shared.evaluate", "shared.track", "shared.study")),
        ("shared.data", ("shared.train", "shared.evaluate", "shared.track", "shared.study", "shared.model")),
        ("shared.track", ("shared.train", "shared.evaluate", "shared.study")),
        ("shared.study", ("shared.train", "shared.evaluate", "shared.model", "shared.data")),
    ],
)
def test_a_room_never_imports_what_it_must_not(room, forbidden):
    def inside(name: str, packages: tuple[str, ...]) -> bool:  # shared.model_source is not inside shared.model
        return any(name == package or name.startswith(package + ".") for package in packages)

    offending = {
        (name, imported)
        for name, path in MODULES.items()
        if inside(name, (room,))
        for imported in shared_imports(path, top_level_only=False)
        if inside(imported, forbidden)
    }
    assert offending == set()


def test_no_module_level_import_cycle():
    graph = {
        name: {m for m in shared_imports(path, top_level_only=True) if m in MODULES} for name, path in MODULES.items()
    }
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            pytest.fail("import cycle: " + " -> ".join([*trail[trail.index(name) :], name]))
        if name in done:
            return
        for imported in graph[name]:
            visit(imported, [*trail, name])
        done.add(name)

    for name in graph:
        visit(name, [])


def test_the_top_of_shared_keeps_at_most_eight_modules_and_each_room_says_its_rules():
    assert len([p for p in SHARED.glob("*.py") if p.name != "__init__.py"]) <= 8
    for room in [p for p in SHARED.iterdir() if (p / "__init__.py").exists()]:
        docstring = ast.get_docstring(ast.parse((room / "__init__.py").read_text()))
        assert docstring and "import" in docstring, f"{room.name}/__init__.py must say what it must not import"
