"""The package layout holds: imports only run downward through the layers (lazy imports inside functions
included), the product never imports the evaluation harness, and the pure core never imports Dagster."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "quimbi_pipeline"
# Bottom to top; a package may import its own modules and those of any lower layer.
LAYERS = [
    {"settings"},
    {"runtime"},
    {"sources"},
    {"history"},
    {"model"},
    {"drift"},
    {"storage"},
    {"run"},
    {"evaluation", "defs", "api"},
    {"cli", "definitions"},
]
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer}
PURE = {"settings", "runtime", "sources", "history", "model", "drift", "storage", "run", "evaluation"}
# The product's entry points (the Dagster code location, the CLI, the API) never load the evaluation harness.
PRODUCT = {"settings", "runtime", "sources", "history", "model", "drift", "storage", "run", "defs", "api", "cli", "definitions"}


def _part(path: Path) -> str:
    """The top-level part of quimbi_pipeline a file belongs to (a subpackage, or a top module's name)."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) of every import of the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
            if node.module == "quimbi_pipeline":
                found += [(node.lineno, f"quimbi_pipeline.{a.name}") for a in node.names]
    return found


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_module_belongs_to_a_layer():
    assert {_part(p) for p in _modules()} <= set(LEVEL), "a new top-level package or module needs its layer here"


def test_imports_run_downward_only():
    upward = []
    for path in _modules():
        own = _part(path)
        for line, module in _imports(path):
            parts = module.split(".")
            if parts[0] != "quimbi_pipeline" or len(parts) < 2 or parts[1] == own:
                continue
            if LEVEL[parts[1]] > LEVEL[own] or (LEVEL[parts[1]] == LEVEL[own] and own not in ("cli", "definitions")):
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({own}) imports {module}")
    assert upward == []


def test_the_product_never_imports_the_evaluation_harness():
    found = [f"{p.relative_to(PACKAGE.parent)}:{line}" for p in _modules() if _part(p) in PRODUCT
             for line, module in _imports(p) if module.startswith("quimbi_pipeline.evaluation")]
    assert found == []


def test_the_pure_core_never_imports_dagster():
    found = [f"{p.relative_to(PACKAGE.parent)}:{line}" for p in _modules() if _part(p) in PURE
             for line, module in _imports(p) if module.split(".")[0].startswith("dagster")]
    assert found == []


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The walk finds lazy imports inside functions (what an upward import usually hides as)."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from quimbi_pipeline.storage import Warehouse\n    from quimbi_pipeline import run\n")
    assert [m for _, m in _imports(module)] == ["quimbi_pipeline.storage", "quimbi_pipeline", "quimbi_pipeline.run"]
