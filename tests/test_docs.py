"""Every public name of the package is documented, and every chapter equation it cites exists.

Public names are those in a module's ``__all__``: functions and classes need their own docstring,
constants a ``#:`` comment above their assignment (what Sphinx's autodoc shows on the API pages).
Equation labels (``eq-<chapter>-<name>``) cited anywhere in a module's docstrings or comments must
be defined in a chapter (``$$ ... $$ (eq-...)``), and ``:eq:`` links must name such a label.
"""

import ast
import importlib
import inspect
import json
import re
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
