"""Check a built book: the edition on every page, each chapter's citation box, the PDF edition.

    python scripts/check_book.py html _build/html
    python scripts/check_book.py pdf _build/latex/klnotes.pdf

``html``: every page's footer names the edition (``klnotes.__version__``); every chapter of the
toc's numbered parts has one "How to cite this chapter" box whose ``chapter`` is the number Sphinx
printed in the page's title and whose ``title`` is that title's text.

``pdf``: the page count lies in a plausible range, no cross-reference is left unresolved ("??"
in the text, or an undefined hyper reference in the LaTeX log: a dead link), display equations
are numbered by chapter, the edition is printed, there is one citation entry per chapter, no
output prints as a Python object's repr (``<pandas.io.formats.style.Styler at 0x...>``), no
figure is too tall for a page ("Float too large"), no chapter is empty, and the PDF holds at
least as many tables, and as many numbered tables, as the HTML build beside it
(``_build/html``, when present). Reads the ``.tex`` and ``.log`` written beside the PDF. Needs
``pdfinfo`` and ``pdftotext`` (Debian: poppler-utils).

Exits with status 1 and one line per problem if anything is wrong.
"""

from __future__ import annotations

import argparse
import html
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "_ext"))
import klnotes_book as kb  # noqa: E402

PDF_PAGES = (120, 600)  # the first edition has 192 pages; far outside means a broken build


def _text(fragment: str) -> str:
    text = html.unescape(re.sub(r"<[^>]+>", "", fragment)).replace("¶", "")
    return text.replace("\u2019", "'").replace("\u201c", '"').replace("\u201d", '"').strip()


def check_html(build: Path) -> list[str]:
    """Problems found in the HTML build at ``build`` (empty when all is well)."""
    version = kb.read_version()
    problems = []
    pages = [
        p
        for p in sorted(build.rglob("*.html"))
        if p.name not in ("search.html", "genindex.html")
        and "_static" not in p.parts
        and "_sources" not in p.parts
        and p.relative_to(build).parts[0]
        != "slides"  # reveal.js decks, checked by tests/test_slides.py
        and 'http-equiv="Refresh"' not in p.read_text(encoding="utf-8")[:500]
    ]  # redirects
    if not pages:
        return [f"no HTML pages under {build}"]
    for page in pages:
        if f"klnotes edition {version}" not in page.read_text(encoding="utf-8"):
            problems.append(
                f"{page.relative_to(build)}: no 'klnotes edition {version}' in the footer"
            )
    for chapter in kb.toc_chapters():
        page = build / f"{chapter.docname}.html"
        if not page.exists():
            problems.append(f"{page}: missing")
            continue
        text = page.read_text(encoding="utf-8")
        number = re.search(
            r'<h1><span class="section-number">(\d+)\.\s*</span>(.*?)</h1>', text, re.S
        )
        if number is None:
            problems.append(f"{page.name}: no numbered <h1>")
            continue
        title = kb.strip_number(
            _text(re.sub(r'<a class="headerlink".*', "", number.group(2), flags=re.S))
        )
        boxes = re.findall(
            r"How to cite this chapter.*?(@incollection\{.*?\n\})", _text(text), re.S
        )
        if len(boxes) != 1:
            problems.append(f"{page.name}: {len(boxes)} citation boxes, expected 1")
            continue
        entry = boxes[0]
        fields = {
            k: " ".join(v.split())
            for k, v in re.findall(r"^\s*(\w+)\s*= \{((?:[^{}]|\{[^{}]*\})*)\}", entry, re.M)
        }
        if fields.get("chapter") != number.group(1) or number.group(1) != str(chapter.number):
            problems.append(
                f"{page.name}: page number {number.group(1)}, toc position "
                f"{chapter.number}, citation chapter {fields.get('chapter')}"
            )
        if fields.get("title", "").replace("{", "").replace("}", "") != title:
            problems.append(
                f"{page.name}: citation title {fields.get('title')!r}, page title {title!r}"
            )
        if fields.get("edition") != version:
            problems.append(
                f"{page.name}: citation edition {fields.get('edition')!r}, expected {version}"
            )
    return problems


def check_pdf(pdf: Path) -> list[str]:
    """Problems found in the PDF edition ``pdf`` (empty when all is well)."""
    if not pdf.exists():
        return [f"{pdf}: missing"]
    info = subprocess.run(["pdfinfo", str(pdf)], check=True, capture_output=True, text=True).stdout
    pages = int(re.search(r"^Pages:\s+(\d+)", info, re.M).group(1))
    text = subprocess.run(
        ["pdftotext", "-layout", str(pdf), "-"], check=True, capture_output=True, text=True
    ).stdout
    problems = []
    if not PDF_PAGES[0] <= pages <= PDF_PAGES[1]:
        problems.append(f"{pdf.name}: {pages} pages, expected {PDF_PAGES[0]} to {PDF_PAGES[1]}")
    for line in (line for line in text.splitlines() if "??" in line):
        problems.append(f"{pdf.name}: unresolved reference: {line.strip()[:120]}")
    # Display equations carry "(chapter.n)" at the right margin; a bare "(n)" there means the
    # LaTeX numbering lost its chapter level (it happened when the section depth was changed).
    bare = re.findall(r"\s{5,}\((\d+)\)$", text, re.M)
    numbered = re.findall(r"\s{5,}\((\d+\.\d+)\)$", text, re.M)
    if bare or not numbered:
        problems.append(
            f"{pdf.name}: {len(numbered)} equation numbers (chapter.n), {len(bare)} "
            "without a chapter"
        )
    version = kb.read_version()
    if version not in text:
        problems.append(f"{pdf.name}: the edition {version} is not printed")
    boxes, chapters = text.count("@incollection{klnotes"), len(kb.toc_chapters())
    if boxes != chapters:
        problems.append(f"{pdf.name}: {boxes} citation boxes for {chapters} chapters")
    problems += _pdf_content_problems(pdf, text)
    print(
        f"{pdf}: {pages} pages, {len(numbered)} numbered equations, {boxes} chapter citations, "
        f"edition {version}"
    )
    return problems


_OBJECT_REPR = re.compile(r"<[A-Za-z_][\w.]* (?:object(?: at 0x[0-9a-f]+)?|at 0x[0-9a-f]+)>")
_LATEX_TABLE = re.compile(r"\\begin\{(?:tabulary|tabular|longtable)\}")


def empty_chapters(tex: str, min_chars: int = 200) -> list[str]:
    """Titles of the ``\\chapter{...}`` of a LaTeX book whose body (up to the next chapter or
    part) holds fewer than ``min_chars`` characters of text once commands and labels are removed."""
    out = []
    pieces = re.split(r"\\(?:chapter|part)\*?\{", tex)
    for piece in pieces[1:]:
        depth, end = 1, 0
        for end, ch in enumerate(piece):
            depth += {"{": 1, "}": -1}.get(ch, 0)
            if depth == 0:
                break
        title, body = piece[:end], piece[end + 1 :]
        if re.match(r"\s*\\appendix|\s*$", body) and tex.count("\\part{" + title + "}"):
            continue  # a part's title page
        words = re.sub(r"\\[A-Za-z@]+\*?(\[[^\]]*\])?|[{}\\%]", " ", body)
        if len(" ".join(words.split())) < min_chars and "\\part{" + title + "}" not in tex:
            out.append(title)
    return out


def html_tables(html_dir: Path) -> tuple[int, int]:
    """``(tables, numbered tables)`` in the article of every page of the book (``book/``) in an HTML
    build; the generated index pages (search, general index, the theorem index) are not in the PDF."""
    tables = numbered = 0
    for page in sorted((html_dir / "book").rglob("*.html")):
        text = page.read_text(encoding="utf-8")
        main = text[text.find("<article") : text.rfind("</article>")] if "<article" in text else ""
        tables += main.count("<table")
        numbered += len(re.findall(r'<caption>\s*<span class="caption-number">Table', main))
    return tables, numbered


def _pdf_content_problems(pdf: Path, text: str) -> list[str]:
    """What a reader of the PDF would miss: object reprs, oversized floats, dead links, empty
    chapters, tables the HTML has and the PDF lost."""
    problems = [
        f"{pdf.name}: an output prints as an object repr: {m.group(0)}"
        for m in _OBJECT_REPR.finditer(text)
    ]
    log, tex = pdf.with_suffix(".log"), pdf.with_suffix(".tex")
    if not log.exists() or not tex.exists():
        return [
            *problems,
            f"{pdf.name}: no {log.name} / {tex.name} beside it: build with --builder pdflatex",
        ]
    log_text = log.read_text(encoding="utf-8", errors="replace")
    if "Float too large" in log_text:
        problems.append(
            f"{pdf.name}: {log_text.count('Float too large')} figures or tables too tall for "
            "a page (LaTeX: Float too large)"
        )
    dead = sorted(set(re.findall(r"Hyper reference `([^']+)'", log_text)))
    if dead:
        problems.append(
            f"{pdf.name}: {len(dead)} link targets undefined (dead links), e.g. {dead[:3]}"
        )
    tex_text = tex.read_text(encoding="utf-8", errors="replace")
    for title in empty_chapters(tex_text):
        problems.append(f"{pdf.name}: chapter {title!r} is empty")
    in_pdf = len(_LATEX_TABLE.findall(tex_text))
    numbered_pdf = len(re.findall(r"^\s*Table [A-Z0-9]+\.\d+:", text, re.M))
    html_dir = pdf.parents[1] / "html"
    if html_dir.is_dir():
        in_html, numbered_html = html_tables(html_dir)
        if in_pdf < in_html or numbered_pdf < numbered_html:
            problems.append(
                f"{pdf.name}: {in_pdf} tables ({numbered_pdf} numbered) in the PDF, "
                f"{in_html} ({numbered_html} numbered) in the HTML build {html_dir}"
            )
        print(
            f"{pdf.name}: {in_pdf} tables ({numbered_pdf} numbered); HTML: {in_html} ({numbered_html} numbered)"
        )
    elif numbered_pdf == 0:
        problems.append(f"{pdf.name}: no numbered table ('Table N.k:') in the PDF")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("html", "pdf"))
    parser.add_argument("path", type=Path, help="the HTML folder, or the PDF file")
    args = parser.parse_args(argv)
    problems = check_html(args.path) if args.kind == "html" else check_pdf(args.path)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"{args.kind} edition checked: {args.path}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
