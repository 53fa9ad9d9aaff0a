"""The klnotes book's own Sphinx extension: its edition, a citation per chapter, the exercise index.

Everything here is generated from one place at build time, so that nothing is typed once per
chapter and nothing can go stale:

- the **edition** (``klnotes.__version__``, read from ``klnotes/__init__.py``), the build date and
  the commit are written in the footer of every HTML page and on the PDF's title page;
- every chapter listed in a numbered part of ``_toc.yml`` ends with a collapsed
  **"How to cite this chapter"** box holding a BibTeX ``@incollection`` entry whose number is the
  chapter's position in the toc and whose title is the notebook's own title (with or without a
  leading "N. ");
- the directive ``klnotes-exercise-index`` writes a table of every exercise of every chapter:
  its number, its question, and whether it has a code part.

The functions are pure (paths and strings in, strings out) and tested in
``tests/test_book_edition.py``; ``setup`` at the bottom wires them into Sphinx.
"""

from __future__ import annotations

import ast
import datetime as _dt
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK_TITLE = (
    "klnotes: {KL} Regularization in {RLHF}, from Value Estimation to Gradients. An Executable Book"
)
AUTHOR = "{The klnotes authors}"
CITE_CELL_ID = "klnotes-cite-this-chapter"
BIBLIOGRAPHY_DOC = "book/references"  # the page holding the {bibliography} directive
APPENDIX_PART = "Appendix"  # the toc caption of the back matter
LONG_TABLE_ROWS = 8  # results tables with more rows break across PDF pages
LATEX_CHAPTER_NUMBERS = r"""
% klnotes: equations, figures and tables numbered by chapter, (4.2), as on the web; at the
% beginning of the document, after sphinxlatexnumfig.sty has set its own numbering
\AtBeginDocument{\makeatletter
\renewcommand{\theequation}{\thechapter.\arabic{equation}}%
\renewcommand{\thefigure}{\thechapter.\arabic{figure}}%
\renewcommand{\thetable}{\thechapter.\arabic{table}}%
\makeatother}
% klnotes: no figure taller than 60% of the text block, so that a figure and its caption fit a
% page (a tall stacked figure was "Float too large" and its caption ran over the footer)
\AtBeginDocument{%
\let\klnotesIncludeGraphics\sphinxincludegraphics
\renewcommand{\sphinxincludegraphics}[2][]{\begingroup
  \setbox0\hbox{\klnotesIncludeGraphics[#1]{#2}}%
  \ifdim\ht0>0.6\textheight\resizebox{!}{0.6\textheight}{\box0}\else\box0\fi\endgroup}}
"""


# --- the edition ------------------------------------------------------------------------------


def read_version(init_file: Path = ROOT / "klnotes" / "__init__.py") -> str:
    """The ``__version__ = "..."`` string of ``init_file``, read without importing the package.

    Raises:
        ValueError: if the file assigns no string literal to ``__version__``.
    """
    tree = ast.parse(Path(init_file).read_text(encoding="utf-8"))
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "__version__"
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return node.value.value
    raise ValueError(f"{init_file} assigns no string literal to __version__")


def build_date(environ: dict | None = None) -> _dt.date:
    """Today's date in UTC, or the date of ``SOURCE_DATE_EPOCH`` when it is set (reproducible builds).

    Raises:
        ValueError: if ``SOURCE_DATE_EPOCH`` is not an integer number of seconds.
    """
    environ = os.environ if environ is None else environ
    epoch = environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        if not epoch.strip().isdigit():
            raise ValueError(f"SOURCE_DATE_EPOCH={epoch!r} is not a number of seconds since 1970")
        return _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc).date()
    return _dt.datetime.now(_dt.timezone.utc).date()


def git_commit(root: Path = ROOT) -> str | None:
    """The short hash of the checked-out commit, or None outside a git checkout (e.g. an sdist)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def book_url(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """The book's published address: ``Book = "..."`` under ``[project.urls]`` in pyproject.toml.

    Raises:
        ValueError: if pyproject.toml names no Book URL.
    """
    match = re.search(r'^Book\s*=\s*"([^"]+)"', Path(pyproject).read_text(encoding="utf-8"), re.M)
    if match is None:
        raise ValueError(f'{pyproject} has no `Book = "https://..."` line under [project.urls]')
    return match.group(1).rstrip("/")


def edition_footer(
    version: str, date: _dt.date, commit: str | None, changelog: str | None = None
) -> str:
    """The HTML line every page carries: edition (linked to the changelog), build date, commit."""
    edition = f"klnotes edition {version}"
    if changelog:
        edition += f' (<a href="{changelog}">what changed</a>)'
    built = f"built {date.isoformat()}" + (f" from commit <code>{commit}</code>" if commit else "")
    return f'<p class="klnotes-edition">{edition} &middot; {built}</p>'


# --- chapters: numbers from the toc, titles from the notebooks ---------------------------------


@dataclass(frozen=True)
class Chapter:
    """A numbered chapter: its docname (``book/03_unified_framework``) and toc position (3)."""

    docname: str
    number: int


def toc_chapters(toc_file: Path = ROOT / "_toc.yml") -> list[Chapter]:
    """The chapters of the numbered parts of ``_toc.yml``, numbered by their position.

    Numbering runs on across numbered parts, as the book's section numbers do.

    Raises:
        ValueError: if the toc has no numbered part.
    """
    toc = yaml.safe_load(Path(toc_file).read_text(encoding="utf-8"))
    files = [
        entry["file"]
        for part in toc.get("parts", [])
        if part.get("numbered")
        for entry in part.get("chapters", [])
        if "file" in entry
    ]
    if not files:
        raise ValueError(f"{toc_file} has no part with `numbered: true`; no chapter to number")
    return [Chapter(re.sub(r"\.(ipynb|md)$", "", f), i) for i, f in enumerate(files, start=1)]


def strip_number(title: str) -> str:
    """``"3. The unified framework"`` -> ``"The unified framework"``; titles without a number stay."""
    return re.sub(r"^\s*\d+(\.\d+)*\.?\s+", "", title).strip()


def notebook_cells(notebook: dict) -> list[tuple[str, str]]:
    """``(cell_type, source)`` for each cell of a notebook's JSON (sources joined if split in lines)."""
    return [
        (
            c.get("cell_type", ""),
            "".join(c["source"]) if isinstance(c.get("source"), list) else c.get("source", ""),
        )
        for c in notebook.get("cells", [])
    ]


def notebook_title(notebook: dict) -> str:
    """The text of the first level-1 heading of a notebook, without a leading chapter number.

    Raises:
        ValueError: if no markdown cell has a ``# `` heading.
    """
    for kind, source in notebook_cells(notebook):
        if kind == "markdown":
            for line in source.splitlines():
                if line.startswith("# "):
                    return strip_number(line[2:])
    raise ValueError("the notebook has no level-1 heading ('# Title') in a markdown cell")


def read_notebook(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def bibtex_escape(text: str) -> str:
    """Protect acronyms (KL, RLHF, GPT-2) from lower-casing and escape BibTeX's special characters."""
    text = re.sub(r"([&%#])", r"\\\1", text)
    words = []
    for word in text.split(" "):
        lead, core, trail = re.match(r"^(\W*)(.*?)([.,:;!?)]*)$", word).groups()
        if re.search(r"[A-Z0-9].*[A-Z0-9]|^.+[A-Z]", core):
            core = "{" + core + "}"
        words.append(lead + core + trail)
    return " ".join(words)


def chapter_bibtex(title: str, number: int, version: str, date: _dt.date, url: str) -> str:
    """The BibTeX ``@incollection`` entry for chapter ``number`` titled ``title`` of this edition.

    Raises:
        ValueError: if ``number`` is not a positive integer or ``title`` is empty.
    """
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise ValueError(f"chapter number must be a positive int, got {number!r}")
    if not strip_number(title):
        raise ValueError(f"chapter title {title!r} is empty once its number is removed")
    fields = [
        ("title", bibtex_escape(strip_number(title))),
        ("booktitle", BOOK_TITLE),
        ("chapter", str(number)),
        ("author", AUTHOR),
        ("edition", version),
        ("year", str(date.year)),
        ("url", url),
        ("urldate", date.isoformat()),
        ("note", f"Version {version}, built {date.isoformat()}"),
    ]
    width = max(len(k) for k, _ in fields)
    body = ",\n".join(f"  {k.ljust(width)} = {{{_wrap(v, width + 6)}}}" for k, v in fields)
    return f"@incollection{{klnotes{date.year}ch{number},\n{body}\n}}"


def _wrap(value: str, indent: int, width: int = 80) -> str:
    """Break a long field value between words so the entry fits a printed page."""
    lines, line = [], ""
    for word in value.split(" "):
        if line and indent + len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return ("\n" + " " * indent).join([*lines, line])


def citation_cell(bibtex: str) -> dict:
    """The markdown cell appended to a chapter: a collapsed box holding ``bibtex``."""
    source = (
        "````{admonition} How to cite this chapter\n:class: dropdown tip\n\n"
        f"```bibtex\n{bibtex}\n```\n\n"
        "Cite the paper the book builds on too; see {doc}`/book/cite`.\n````\n"
    )
    return {"cell_type": "markdown", "id": CITE_CELL_ID, "metadata": {}, "source": source}


def with_citation(notebook_json: str, number: int, version: str, date: _dt.date, url: str) -> str:
    """A notebook's JSON text with the citation cell appended (the file on disk is not touched)."""
    notebook = json.loads(notebook_json)
    bib = chapter_bibtex(notebook_title(notebook), number, version, date, url)
    notebook["cells"] = [c for c in notebook["cells"] if c.get("id") != CITE_CELL_ID]
    notebook["cells"].append(citation_cell(bib))
    return json.dumps(notebook, ensure_ascii=False)


# --- exercises --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exercise:
    """One exercise: its number in the chapter, its statement, its solution, whether it has code."""

    number: int
    statement: str
    solution: str

    @property
    def has_code(self) -> bool:
        """True when the reader runs or writes code: the statement shows a call, an assignment or
        a ``module.name``, or the solution shows a call."""
        in_statement = any(
            re.search(r"[(=]|\w\.\w", span) for span in re.findall(r"`([^`]+)`", self.statement)
        )
        in_solution = any("(" in span for span in re.findall(r"`([^`]+)`", self.solution))
        return in_statement or in_solution


def exercises(notebook: dict) -> list[Exercise]:
    """The exercises of a chapter: the numbered items of its ``## Exercises`` section.

    The section runs from the heading to the next level-1 or level-2 heading, across cells. An
    item's statement is its first paragraph; its solution is the ``{admonition} Solution`` block
    that follows it. Numbered lists inside fenced blocks are not exercises.
    """
    lines: list[str] = []
    inside = False
    for kind, source in notebook_cells(notebook):
        if kind != "markdown":
            continue
        for line in source.splitlines():
            if re.match(r"^#{1,2} ", line):
                inside = line.strip() == "## Exercises"
                continue
            if inside:
                lines.append(line)
        lines.append("")
    items: list[dict] = []
    fence: str | None = None
    for line in lines:
        opening = re.match(r"^\s*(`{3,}|:{3,})", line)
        if fence is None and opening:
            fence = opening.group(1)
            if items and "Solution" in line:
                items[-1]["in_solution"] = True
            continue
        if fence is not None:
            if line.strip() == fence:
                fence = None
                if items:
                    items[-1]["in_solution"] = False
            elif items and items[-1].get("in_solution"):
                if items[-1]["solution"] or not re.match(r"^:\w+:", line):  # skip options
                    items[-1]["solution"].append(line)
            continue
        start = re.match(r"^(\d+)\.\s+(.*)", line)
        if start:
            items.append(
                {
                    "number": int(start.group(1)),
                    "statement": [start.group(2)],
                    "solution": [],
                    "open": True,
                }
            )
        elif items and items[-1]["open"]:
            if line.strip():
                items[-1]["statement"].append(line.strip())
            else:
                items[-1]["open"] = False
    return [
        Exercise(it["number"], " ".join(it["statement"]), "\n".join(it["solution"]).strip())
        for it in items
    ]


def first_sentence(text: str) -> str:
    """Text up to the first '.' or '?' that ends a sentence, outside math ($...$) and code (`...`)."""
    quote: str | None = None
    for i, ch in enumerate(text):
        if ch in "$`":
            quote = None if quote == ch else (ch if quote is None else quote)
        elif quote is None and ch in ".?" and (i + 1 == len(text) or text[i + 1] == " "):
            return text[: i + 1]
    return text


def question(statement: str, shortest: int = 60) -> str:
    """The exercise's question for the index: its first sentence, or its first two when the
    first is shorter than ``shortest`` characters ("verl accepts both placements at once.")."""
    first = first_sentence(statement)
    if len(first) < shortest and len(first) < len(statement):
        return (first + " " + first_sentence(statement[len(first) :].lstrip())).strip()
    return first


def exercise_rows(chapters: list[tuple[Chapter, str, list[Exercise]]]) -> list[tuple[str, ...]]:
    """One row per exercise: chapter (a MyST link), exercise number, question, "yes"/"no" code."""
    return [
        (
            f"{chapter.number}. {{doc}}`{title} </{chapter.docname}>`",
            str(ex.number),
            question(ex.statement),
            "yes" if ex.has_code else "no",
        )
        for chapter, title, items in chapters
        for ex in items
    ]


def exercise_index(chapters: list[tuple[Chapter, str, list[Exercise]]]) -> str:
    """A MyST list-table of every exercise (a long table in the PDF, so it breaks across pages)."""
    lines = [
        ":::{list-table}",
        ":header-rows: 1",
        ":widths: 24 8 56 12",
        ":class: longtable",
        "",
        "* - chapter",
        "  - exercise",
        "  - question",
        "  - code part",
    ]
    for row in exercise_rows(chapters):
        lines += [f"* - {row[0]}", *(f"  - {cell}" for cell in row[1:])]
    return "\n".join([*lines, ":::"]) + "\n"


def book_exercises(root: Path = ROOT) -> list[tuple[Chapter, str, list[Exercise]]]:
    """Every numbered chapter of the toc with its title and exercises."""
    out = []
    for chapter in toc_chapters(root / "_toc.yml"):
        nb = read_notebook(root / f"{chapter.docname}.ipynb")
        out.append((chapter, notebook_title(nb), exercises(nb)))
    return out


def needs_aligned(latex: str) -> bool:
    """True when a display equation has a line with more than one alignment ``&`` (``\\&`` is
    a literal ampersand) and no environment of its own, which LaTeX's ``split`` rejects."""
    if r"\begin{" in latex:
        return False
    return any(len(re.findall(r"(?<!\\)&", line)) > 1 for line in re.split(r"\\\\", latex))


# --- Sphinx wiring ----------------------------------------------------------------------------


def _on_config_inited(app, config) -> None:
    version = read_version(Path(app.srcdir) / "klnotes" / "__init__.py")
    date = build_date()
    config.version = config.release = version
    config.today = date.isoformat()
    if not config.html_baseurl:
        config.html_baseurl = book_url(Path(app.srcdir) / "pyproject.toml") + "/"
    config.html_theme_options = dict(config.html_theme_options or {})
    repository = config.html_theme_options.get("repository_url")
    changelog = f"{repository.rstrip('/')}/blob/main/CHANGELOG.md" if repository else None
    config.html_theme_options["extra_footer"] = edition_footer(
        version, date, git_commit(Path(app.srcdir)), changelog
    )
    # The PDF edition with the few TeX Live packages the README lists: makeindex instead of
    # xindy, and a two-line bbm (see _ext/latex/bbm.sty) instead of texlive-fonts-extra.
    config.latex_use_xindy = False
    config.latex_elements = dict(config.latex_elements or {})
    config.latex_elements["preamble"] = (
        config.latex_elements.get("preamble", "") + LATEX_CHAPTER_NUMBERS
    )
    config.latex_elements["releasename"] = "Edition"  # the title page: "Edition 0.1.0"
    config.latex_additional_files = [
        *config.latex_additional_files,
        str(ROOT / "_ext" / "latex" / "bbm.sty"),
    ]
    app.klnotes_edition = (version, date)
    app.klnotes_secnum_depth = config.numfig_secnum_depth
    app.klnotes_chapters = {c.docname: c for c in toc_chapters(Path(app.srcdir) / "_toc.yml")}


def _on_source_read(app, docname: str, source: list[str]) -> None:
    chapter = app.klnotes_chapters.get(docname)
    if chapter is None or not str(app.env.doc2path(docname)).endswith(".ipynb"):
        return
    version, date = app.klnotes_edition
    url = f"{app.config.html_baseurl.rstrip('/')}/{docname}.html"
    source[0] = with_citation(source[0], chapter.number, version, date, url)


def _on_builder_inited(app) -> None:
    """Number theorems in the PDF as on the web (Theorem 4.2, not 4.2.1).

    With several parts in the toc, sphinx-jupyterbook-latex sets ``numfig_secnum_depth`` to 2
    (its levels start at the part, so that equations are numbered by chapter), which also numbers
    theorems by section. The book's own depth is kept, and ``LATEX_CHAPTER_NUMBERS`` numbers
    equations, figures and tables by chapter in LaTeX itself.
    """
    if app.builder.name == "latex":
        app.config.numfig_secnum_depth = app.klnotes_secnum_depth


def _on_env_get_outdated(app, env, added, changed, removed) -> list[str]:
    """Re-read every chapter when the edition or the date changed since the cached build."""
    stamp = app.klnotes_edition
    if getattr(env, "klnotes_edition", None) == stamp:
        return []
    env.klnotes_edition = stamp
    return [d for d in app.klnotes_chapters if d in env.found_docs]


def setup(app):
    from docutils import nodes
    from docutils.statemachine import StringList
    from sphinx.transforms.post_transforms import SphinxPostTransform
    from sphinx.util.docutils import SphinxDirective

    class DropRemoteImages(SphinxPostTransform):
        """In the PDF, drop images that live on the web (the Colab badges): the build is offline
        and a badge is a link to click, which paper cannot do. Runs before Sphinx's downloader."""

        default_priority = 50
        builders = ("latex",)

        def run(self, **kwargs) -> None:
            for image in list(self.document.findall(nodes.image)):
                if "://" in image["uri"]:
                    target = image.parent if isinstance(image.parent, nodes.reference) else image
                    target.parent.remove(target)

    class AlignedMathForLatex(SphinxPostTransform):
        """In the PDF, let display math with several alignment columns compile.

        Sphinx's LaTeX writer puts every display equation in ``split``, which allows one ``&``
        per line; MathJax accepts more (``a &= b &&\\text{note}``, as in the API page's
        docstrings) but LaTeX stops with "Extra alignment tab". Such an equation is wrapped in
        ``aligned``, which nests inside ``split`` as a single cell. The web page is unchanged.
        """

        default_priority = 50
        builders = ("latex",)

        def run(self, **kwargs) -> None:
            for node in list(self.document.findall(nodes.math_block)):
                if node.get("nowrap"):
                    continue
                text = node.astext()
                if needs_aligned(text):
                    node.replace(node[0], nodes.Text(r"\begin{aligned}" + text + r"\end{aligned}"))

    class ChapterNamesForProofs(SphinxPostTransform):
        """In the PDF, let sphinx-proof find each theorem's chapter, so that it keeps its number.

        sphinx-proof (0.4) looks for the enclosing chapter by comparing the chapter's title, as
        the environment stores it, with the section's names; a title with an apostrophe (chapter
        9's "framework's") is stored with a typographic quote and never matches, and the theorem
        came out unnumbered with an undefined label. Adding the stored title to the names of
        every chapter's section makes the comparison succeed.
        """

        default_priority = 50
        builders = ("latex",)

        def run(self, **kwargs) -> None:
            for node in self.document.findall(nodes.Element):
                docname = node.get("docname")
                if docname and docname in self.env.titles and "names" in node:
                    title = self.env.titles[docname].astext().lower()
                    if title not in node["names"]:
                        node["names"].append(title)

    class ProofTitlesForLatex(SphinxPostTransform):
        """In the PDF, give every proof box its title.

        sphinx-proof writes a proof as an admonition without a title and puts "Proof. " at the
        start of its first paragraph; LaTeX then draws an empty title bar above it. The word
        moves into the title bar; the web page is unchanged.
        """

        default_priority = 50
        builders = ("latex",)

        def run(self, **kwargs) -> None:
            for node in list(self.document.findall(nodes.admonition)):
                if "proof" not in node["classes"] or (
                    node.children and isinstance(node[0], nodes.title)
                ):
                    continue
                first = next(node.findall(nodes.Text), None)
                if first is None:
                    continue
                match = re.match(r"^(\w+)\.\s*", first.astext())
                if match:
                    first.parent.replace(first, nodes.Text(first.astext()[match.end() :]))
                node.insert(0, nodes.title("", match.group(1) if match else "Proof"))

    class LongTablesForLatex(SphinxPostTransform):
        """In the PDF, a results table longer than ``LONG_TABLE_ROWS`` rows is a ``longtable``,
        which breaks across pages; a plain ``tabulary`` cannot and ran over the page footer."""

        default_priority = 50
        builders = ("latex",)

        def run(self, **kwargs) -> None:
            for table in self.document.findall(nodes.table):
                rows = sum(1 for _ in table.findall(nodes.row))
                if "klnotes-table" in table["classes"] and rows > LONG_TABLE_ROWS + 1:
                    if "longtable" not in table["classes"]:
                        table["classes"].append("longtable")

    class BackMatterForLatex(SphinxPostTransform):
        """In the PDF, the appendix and the bibliography are a book's back matter.

        The toc's "Appendix" part starts with LaTeX's ``\\appendix`` (its chapters are lettered
        A, B, ...), and the bibliography page, whose entries sphinx-jupyterbook-latex moves to the
        end of the book as an unnumbered "Bibliography", leaves no empty numbered chapter behind.
        """

        default_priority = 800  # after sphinx-jupyterbook-latex (700) made the parts
        builders = ("latex",)

        def run(self, **kwargs) -> None:
            from sphinx import addnodes

            for start in list(self.document.findall(addnodes.start_of_file)):
                if start.get("docname") == BIBLIOGRAPHY_DOC:
                    keep = [
                        n for n in start.findall(nodes.Element) if n.tagname == "thebibliography"
                    ]
                    for bib in keep:
                        bib.parent.remove(bib)
                    start.parent.replace(start, keep) if keep else start.parent.remove(start)
                elif start.get("docname") == APPENDIX_PART:
                    start.parent.insert(
                        start.parent.index(start), nodes.raw("", "\\appendix\n", format="latex")
                    )

    class ExerciseIndex(SphinxDirective):
        """``{klnotes-exercise-index}``: the table of every exercise, read from the notebooks."""

        def run(self):
            root = Path(self.env.srcdir)
            for chapter in toc_chapters(root / "_toc.yml"):
                self.env.note_dependency(str(root / f"{chapter.docname}.ipynb"))
            text = exercise_index(book_exercises(root))
            container = nodes.container()
            self.state.nested_parse(StringList(text.splitlines()), self.content_offset, container)
            return container.children

    app.connect("config-inited", _on_config_inited)
    app.connect("source-read", _on_source_read)
    app.connect("env-get-outdated", _on_env_get_outdated)
    app.connect("builder-inited", _on_builder_inited, priority=900)
    app.add_directive("klnotes-exercise-index", ExerciseIndex)
    app.add_post_transform(DropRemoteImages)
    app.add_post_transform(ChapterNamesForProofs)
    app.add_post_transform(AlignedMathForLatex)
    app.add_post_transform(ProofTitlesForLatex)
    app.add_post_transform(BackMatterForLatex)
    app.add_post_transform(LongTablesForLatex)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
