"""The seams of the package: no import cycles, no module using the private names of another."""

import ast
import importlib
from pathlib import Path

import pytest

import klnotes

PACKAGE = Path(__file__).resolve().parent.parent / "klnotes"
EXEMPT_PRIVATE: set[str] = set()


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(path: Path, name: str) -> list[tuple[str, str | None, bool]]:
    """``(module, imported name or None, at top level)`` for every klnotes import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = set(id(node) for node in tree.body)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [
                (a.name, None, id(node) in top) for a in node.names if a.name.startswith("klnotes")
            ]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + [base]
                ).strip(".")
            if base.startswith("klnotes"):
                for a in node.names:
                    full = f"{base}.{a.name}"
                    out.append(
                        (full, None, id(node) in top)
                        if full in MODULES
                        else (base, a.name, id(node) in top)
                    )
    return out


def test_no_import_cycles_between_modules_even_through_imports_inside_functions():
    graph = {
        name: {m for m, _, top in _imports(path, name) if m in MODULES and m != name}
        for name, path in MODULES.items()
    }
    # a package imports its submodules; a submodule importing its package back is the cycle to avoid
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("name", sorted(set(MODULES) - EXEMPT_PRIVATE))
def test_no_module_imports_another_modules_private_names(name):
    bad = []
    for module, imported, _ in _imports(MODULES[name], name):
        if (
            imported is not None
            and imported.startswith("_")
            and not imported.startswith("__")  # dunders (``__version__``) are public
            and not module.rsplit(".", 1)[-1].startswith("_")
        ):
            bad.append(f"{module}.{imported}")
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    aliases = {
        a.asname or a.name.rsplit(".", 1)[-1]: f"{getattr(n, 'module', '') or ''}.{a.name}".strip(
            "."
        )
        for n in ast.walk(tree)
        if isinstance(n, (ast.Import, ast.ImportFrom))
        for a in n.names
    }
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            target = aliases.get(node.value.id, "")
            if target.startswith("klnotes") and not target.rsplit(".", 1)[-1].startswith("_"):
                bad.append(f"{target}.{node.attr}")
    assert not bad, f"{name} uses private names of other modules: {sorted(set(bad))}"


@pytest.mark.parametrize("old, new", sorted(klnotes._FLAT_PATHS.items()))
def test_the_second_editions_flat_paths_import_the_folder_modules(old, new):
    """``import klnotes.exact`` and ``from klnotes import trainer`` (readers' code of the second edition)
    give the very module object of the folder path, so patching either patches both."""
    assert importlib.import_module(old) is importlib.import_module(new)
    name = old.rsplit(".", 1)[1]
    namespace: dict = {}
    exec(f"from klnotes import {name} as m", namespace)  # noqa: S102 - a literal import statement
    assert namespace["m"] is importlib.import_module(new)
