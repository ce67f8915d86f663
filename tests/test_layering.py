"""The package's import graph: no circles, and no import from a lower layer into a higher one.

Walks every module of `sam3_jax` with `ast` (imports inside functions count too, as do imports
under `if TYPE_CHECKING:`), resolves relative imports, and maps each imported name to the module
that defines it.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "sam3_jax"

# Sub-packages (first component under sam3_jax) that a sub-package must not import. `formats` (image
# and mask formats) and `layers` are the bottom; `data` may use `eval`'s ground-truth readers, `eval`
# nothing above it. Command-line modules (`__main__`) are entry points, above every layer.
FORBIDDEN = {
    "layers": {"model", "convert", "parallel", "predict", "data", "eval", "train", "parity", "formats"},
    "formats": {"layers", "model", "convert", "parallel", "predict", "data", "eval", "train", "parity"},
    "model": {"convert", "predict", "data", "eval", "train", "parity"},
    "convert": {"predict", "data", "eval", "train", "parity"},
    "parallel": {"convert", "predict", "data", "eval", "train", "parity"},
    "predict": {"data", "eval", "train", "parity"},
    "data": {"predict", "train", "parity"},
    "eval": {"predict", "data", "train", "parity"},
    "train": {"parity"},
}


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The package modules `name` imports (an imported attribute maps to its module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("sam3_jax"):
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_graph_is_found():
    graph = _graph()
    assert "sam3_jax.model.sam3_image" in graph and "sam3_jax.layers.core" in graph
    assert "sam3_jax.layers.core" in graph["sam3_jax.model.vit"]  # the walk does see imports


def test_no_import_circle():
    graph = _graph()
    # Package __init__ re-exports are edges too, but a package importing its own modules is not a
    # circle by itself; a module importing its own package's __init__ is.
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_import_upwards(layer):
    graph = _graph()
    bad = [f"{m} imports {t}" for m, ts in sorted(graph.items())
           if _layer(m) == layer and not m.endswith(".__main__")
           for t in sorted(ts) if _layer(t) in FORBIDDEN[layer]]
    assert not bad, "\n".join(bad)


def test_checker_catches_a_circle(tmp_path, monkeypatch):
    """The walk itself: a two-module circle in a scratch package is found."""
    pkg = tmp_path / "sam3_jax"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("from sam3_jax.a.y import f\n")
    (pkg / "a" / "y.py").write_text("def f():\n    from . import x\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    with pytest.raises(AssertionError, match="import circles"):
        test_no_import_circle()
