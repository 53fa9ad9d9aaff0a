"""The book's edition, its per-chapter citations and its exercise index (``_ext/klnotes_book.py``).

The citation boxes are generated at build time; these tests check the generator against the toc
and the notebooks themselves, so a renumbered or renamed chapter cannot get a wrong citation.
"""

import datetime as dt
import json
import re
import sys
from pathlib import Path

import pytest
import yaml

import klnotes

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "_ext"))
import klnotes_book as kb  # noqa: E402  (the book's Sphinx extension, a plain module)

DATE = dt.date(2026, 11, 29)


def numbered_toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [c["file"] for part in toc["parts"] if part.get("numbered") for c in part["chapters"]]


def notebook(*markdown_cells):
    return {
        "cells": [
            {"cell_type": "markdown", "id": f"c{i}", "metadata": {}, "source": s}
            for i, s in enumerate(markdown_cells)
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def unbrace(text):
    return text.replace("{", "").replace("}", "")


def bib_field(entry, name):
    match = re.search(rf"^\s*{name}\s*= \{{((?:[^{{}}]|\{{[^{{}}]*\}})*)\}}", entry, re.M)
    assert match, f"no {name} field in {entry}"
    return " ".join(match.group(1).split())


# --- the edition ---------------------------------------------------------------------------


def test_version_is_written_once_and_every_citation_carries_it():
    version = klnotes.__version__
    assert kb.read_version() == version
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^dynamic = \["version"\]', pyproject, re.M)
    assert 'version = { attr = "klnotes.__version__" }' in pyproject
    assert not re.search(r'^version\s*=\s*"', pyproject, re.M), "a second version in pyproject.toml"
    assert yaml.safe_load((ROOT / "CITATION.cff").read_text())["version"] == version
    assert json.loads((ROOT / ".zenodo.json").read_text())["version"] == version
    for name in ("README.md", "book/cite.md"):
        text = (ROOT / name).read_text()
        assert f"version      = {{{version}}}" in text, name
        assert f"Version {version}" in text, name
    assert re.search(rf"^## .*\b{re.escape(version)}\b", (ROOT / "CHANGELOG.md").read_text(), re.M)


def test_version_is_read_without_importing(tmp_path):
    init = tmp_path / "__init__.py"
    init.write_text('import torch_that_does_not_exist\n__version__ = "9.8.7"\n')
    assert kb.read_version(init) == "9.8.7"
    init.write_text("__version__ = compute()\n")
    with pytest.raises(ValueError, match="__version__"):
        kb.read_version(init)


def test_build_date_follows_source_date_epoch():
    assert kb.build_date({"SOURCE_DATE_EPOCH": "1764374400"}) == dt.date(2025, 11, 29)
    assert kb.build_date({}) == dt.datetime.now(dt.timezone.utc).date()
    with pytest.raises(ValueError, match="SOURCE_DATE_EPOCH"):
        kb.build_date({"SOURCE_DATE_EPOCH": "yesterday"})


def test_footer_names_edition_date_and_commit():
    footer = kb.edition_footer("1.2.3", DATE, "abc1234", "https://x/CHANGELOG.md")
    assert "edition 1.2.3" in footer and "2026-11-29" in footer and "abc1234" in footer
    assert 'href="https://x/CHANGELOG.md"' in footer
    assert "commit" not in kb.edition_footer("1.2.3", DATE, None)
    assert "href" not in kb.edition_footer("1.2.3", DATE, None)


def test_book_url_is_the_pyproject_one():
    assert kb.book_url() == "https://klnotes.github.io/klnotes"


# --- chapter citations against the toc --------------------------------------------------------


def test_chapter_numbers_are_toc_positions():
    chapters = kb.toc_chapters()
    files = numbered_toc_files()
    assert [c.docname for c in chapters] == [re.sub(r"\.ipynb$", "", f) for f in files]
    assert [c.number for c in chapters] == list(range(1, len(files) + 1))


@pytest.mark.parametrize("chapter", kb.toc_chapters(), ids=lambda c: c.docname)
def test_citation_box_matches_the_chapter(chapter):
    path = ROOT / f"{chapter.docname}.ipynb"
    nb = json.loads(path.read_text())
    heading = next(
        line[2:]
        for cell in nb["cells"]
        if cell["cell_type"] == "markdown"
        for line in "".join(cell["source"]).splitlines()
        if line.startswith("# ")
    )
    written_number = re.match(r"^(\d+)\.\s", heading)
    if written_number:  # a title that still carries its number must carry the toc's
        assert int(written_number.group(1)) == chapter.number, heading
    url = f"https://klnotes.github.io/klnotes/{chapter.docname}.html"
    built = json.loads(kb.with_citation(path.read_text(), chapter.number, "0.1.0", DATE, url))
    assert built["cells"][:-1] == nb["cells"], "the chapter's own cells must not change"
    box = "".join(built["cells"][-1]["source"])
    assert box.startswith("````{admonition} How to cite this chapter\n:class: dropdown")
    entry = box[box.index("@incollection") : box.index("\n}\n") + 2]
    assert bib_field(entry, "chapter") == str(chapter.number)
    assert (
        unbrace(bib_field(entry, "title")) == heading[written_number.end() :].strip()
        if written_number
        else heading.strip()
    )
    assert bib_field(entry, "edition") == "0.1.0" and bib_field(entry, "url") == url
    assert entry.count("{") == entry.count("}")


def test_long_fields_are_wrapped_between_words():
    entry = kb.chapter_bibtex("T", 1, "0.1.0", DATE, "u")
    assert max(len(line) for line in entry.splitlines()) <= 80
    assert bib_field(entry, "booktitle") == kb.BOOK_TITLE


def test_title_with_or_without_number_gives_the_same_citation():
    a = kb.chapter_bibtex("3. The unified framework", 3, "0.1.0", DATE, "u")
    b = kb.chapter_bibtex("The unified framework", 3, "0.1.0", DATE, "u")
    assert a == b and "title     = {The unified framework}" in a


def test_citation_is_appended_once():
    source = json.dumps(notebook("# 2. Title\n\ntext"))
    once = kb.with_citation(source, 2, "0.1.0", DATE, "u")
    twice = kb.with_citation(once, 2, "0.1.0", DATE, "u")
    assert once == twice and len(json.loads(once)["cells"]) == 2


def test_bibtex_protects_acronyms_and_rejects_bad_numbers():
    assert kb.bibtex_escape("GPT-2, gradients & KL") == "{GPT-2}, gradients \\& {KL}"
    assert (
        kb.bibtex_escape("In practice: framework's KL flag") == "In practice: framework's {KL} flag"
    )
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="positive int"):
            kb.chapter_bibtex("T", bad, "0.1.0", DATE, "u")
    with pytest.raises(ValueError, match="empty"):
        kb.chapter_bibtex("7. ", 7, "0.1.0", DATE, "u")


def test_toc_without_numbered_part_is_an_error(tmp_path):
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: intro\nparts:\n  - caption: A\n    chapters:\n      - file: a\n"
    )
    with pytest.raises(ValueError, match="numbered"):
        kb.toc_chapters(tmp_path / "_toc.yml")


# --- exercises ----------------------------------------------------------------------------


def test_exercise_parser():
    nb = notebook(
        "# 1. T\n\n## Exercises\n\n1. Compute `f(x)`. Then more.\n   Second line.\n\n"
        "```{admonition} Solution\n:class: dropdown\n1. not an exercise\n2. nor this\n```\n\n"
        "2. Why? Think.\n",
        "```{admonition} Solution\n:class: dropdown\nIn code: `g(1)`.\n```\n\n"
        "3. A `name` only.\n\n## Summary\n\n1. not an exercise either\n",
    )
    ex = kb.exercises(nb)
    assert [e.number for e in ex] == [1, 2, 3]
    assert ex[0].statement == "Compute `f(x)`. Then more. Second line."
    assert ex[0].solution == "1. not an exercise\n2. nor this"
    assert [e.has_code for e in ex] == [True, True, False]
    assert kb.first_sentence(ex[0].statement) == "Compute `f(x)`."
    assert (
        kb.first_sentence("At $x = 0. y$ and `a. b` here. Next") == "At $x = 0. y$ and `a. b` here."
    )


@pytest.mark.parametrize("chapter", kb.toc_chapters(), ids=lambda c: c.docname)
def test_every_chapter_has_numbered_exercises_with_solutions(chapter):
    nb = json.loads((ROOT / f"{chapter.docname}.ipynb").read_text())
    ex = kb.exercises(nb)
    assert [e.number for e in ex] == list(range(1, len(ex) + 1)) and ex
    assert all(e.statement and e.solution for e in ex)
    markdown = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    section = markdown[markdown.index("## Exercises") :]
    section = section[: section.index("## Summary")] if "## Summary" in section else section
    assert section.count("{admonition} Solution") == len(ex)


def test_exercise_index_lists_every_exercise():
    chapters = kb.book_exercises()
    rows = kb.exercise_rows(chapters)
    assert len(rows) == sum(len(items) for _, _, items in chapters)
    for chapter, title, items in chapters:
        numbers = [
            r[1] for r in rows if r[0] == f"{chapter.number}. {{doc}}`{title} </{chapter.docname}>`"
        ]
        assert numbers == [str(e.number) for e in items]
    assert {r[3] for r in rows} == {"yes", "no"}
    table = kb.exercise_index(chapters)
    assert table.count("\n* - ") == len(rows) + 1 and ":class: longtable" in table
    assert all(f"  - {r[2]}\n" in table for r in rows)


def test_question_is_long_enough_to_say_what_is_asked():
    assert (
        kb.question("Short one. The real question is here?")
        == "Short one. The real question is here?"
    )
    long = "A first sentence that is long enough to stand on its own as a question. More."
    assert kb.question(long) == long[: long.index(" More.")]


def test_course_guide_is_in_the_toc_and_holds_the_index():
    toc = (ROOT / "_toc.yml").read_text()
    assert "file: book/course" in toc
    assert "```{klnotes-exercise-index}" in (ROOT / "book" / "course.md").read_text()


def test_course_guide_names_only_sections_that_exist():
    """The lecture paths name sections in quotes; a renamed section must not leave them stale.
    Quoted names of implementations ("$k_2$ as loss") are not sections."""
    headings = {
        line.lstrip("#").strip()
        for chapter in kb.toc_chapters()
        for kind, source in kb.notebook_cells(
            json.loads((ROOT / f"{chapter.docname}.ipynb").read_text())
        )
        if kind == "markdown"
        for line in source.splitlines()
        if line.startswith(("## ", "### ", "#### "))
    }
    headings |= {
        line.lstrip("#").strip()
        for line in (ROOT / "README.md").read_text().splitlines()
        if line.startswith("## ")
    }
    # Quotes inside code (`check("3.2", ...)`) and HTML attributes (slide links) are not section names.
    guide = re.sub(r"```.*?```", "", (ROOT / "book" / "course.md").read_text(), flags=re.DOTALL)
    guide = re.sub(r"`[^`\n]*`|<[^>\n]+>", "", guide)
    quoted = re.findall(r'"([^"\n]+)"', guide)
    sections = [q for q in quoted if "$k_" not in q]
    assert len(sections) >= 10
    # a heading may go on after the name the guide quotes ("From your own configuration: ...")
    assert [q for q in sections if not any(h == q or h.startswith(q + ":") for h in headings)] == []


def test_equations_with_several_alignment_columns_are_wrapped_for_latex():
    assert kb.needs_aligned(r"a &= b &&\text{note} \\ c &= d &&\text{more}")
    assert not kb.needs_aligned(r"a &= b \\ c &= d")
    assert not kb.needs_aligned(r"a \& b \& c")
    assert not kb.needs_aligned(r"\begin{aligned} a &= b && c \end{aligned}")


# --- the PDF edition (scripts/check_book.py pdf) ---------------------------------------------

sys.path.insert(0, str(ROOT / "scripts"))
import check_book  # noqa: E402


def test_empty_chapters_are_found_and_parts_are_not_chapters():
    body = "\\sphinxAtStartPar\n" + "Words of a real chapter. " * 20
    tex = (
        "\\part{Chapters}\n\\chapter{One}\n\\label{x}"
        + body
        + "\\chapter{Bibliography}\n\\label{y}\n"
        "\\appendix\\part{Appendix}\n\\chapter{Two}" + body
    )
    assert check_book.empty_chapters(tex) == ["Bibliography"]


def test_object_reprs_are_recognised():
    text = "Table 2.1\n <pandas.io.formats.style.Styler at 0x7f37d6f73d90>\n<IPython.core.display.HTML object>\n"
    found = [m.group(0) for m in check_book._OBJECT_REPR.finditer(text)]
    assert found == [
        "<pandas.io.formats.style.Styler at 0x7f37d6f73d90>",
        "<IPython.core.display.HTML object>",
    ]
    assert not check_book._OBJECT_REPR.search("a < b and c > d; <https://example.org>")


def test_stored_outputs_hold_no_build_machine_path_and_no_object_repr():
    """What a notebook shows was computed on some machine; its folders must not leak into the book
    (a reader's path differs), and a display must have a rich form, not an object's repr."""
    bad = re.compile(r"(?<![\w.])/(?:work|home|root|tmp|Users|private|mnt|scratch)/[\w.-]+")
    problems = []
    for path in sorted((ROOT / "book").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            for out in cell.get("outputs", []):
                text = "".join(out.get("text", "")) + "".join(
                    "".join(v) if isinstance(v, list) else str(v)
                    for k, v in out.get("data", {}).items()
                    if k.startswith("text/")
                )
                for m in bad.finditer(text):
                    problems.append(
                        f"{path.name} cell {cell.get('id')}: absolute path {m.group(0)!r}"
                    )
                for m in check_book._OBJECT_REPR.finditer(text):
                    problems.append(
                        f"{path.name} cell {cell.get('id')}: object repr {m.group(0)!r}"
                    )
    assert not problems, "\n".join(problems)


def test_stored_outputs_match_their_cells():
    """As far as it can be checked without running: a cell that prints has stream output, a cell
    whose code displays a table has a table output, a cell with no code has no output, and no
    stored output is an error."""
    problems = []
    for path in sorted((ROOT / "book").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] != "code":
                continue
            src, outs = "".join(cell["source"]), cell.get("outputs", [])
            kinds = {o["output_type"] for o in outs}
            where = f"{path.name} cell {cell.get('id')}"
            if "error" in kinds:
                problems.append(f"{where}: a stored error")
            if not src.strip() and outs:
                problems.append(f"{where}: outputs without code")
            tables = src.count("plotting.table(")
            shown = sum("text/markdown" in o.get("data", {}) for o in outs)
            if tables and "if " not in src and shown < tables:
                problems.append(
                    f"{where}: the code displays {tables} tables, the stored outputs hold {shown}"
                )
            if shown and not tables:
                problems.append(f"{where}: a stored table that no code of the cell displays")
            if "Styler" in json.dumps(outs):
                problems.append(f"{where}: a stale pandas Styler output")
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def pdf(tmp_path_factory):
    """The PDF edition: ``$KLNOTES_BOOK_PDF`` if set, else built by the README's pdf command."""
    import os
    import shutil
    import subprocess

    given = os.environ.get("KLNOTES_BOOK_PDF")
    if given:
        return Path(given)
    missing = [t for t in ("xelatex", "latexmk", "pdftotext", "pdfinfo") if shutil.which(t) is None]
    if missing:
        message = (
            f"missing {', '.join(missing)}: install TeX Live by the README's pdf setup command"
        )
        if os.environ.get("CI"):
            pytest.fail(f"CI must check the PDF edition: {message}")
        pytest.skip(message)
    out = tmp_path_factory.mktemp("pdf")
    jb = Path(sys.executable).with_name("jupyter-book")
    subprocess.run(
        [
            str(jb) if jb.exists() else "jupyter-book",
            "build",
            str(ROOT),
            "--path-output",
            str(out),
            "-q",
        ],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )  # the HTML, to count its tables
    subprocess.run(
        [
            str(jb) if jb.exists() else "jupyter-book",
            "build",
            str(ROOT),
            "--builder",
            "pdflatex",
            "--path-output",
            str(out),
            "-q",
        ],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    return out / "_build" / "latex" / "klnotes.pdf"


def test_pdf_edition(pdf):
    problems = check_book.check_pdf(pdf)
    assert not problems, "\n".join(problems)
