"""Sphinx fixes for the klnotes book (loaded from _config.yml's ``local_extensions``).

- sphinx-thebe registers its configuration script twice, so every page threw
  ``Identifier 'THEBE_JS_URL' has already been declared``: each page keeps one copy of each script.
- sphinx-proof gives every ``{proof}`` block ``id="proof"`` (and theorem bodies ``id="proof-content"``):
  repeated ids on a page get a number (``proof-2``, ...), so every id is unique.
- ``static/klnotes.css``: long identifiers in text and API signatures wrap, and the general index
  stacks its columns, so that no page is wider than a 400 px phone screen.
- ``static/klnotes-search.js``: search result snippets show TeX as text ("∇θ log πθ"), not raw
  ``\\(\\nabla_\\theta ...\\)``.
- The theme's colour mode was unset (a console error on the first visit): it defaults to ``auto``.
- API reference (pages ``book/api/*``): the docstrings name the chapters' equations by label
  (``(eq-3-coefficient)``); each becomes a link showing the equation's number, "(3.1)", also inside
  formula blocks. Indented ASCII formula blocks and tables in docstrings (block quotes, which HTML
  reflows into one paragraph) are shown as preformatted blocks, and MyST's ``{cite:t}`key```
  becomes the reST role ``:cite:t:`key```.
- The bibliography's labels read like the text's citations, author-year ("Liu et al., 2025")
  instead of alpha keys ("LLCL25"): the pybtex style ``authoryear``.
"""

from __future__ import annotations

import re
from pathlib import Path

from docutils import nodes
from sphinx.util.nodes import make_refnode

_LABEL = re.compile(r"\(?\b(eq-\d+-[\w-]*\w)\)?")
_MYST_CITE = re.compile(r"\{cite(:[a-z]+)?\}`([^`]+)`")
_NOT_A_QUOTE = re.compile(r"^\s*(\.\. |:\w[^:]*:|[-*+] |\d+[.)] |>>> )")


def _static(app, config):
    config.html_static_path = list(config.html_static_path or []) + [
        str(Path(__file__).parent / "static")
    ]


def _one_search_box(app, config):
    """One search box, the sidebar's: no second copy in the header band above the page."""
    options = dict(config.html_theme_options or {})
    options["navbar_persistent"] = []
    config.html_theme_options = options


def _default_mode(app, config):
    context = dict(config.html_context or {})
    context.setdefault("default_mode", "auto")
    config.html_context = context


def _unique_scripts(app, pagename, templatename, context, doctree):
    seen, unique = set(), []
    for script in context.get("script_files", []):
        key = (
            str(getattr(script, "filename", script) or ""),  # None and "" both mean "inline"
            tuple(sorted((getattr(script, "attributes", None) or {}).items())),
        )
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"][:] = unique  # in place: later handlers (MathJax) still append to it


def _unique_ids(app, doctree, docname):
    if app.builder.format != "html":  # the PDF prefixes every id with its document's name already
        return  # (and renaming its ':doc' targets broke 153 chapter links)
    seen: dict[str, int] = {}
    for node in doctree.findall(nodes.Element):
        ids = node.get("ids")
        if not ids:
            continue
        fixed = []
        for i in ids:
            if i in seen:
                seen[i] += 1
                new = f"{i}-{seen[i]}"
                while new in seen:
                    seen[i] += 1
                    new = f"{i}-{seen[i]}"
                seen[new] = 1
                fixed.append(new)
            else:
                seen[i] = 1
                fixed.append(i)
        node["ids"] = fixed


def _docstring_blocks(app, what, name, obj, options, lines):
    """MyST citations -> reST; an indented block after a paragraph -> a literal block (``::``)."""
    for i, line in enumerate(lines):
        lines[i] = _MYST_CITE.sub(
            lambda m: f":cite:{(m.group(1) or ':p')[1:]}:`{m.group(2)}`", line
        )
    indent = lambda text: len(text) - len(text.lstrip())  # noqa: E731
    for i in range(1, len(lines) - 1):
        prev, blank, nxt = lines[i - 1], lines[i], lines[i + 1]
        if (
            blank.strip()
            or not prev.strip()
            or not nxt.strip()
            or indent(nxt) <= indent(prev)
            or prev.rstrip().endswith("::")
            or _NOT_A_QUOTE.match(prev)
        ):
            continue
        # the paragraph that ends at prev must not itself be a directive, field or list item
        j = i - 1
        while j > 0 and lines[j - 1].strip() and indent(lines[j - 1]) == indent(prev):
            j -= 1
        if _NOT_A_QUOTE.match(lines[j]):
            continue
        lines[i - 1] = prev.rstrip() + (":" if prev.rstrip().endswith(":") else " ::")


def _link_equation_labels(app, doctree, docname):
    """In the API pages, "(eq-3-coefficient)" -> a link "(3.1)" to the chapter's equation."""
    if not docname.startswith("book/api"):
        return
    env = app.env
    equations = env.get_domain("math").equations

    def number(label):
        target_doc, n = equations[label]
        node_id = f"equation-{label}"
        numbers = env.toc_fignumbers.get(target_doc, {}).get("displaymath", {}).get(node_id, ())
        return target_doc, node_id, "(" + (".".join(map(str, numbers)) or str(n)) + ")"

    for text in list(doctree.findall(nodes.Text)):
        parent = text.parent
        if parent is None or isinstance(parent, (nodes.math, nodes.math_block, nodes.reference)):
            continue
        source = str(text)
        pieces, last = [], 0
        for m in _LABEL.finditer(source):
            if m.group(1) not in equations:
                continue
            target_doc, node_id, shown = number(m.group(1))
            pieces.append(nodes.Text(source[last : m.start()]))
            pieces.append(
                make_refnode(app.builder, docname, target_doc, node_id, nodes.Text(shown))
            )
            last = m.end()
        if pieces:
            pieces.append(nodes.Text(source[last:]))
            parent.replace(
                text, [p for p in pieces if not (isinstance(p, nodes.Text) and not str(p))]
            )


def _names(entry) -> str:
    """ "Liu et al." / "Sutton and Barto" / "von Werra et al." / "DeepSeek-AI" for a pybtex entry."""
    persons = entry.persons.get("author") or entry.persons.get("editor") or []
    last = [
        " ".join(p.prelast_names + p.last_names).replace("{", "").replace("}", "") for p in persons
    ]
    if "others" in last:  # BibTeX's "and others"
        last = last[:1] + ["others", "others"]
    if not last:
        return entry.fields.get("organization", entry.key).replace("{", "").replace("}", "")
    if len(last) == 1:
        return last[0]
    if len(last) == 2:
        return f"{last[0]} and {last[1]}"
    return f"{last[0]} et al."


def _register_authoryear_style():
    from pybtex.plugin import register_plugin
    from pybtex.style.formatting.unsrt import Style as UnsrtStyle
    from pybtex.style.labels import BaseLabelStyle
    from pybtex.style.sorting import BaseSortingStyle

    class AuthorYearLabelStyle(BaseLabelStyle):
        """ "Liu et al., 2025"; "Schulman, 2020"; "Ouyang and Wu, 2022"; a/b suffixes if needed."""

        def format_labels(self, sorted_entries):
            labels = [
                f"{_names(entry)}, {entry.fields.get('year', 'n.d.')}" for entry in sorted_entries
            ]
            counts = {label: labels.count(label) for label in labels}
            seen: dict[str, int] = {}
            for label in labels:
                if counts[label] > 1:
                    seen[label] = seen.get(label, 0) + 1
                    yield label + "abcdefghijklmnopqrstuvwxyz"[seen[label] - 1]
                else:
                    yield label

    class AuthorYearSortingStyle(BaseSortingStyle):
        """In the order of the labels: first author's name, year, title."""

        def sorting_key(self, entry):
            return (
                _names(entry).lower(),
                entry.fields.get("year", ""),
                entry.fields.get("title", "").lower(),
            )

    class AuthorYearStyle(UnsrtStyle):
        default_label_style = AuthorYearLabelStyle
        default_sorting_style = AuthorYearSortingStyle

    register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle, force=True)


def setup(app):
    _register_authoryear_style()
    app.connect("config-inited", _default_mode)
    app.connect("config-inited", _one_search_box)
    app.connect("config-inited", _static)
    app.add_css_file("klnotes.css")
    app.add_js_file("klnotes-search.js")
    # early: html-page-context stops at the first handler that returns a template name
    app.connect("html-page-context", _unique_scripts, priority=100)
    app.connect("doctree-resolved", _unique_ids)
    app.connect("doctree-resolved", _link_equation_labels)
    app.connect("autodoc-process-docstring", _docstring_blocks, priority=600)  # after napoleon
    return {"parallel_read_safe": True, "parallel_write_safe": True}
