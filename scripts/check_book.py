"""Check a built book: the edition on every page, each chapter's citation box, the PDF edition.

    python scripts/check_book.py html _build/html
    python scripts/check_book.py pdf _build/latex/klnotes.pdf

``html``: every page's footer names the edition (``klnotes.__version__``); every chapter of the
toc's numbered parts has one "How to cite this chapter" box whose ``chapter`` is the number Sphinx
printed in the page's title and whose ``title`` is that title's text.

``pdf``: the page count lies in a plausible range, no cross-reference is left unresolved ("??"
in the text), display equations are numbered by chapter, the edition is printed, and there is
one citation entry per chapter. Needs
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
    pages = [p for p in sorted(build.rglob("*.html")) if p.name not in ("search.html", "genindex.html")
             and "_static" not in p.parts and "_sources" not in p.parts
             and 'http-equiv="Refresh"' not in p.read_text(encoding="utf-8")[:500]]  # redirects
    if not pages:
        return [f"no HTML pages under {build}"]
    for page in pages:
        if f"klnotes edition {version}" not in page.read_text(encoding="utf-8"):
            problems.append(f"{page.relative_to(build)}: no 'klnotes edition {version}' in the footer")
    for chapter in kb.toc_chapters():
        page = build / f"{chapter.docname}.html"
        if not page.exists():
            problems.append(f"{page}: missing")
            continue
        text = page.read_text(encoding="utf-8")
        number = re.search(r'<h1><span class="section-number">(\d+)\.\s*</span>(.*?)</h1>', text, re.S)
        if number is None:
            problems.append(f"{page.name}: no numbered <h1>")
            continue
        title = kb.strip_number(_text(re.sub(r'<a class="headerlink".*', "", number.group(2), flags=re.S)))
        boxes = re.findall(r"How to cite this chapter.*?(@incollection\{.*?\n\})", _text(text), re.S)
        if len(boxes) != 1:
            problems.append(f"{page.name}: {len(boxes)} citation boxes, expected 1")
            continue
        entry = boxes[0]
        fields = {k: " ".join(v.split()) for k, v in
                  re.findall(r"^\s*(\w+)\s*= \{((?:[^{}]|\{[^{}]*\})*)\}", entry, re.M)}
        if fields.get("chapter") != number.group(1) or number.group(1) != str(chapter.number):
            problems.append(f"{page.name}: page number {number.group(1)}, toc position "
                            f"{chapter.number}, citation chapter {fields.get('chapter')}")
        if fields.get("title", "").replace("{", "").replace("}", "") != title:
            problems.append(f"{page.name}: citation title {fields.get('title')!r}, page title {title!r}")
        if fields.get("edition") != version:
            problems.append(f"{page.name}: citation edition {fields.get('edition')!r}, expected {version}")
    return problems


def check_pdf(pdf: Path) -> list[str]:
    """Problems found in the PDF edition ``pdf`` (empty when all is well)."""
    if not pdf.exists():
        return [f"{pdf}: missing"]
    info = subprocess.run(["pdfinfo", str(pdf)], check=True, capture_output=True, text=True).stdout
    pages = int(re.search(r"^Pages:\s+(\d+)", info, re.M).group(1))
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], check=True,
                          capture_output=True, text=True).stdout
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
        problems.append(f"{pdf.name}: {len(numbered)} equation numbers (chapter.n), {len(bare)} "
                        "without a chapter")
    version = kb.read_version()
    if version not in text:
        problems.append(f"{pdf.name}: the edition {version} is not printed")
    boxes, chapters = text.count("@incollection{klnotes"), len(kb.toc_chapters())
    if boxes != chapters:
        problems.append(f"{pdf.name}: {boxes} citation boxes for {chapters} chapters")
    print(f"{pdf}: {pages} pages, {len(numbered)} numbered equations, {boxes} chapter citations, "
          f"edition {version}")
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
