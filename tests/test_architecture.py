"""The house rules of docs/ARCHITECTURE.md, checked on the source: import
directions, no import cycles, and rooms small enough to read."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "shared", ROOT / "domains"]
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60

#: modules (by prefix) that a lower floor must never import: the LightningModule, the CLI, experiments, sweeps
HIGH_FLOORS = ("peftlab.model.module", "peftlab.module", "peftlab.cli", "peftlab.lightning_cli", "peftlab.experiment",
               "peftlab.sweep", "peftlab.callbacks", "peftlab.multi_adapter")
#: module prefixes -> the floors they must not import
LOW_FLOORS = {
    "peftlab.errors": HIGH_FLOORS, "peftlab.tasks": HIGH_FLOORS, "peftlab.backbone": HIGH_FLOORS,
    "peftlab.data": HIGH_FLOORS, "peftlab.persistence": HIGH_FLOORS + ("peftlab.persistence.adapter",),
    "peftlab.methods": HIGH_FLOORS, "peftlab.toy": HIGH_FLOORS, "peftlab.hub": HIGH_FLOORS,
    "peftlab.threads": HIGH_FLOORS,
    "peftlab_protein.backbones": HIGH_FLOORS, "peftlab_medical.backbones": HIGH_FLOORS,
    "peftlab_speech.backbones": HIGH_FLOORS, "peftlab_protein.data": HIGH_FLOORS,
    "peftlab_medical.data": HIGH_FLOORS, "peftlab_speech.data": HIGH_FLOORS,
}


def source_files() -> Iterator[tuple[str, Path]]:
    for base in SOURCES:
        for path in sorted(base.rglob("*.py")):
            if "recipes" in path.parts:
                continue
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join(parts), path


def imports(module: str, path: Path, top_level_only: bool) -> set[str]:
    """The peftlab modules ``module`` imports (``from a import b`` counts ``a`` and ``a.b``)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] == "peftlab" or m.split(".")[0].startswith("peftlab_")}


MODULES = dict(source_files())


def test_low_floors_never_import_high_ones():
    offenders = []
    for module, path in MODULES.items():
        for prefix, forbidden in LOW_FLOORS.items():
            if module == prefix or module.startswith(prefix + "."):
                bad = sorted(m for m in imports(module, path, top_level_only=False)
                             if any(m == f or m.startswith(f + ".") for f in forbidden) and not module.startswith(m))
                offenders += [f"{module} imports {m}" for m in bad]
    assert offenders == []


def test_the_core_never_imports_a_domain():
    offenders = [f"{module} imports {m}" for module, path in MODULES.items() if module.startswith("peftlab.")
                 or module == "peftlab" for m in imports(module, path, top_level_only=False)
                 if m.startswith("peftlab_")]
    assert offenders == []


def test_no_import_cycles_between_modules():
    known = set(MODULES)
    graph = {m: {i for i in imports(m, p, top_level_only=True) if i in known and i != m} for m, p in MODULES.items()}
    # a package's __init__ re-exporting its own submodules is not a cycle of those submodules
    graph = {m: {i for i in deps if not (m.startswith(i + ".") and MODULES[i].name == "__init__.py")}
             for m, deps in graph.items()}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep] if dep in stack else [node, dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_over_500_lines(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{MODULES[module].relative_to(ROOT)}: {lines} lines"


def test_no_function_over_60_lines():
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert long == []
