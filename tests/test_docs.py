"""Every public name of the package is documented, and every chapter equation it cites exists.

Public names are those in a module's ``__all__``: functions and classes need their own docstring,
constants a ``#:`` comment above their assignment (what Sphinx's autodoc shows on the API pages).
Equation labels (``eq-<chapter>-<name>``) cited anywhere in a module's docstrings or comments must
be defined in a chapter (``$$ ... $$ (eq-...)``), and ``:eq:`` links must name such a label.
"""

import ast
import importlib
import importlib.util
import inspect
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "klnotes"
LABEL = re.compile(r"\beq-\d+-[a-z0-9-]*[a-z0-9]")


def _module_names() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if any(p.startswith("_") and p != "__init__" for p in parts) or parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


MODULES = _module_names()
EXEMPT: set[str] = set()


def book_labels() -> set[str]:
    """Equation labels defined in the chapters: ``$$ ... $$ (eq-...)``."""
    labels = set()
    for path in sorted((ROOT / "book").glob("*.ipynb")):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            if cell["cell_type"] == "markdown":
                labels.update(re.findall(r"\$\$\s*\((eq-[\w-]+)\)", "".join(cell["source"])))
    return labels


def book_targets() -> set[str]:
    """Figure and section labels defined in the chapters: ``(sec-...)=``, and the ``name`` of a
    figure cell whose stored output holds its image (the book is built from stored outputs)."""
    targets = set()
    for path in sorted((ROOT / "book").glob("*.ipynb")):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            source = "".join(cell["source"])
            if cell["cell_type"] == "markdown":
                targets.update(re.findall(r"^\((sec-[\w-]+)\)=", source, re.M))
            else:
                name = cell.get("metadata", {}).get("mystnb", {}).get("figure", {}).get("name")
                drawn = any(  # a figure label exists only where the stored output holds the image
                    key.startswith("image/")
                    for out in cell.get("outputs", [])
                    for key in out.get("data", {})
                )
                if name and drawn:
                    targets.add(name)
    return targets


def _constants(module) -> tuple[set[str], set[str]]:
    """Module-level names assigned in the module, and those of them right below a ``#:`` comment."""
    source = inspect.getsource(module)
    lines = source.splitlines()
    out, assigned = set(), set()
    for node in ast.parse(source).body:
        targets = []
        if isinstance(node, ast.Assign):
            for t in node.targets:
                targets += [
                    e.id
                    for e in (t.elts if isinstance(t, ast.Tuple) else [t])
                    if isinstance(e, ast.Name)
                ]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            targets = [node.target.id]
        assigned.update(targets)
        if targets and node.lineno >= 2 and lines[node.lineno - 2].lstrip().startswith("#:"):
            out.update(targets)
    return assigned, out


def test_the_book_defines_equation_labels():
    labels = book_labels()
    assert len(labels) > 30 and "eq-3-coefficient" in labels


@pytest.mark.parametrize("name", MODULES)
def test_every_module_has_a_docstring_and_an_all(name):
    module = importlib.import_module(name)
    assert (module.__doc__ or "").strip(), f"{name} has no module docstring"
    assert isinstance(getattr(module, "__all__", None), (list, tuple)), f"{name} has no __all__"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what the module does not define: {missing}"


@pytest.mark.parametrize("name", sorted(set(MODULES) - EXEMPT))
def test_every_public_name_is_documented(name):
    module = importlib.import_module(name)
    assigned, constants = _constants(module)
    undocumented = []
    for public in module.__all__:
        obj = getattr(module, public)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            doc = (
                obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
            )  # not inherited
            if not (doc or "").strip():
                undocumented.append(public)
        elif getattr(obj, "__module__", None) and inspect.ismodule(obj) is False and callable(obj):
            continue  # an instance of a documented class (its class carries the docstring)
        elif (
            public in assigned and public not in constants
        ):  # re-exported constants: documented where defined
            undocumented.append(public)
    # names re-exported from another module are documented there
    undocumented = [
        n for n in undocumented if getattr(getattr(module, n), "__module__", name) in (name, None)
    ]
    assert not undocumented, (
        f"{name}: undocumented public names (a docstring, or '#:' above): {undocumented}"
    )


@pytest.mark.parametrize("name", MODULES)
def test_cited_equation_labels_exist_in_the_book(name):
    module = importlib.import_module(name)
    source = inspect.getsource(module)
    labels = book_labels()
    cited = set(LABEL.findall(source))
    unknown = sorted(cited - labels)
    assert not unknown, f"{name} cites equation labels no chapter defines: {unknown}"
    linked = set(re.findall(r":eq:`(eq-[\w-]+)`", source))
    assert linked <= labels, f"{name} links to unknown equations: {sorted(linked - labels)}"


@pytest.mark.parametrize("name", MODULES)
def test_cited_figures_sections_and_chapters_exist_in_the_book(name):
    source = inspect.getsource(importlib.import_module(name))
    refs = set(re.findall(r":(?:numref|ref):`(?:[^`<]*<)?((?:fig|sec)-[\w-]+)>?`", source))
    unknown = sorted(refs - book_targets())
    assert not unknown, f"{name} cites figures or sections no chapter defines: {unknown}"
    pages = set(re.findall(r":doc:`(?:[^`<]*<)?/([\w/]+)>?`", source))
    missing = sorted(
        p for p in pages if not any((ROOT / f"{p}{ext}").is_file() for ext in (".ipynb", ".md"))
    )
    assert not missing, f"{name} links to chapter pages that do not exist: {missing}"


def _coverage_script():
    spec = importlib.util.spec_from_file_location(
        "doc_coverage", ROOT / "scripts" / "doc_coverage.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["doc_coverage"] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_doc_coverage_counts_are_computed_from_the_docstrings():
    coverage = _coverage_script()
    rows = {r.name: r for r in coverage.coverage(["klnotes.core.coefficients"])}
    # a known documented function: formula rendered, chapter equation cited
    assert rows["closed_form"].documented and rows["closed_form"].formula
    assert {"eq-3-coefficient", "eq-3-in-reward", "eq-3-as-loss"} <= set(
        rows["closed_form"].equations
    )
    assert "STYLES" not in rows  # constants are not functions or classes

    def bare(x):
        return x

    def with_math(x):
        """Twice: :math:`2x` (:eq:`eq-3-coefficient`), figure :numref:`fig-3-coefficients`."""
        return 2 * x

    empty, full = coverage.row("m", "bare", bare), coverage.row("m", "with_math", with_math)
    assert (empty.documented, empty.formula, empty.links) == (False, False, ())
    assert full.formula and full.equations == ("eq-3-coefficient",)
    assert full.links == ("eq-3-coefficient", "fig-3-coefficients")
    counts = coverage.totals([empty, full, rows["closed_form"]])
    assert counts == {"total": 3, "documented": 2, "formula": 2, "equation": 2, "link": 2}


def _rst_problems(text: str) -> list[str]:
    """docutils' warnings and errors for ``text`` after napoleon's Google-style conversion (Sphinx's
    own roles and directives stand in as plain ones): what would break the API pages (``-W``)."""
    from docutils import nodes, utils
    from docutils.core import publish_doctree
    from docutils.parsers.rst import Directive, directives, roles
    from sphinx.ext.napoleon import Config
    from sphinx.ext.napoleon.docstring import GoogleDocstring

    def role(name, rawtext, text, lineno, inliner, options=None, content=None):
        return [nodes.literal(rawtext, utils.unescape(text))], []

    class Generic(Directive):
        optional_arguments, final_argument_whitespace, has_content = 10, True, True
        option_spec = {
            "type": directives.unchanged,
            "value": directives.unchanged,
            "no-index": directives.flag,
            "noindex": directives.flag,
        }

        def run(self):
            node = nodes.container()
            self.state.nested_parse(self.content, self.content_offset, node)
            return [node]

    for name in (
        "eq",
        "func",
        "data",
        "class",
        "mod",
        "meth",
        "attr",
        "ref",
        "exc",
        "obj",
        "cite:t",
        "cite:p",
        "doc",
        "numref",
    ):
        roles.register_local_role(name, role)
    directives.register_directive("attribute", Generic)
    converted = str(GoogleDocstring(text, Config(napoleon_use_rtype=False)))
    doc = publish_doctree(
        converted, settings_overrides={"report_level": 5, "halt_level": 5, "warning_stream": False}
    )
    return [
        m.astext().splitlines()[0] for m in doc.findall(nodes.system_message) if m["level"] >= 2
    ]


@pytest.mark.parametrize("name", sorted(set(MODULES) - EXEMPT))
def test_public_docstrings_are_valid_restructuredtext(name):
    module = importlib.import_module(name)
    problems = {}
    for public in module.__all__:
        obj = getattr(module, public)
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and getattr(
            obj, "__module__", None
        ) == name:
            found = _rst_problems(inspect.getdoc(obj) or "")
            if found:
                problems[public] = found
    assert not problems, f"{name}: docstrings that do not parse as reStructuredText: {problems}"


FOLDERS = ("core", "analysis", "gpt2")  # folders of modules; each module in them has its own page


def _has_page(name: str) -> bool:
    parts = name.split(".")
    if len(parts) == 2:
        return parts[1] not in FOLDERS
    return len(parts) == 3 and parts[1] in FOLDERS


@pytest.mark.parametrize("name", [m for m in MODULES if _has_page(m)])
def test_every_module_has_an_api_page_in_the_table_of_contents(name):
    page = ROOT / "book" / "api" / f"{name.rsplit('.', 1)[1]}.md"
    assert page.is_file(), f"{name} has no API page {page.relative_to(ROOT)}"
    assert f".. automodule:: {name}" in page.read_text(encoding="utf-8")
    toc = (ROOT / "_toc.yml").read_text(encoding="utf-8")
    assert f"book/api/{page.stem}" in toc, f"{page.relative_to(ROOT)} is not in _toc.yml"


def _unbalanced_math(doc: str) -> list[str]:
    """The ``:math:`` roles and ``.. math::`` blocks of ``doc`` whose braces do not balance
    (escaped ``\\{``/``\\}`` aside): MathJax renders some of them anyway, LaTeX (the PDF) stops."""
    pieces = re.findall(r":math:`([^`]*)`", doc)
    pieces += [m.group(1) for m in re.finditer(r"\.\. math::(.*?)(?:\n\s*\n|$)", doc, re.S)]
    bad = []
    for piece in pieces:
        depth, low = 0, 0
        for ch in re.sub(r"\\[{}]", "", piece):
            depth += (ch == "{") - (ch == "}")
            low = min(low, depth)
        if depth or low < 0:
            bad.append(piece)
    return bad


def test_unbalanced_math_is_found():
    assert _unbalanced_math(r"x :math:`\sqrt{a/n` y") == [r"\sqrt{a/n"]
    assert _unbalanced_math(r":math:`\{a\} + \frac{1}{2}`") == []


def test_docstring_math_has_balanced_braces():
    """Every formula in a docstring of the package (module, class, function) balances its braces:
    one ``\\sqrt{`` left open stopped the PDF edition's LaTeX run."""
    bad = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                found = _unbalanced_math(ast.get_docstring(node, clean=False) or "")
                if found:
                    bad[f"{path.relative_to(ROOT)}:{getattr(node, 'name', '<module>')}"] = found
    assert not bad, f"formulas with unbalanced braces: {bad}"
