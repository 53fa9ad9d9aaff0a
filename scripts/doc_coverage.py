"""How far the package's docstrings read like the book: a row per public function and class.

    python scripts/doc_coverage.py            # the totals, then one line per module
    python scripts/doc_coverage.py --names    # and one line per public name

Public names are those in a module's ``__all__`` that the module itself defines (a re-exported
name is counted once, where it is defined). For each function and class it records whether it has
its own docstring, whether that docstring renders a formula (``:math:`` or ``.. math::``), and
which chapter labels it cites: equation labels (``eq-<chapter>-<name>``, linked with ``:eq:``),
figure and section labels (``fig-…``, ``sec-…``) and chapter pages (``:doc:`/book/…```).

The rows are computed from the imported modules each time (:func:`coverage`); nothing is stored.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "klnotes"
EQUATION = re.compile(r"\beq-\d+-[a-z0-9-]*[a-z0-9]")
FIGURE_OR_SECTION = re.compile(r"\b(?:fig|sec)-\d+-[a-z0-9-]*[a-z0-9]")
CHAPTER_PAGE = re.compile(r":doc:`[^`<]*<?(/book/\d\d_[a-z0-9_]+)>?`")
MATH = re.compile(r":math:`|\.\. math::")


@dataclass(frozen=True)
class Row:
    """One public function or class: its module and name, and what its docstring holds."""

    module: str
    name: str
    documented: bool
    formula: bool
    equations: tuple[str, ...]
    links: tuple[str, ...]  # every chapter label or page cited (equations included)


def module_names(package: Path = PACKAGE) -> list[str]:
    """Dotted names of the package's public modules (no ``_private`` module, no ``__main__``)."""
    names = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if any(p.startswith("_") and p != "__init__" for p in parts) or parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def row(module: str, name: str, obj: object) -> Row:
    """The :class:`Row` of one function or class from its own docstring (not an inherited one)."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    doc = doc or ""
    equations = tuple(sorted(set(EQUATION.findall(doc))))
    others = set(FIGURE_OR_SECTION.findall(doc)) | set(CHAPTER_PAGE.findall(doc))
    return Row(
        module=module,
        name=name,
        documented=bool(doc.strip()),
        formula=bool(MATH.search(doc)),
        equations=equations,
        links=tuple(sorted(set(equations) | others)),
    )


def coverage(modules: list[str] | None = None) -> list[Row]:
    """A :class:`Row` for every public function and class of ``modules`` (default: all)."""
    rows = []
    for module_name in module_names() if modules is None else modules:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if getattr(obj, "__module__", None) != module_name:
                continue  # re-exported: counted where it is defined
            rows.append(row(module_name, name, obj))
    return rows


def totals(rows: list[Row]) -> dict[str, int]:
    """Counts over ``rows``: total, documented, with a formula, citing an equation, with a link."""
    return {
        "total": len(rows),
        "documented": sum(r.documented for r in rows),
        "formula": sum(r.formula for r in rows),
        "equation": sum(bool(r.equations) for r in rows),
        "link": sum(bool(r.links) for r in rows),
    }


def _line(label: str, t: dict[str, int]) -> str:
    return (
        f"{label:<36} {t['total']:>5} {t['documented']:>5} {t['formula']:>5} "
        f"{t['equation']:>5} {t['link']:>5}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", action="store_true", help="one line per public name")
    parser.add_argument("modules", nargs="*", help="dotted module names (default: all)")
    args = parser.parse_args(argv)
    rows = coverage(args.modules or None)
    print(f"{'':<36} {'names':>5} {'doc':>5} {'math':>5} {'eq':>5} {'link':>5}")
    print(_line("all public functions and classes", totals(rows)))
    for module in dict.fromkeys(r.module for r in rows):
        print(_line(module, totals([r for r in rows if r.module == module])))
        if args.names:
            for r in rows:
                if r.module == module:
                    flags = ("doc " if r.documented else "--- ") + (
                        "math " if r.formula else "---- "
                    )
                    print(f"    {r.name:<32} {flags} {' '.join(r.links)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
