"""Build the course guide's lecture slides (reveal.js) from the book's own chapters.

    python scripts/build_slides.py [--out _build/slides] [--pdf]

Each deck of ``slides/decks.yml`` lists chapter sections; their statements (theorems,
propositions, lemmas, definitions), display equations, figures (the PNGs stored in the notebooks'
outputs) and tables become slides, so the slides cannot drift from the book. The decks use
reveal.js and MathJax 3 from ``node_modules`` (``npm install --no-save reveal.js@5.2.1
mathjax@3.2.2``), copied next to the HTML: no network at build or view time. ``--pdf`` also prints
each deck to PDF in headless Chromium (reveal's print mode, through Playwright, as
``scripts/bookbrowser.py`` does). The book build copies the decks into ``_build/html/slides/``
(``_ext/klnotes_slides.py``).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DECKS = ROOT / "slides" / "decks.yml"
CSS = ROOT / "slides" / "slides.css"
REVEAL_VERSION, MATHJAX_VERSION = "5.2.1", "3.2.2"
NPM_HINT = (
    "npm install --no-save --no-package-lock mathjax@4.1.3 "
    f"reveal.js@{REVEAL_VERSION} mathjax3@npm:mathjax@{MATHJAX_VERSION}"
)
KINDS = ("lead", "statements", "proofs", "equations", "figures", "tables")
DEFAULT_KINDS = ("lead", "statements", "equations", "figures", "tables")
STATEMENTS = ("theorem", "proposition", "lemma", "definition", "corollary")
TABLE_ROWS = 6  # rows of a table per slide
WIDTH, HEIGHT = 1280, 720


# --- reading the chapters -------------------------------------------------------------------------


@dataclass
class Section:
    title: str
    markdown: list[str] = field(default_factory=list)  # the section's markdown, by cell
    outputs: list[dict] = field(default_factory=list)  # the outputs of its code cells, in order


def read_chapter(name: str, root: Path = ROOT) -> tuple[str, dict[str, Section]]:
    """A chapter's title and its ``## `` sections (markdown and code outputs), in order."""
    nb = json.loads((root / "book" / f"{name}.ipynb").read_text(encoding="utf-8"))
    title, sections, current = name, {}, None
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            chunk: list[str] = []
            for line in source.splitlines():
                if line.startswith("# ") and current is None:
                    title = line[2:].strip()
                elif line.startswith("## "):
                    if current is not None and chunk:
                        current.markdown.append("\n".join(chunk))
                    current = sections.setdefault(line[3:].strip(), Section(line[3:].strip()))
                    chunk = []
                elif current is not None:
                    chunk.append(line)
            if current is not None and chunk:
                current.markdown.append("\n".join(chunk))
        elif current is not None:
            current.outputs.extend(cell.get("outputs", []))
    return title, sections


def chapter_number(name: str) -> int:
    return int(name.split("_")[0])


def labels(root: Path = ROOT) -> tuple[dict[str, str], dict[str, str]]:
    """Every equation label -> its number ("2.3") and statement label -> "Kind “title”"."""
    eqs, statements = {}, {}
    for path in sorted((root / "book").glob("0*.ipynb")):
        nb = json.loads(path.read_text(encoding="utf-8"))
        text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
        for n, label in enumerate(re.findall(r"^\$\$\s*\(([\w-]+)\)", text, flags=re.MULTILINE), 1):
            eqs[label] = f"{chapter_number(path.stem)}.{n}"
        for kind, title, body in re.findall(
            r"^(?:`{3,}|:{3,})\{prf:(\w+)\}[ \t]*(.*)\n((?::\w+:.*\n)*)", text, flags=re.MULTILINE
        ):
            found = re.search(r":label:\s*(\S+)", body)
            if found:
                statements[found.group(1)] = (
                    f"{kind.capitalize()} “{title.strip()}”" if title.strip() else kind.capitalize()
                )
    return eqs, statements


def citations(root: Path = ROOT) -> dict[str, str]:
    """BibTeX key -> "Author et al. (year)" from references.bib."""
    out = {}
    for key, body in re.findall(
        r"@\w+\{([^,]+),(.*?)\n\}",
        (root / "references.bib").read_text(encoding="utf-8"),
        flags=re.DOTALL,
    ):
        author = re.search(r"author\s*=\s*\{(.*?)\},?\s*\n", body, flags=re.DOTALL)
        year = re.search(r"year\s*=\s*\{?(\d{4})", body)
        names = [
            a.split(",")[0].strip(" {}") for a in (author.group(1).split(" and ") if author else [])
        ]
        who = (
            names[0]
            + (
                " et al."
                if len(names) > 2 or "others" in names
                else f" and {names[1]}"
                if len(names) == 2
                else ""
            )
            if names
            else key
        )
        out[key.strip()] = (
            f"{who.replace('{', '').replace('}', '')} ({year.group(1) if year else 'n.d.'})"
        )
    return out


# --- MyST to HTML ---------------------------------------------------------------------------------


class Renderer:
    """MyST markdown (the subset the chapters use) to reveal.js HTML with MathJax delimiters."""

    def __init__(self, root: Path = ROOT):
        from markdown_it import MarkdownIt

        self.md = MarkdownIt("commonmark", {"html": True}).enable("table")
        self.eqs, self.statements = labels(root)
        self.cites = citations(root)

    def roles(self, text: str) -> str:
        def cite(m):
            keys = [k.strip() for k in m.group(2).split(",")]
            names = [self.cites.get(k, k) for k in keys]
            if m.group(1) == "t":
                return "; ".join(names)
            return "(" + "; ".join(n.replace(" (", ", ").rstrip(")") for n in names) + ")"

        text = re.sub(r"\{cite:(p|t)\}`([^`]+)`", cite, text)
        text = re.sub(
            r"\{eq\}`([^`]+)`", lambda m: f"({self.eqs.get(m.group(1), m.group(1))})", text
        )
        text = re.sub(
            r"\{prf:ref\}`([^`]+)`", lambda m: self.statements.get(m.group(1), m.group(1)), text
        )
        text = re.sub(
            r"\{doc\}`([^`<]*?)\s*<?([^`<>]+)>?`", lambda m: m.group(1) or m.group(2), text
        )
        text = re.sub(r"\{\w+(?::\w+)?\}`([^`]+)`", r"\1", text)  # any other role: its text
        return re.sub(r"\]\((0\d_\w+)\.ipynb(#[\w-]+)?\)", r"](../book/\1.html\2)", text)

    def __call__(self, text: str) -> str:
        maths: list[str] = []

        def keep(tex: str) -> str:
            maths.append(tex)
            return f"MATHPH{len(maths) - 1}X"

        def display(m):
            label = m.group(2)
            tag = f"\\tag{{{self.eqs[label]}}}" if label in self.eqs else ""
            return (
                "\n\n"
                + keep("\\[" + html.escape(m.group(1).strip() + tag, quote=False) + "\\]")
                + "\n\n"
            )

        text = self.roles(text)
        text = re.sub(r"\$\$(.+?)\$\$[ \t]*(?:\(([\w-]+)\))?", display, text, flags=re.DOTALL)
        text = re.sub(
            r"(?<![\\$])\$([^$\n]+?)\$",
            lambda m: keep("\\(" + html.escape(m.group(1), quote=False) + "\\)"),
            text,
        )
        out = self.md.render(text)
        return re.sub(r"MATHPH(\d+)X", lambda m: maths[int(m.group(1))], out)


def blocks(markdown: str) -> list[tuple[str, str, str]]:
    """Split MyST markdown into ("text", "", body) and (directive, argument, body) blocks."""
    out, lines, i = [], markdown.splitlines(), 0
    text: list[str] = []
    while i < len(lines):
        m = re.match(r"^(`{3,}|:{3,})\{([\w:-]+)\}[ \t]*(.*)$", lines[i])
        if not m:
            text.append(lines[i])
            i += 1
            continue
        if text:
            out.append(("text", "", "\n".join(text)))
            text = []
        fence, body, i = m.group(1), [], i + 1
        while i < len(lines) and lines[i].strip() != fence:
            body.append(lines[i])
            i += 1
        i += 1
        while body and re.match(r"^:\w[\w-]*:", body[0]):
            body.pop(0)
        out.append((m.group(2), m.group(3).strip(), "\n".join(body).strip()))
    if text:
        out.append(("text", "", "\n".join(text)))
    return out


def lead_paragraph(markdown: str, limit: int = 520) -> str:
    """The section's first prose paragraph, cut at a sentence end before ``limit`` characters."""
    for kind, _, body in blocks(markdown):
        if kind != "text":
            continue
        for para in re.split(r"\n\s*\n", body):
            para = para.strip()
            if para and not para.startswith(("|", "$$", "#", "-", "*", "<")):
                if len(para) <= limit:
                    return para
                cut = max(para.rfind(". ", 0, limit), para.rfind("? ", 0, limit))
                return para[: cut + 1] if cut > 0 else para[:limit] + " …"
    return ""


def html_tables(outputs: list[dict]) -> list[str]:
    """The stored HTML tables of the outputs, without styles and collapsible details."""
    tables = []
    for out in outputs:
        page = "".join(out.get("data", {}).get("text/html", ""))
        caption = re.match(r"\s*<p>(.*?)</p>", page, flags=re.DOTALL)  # e.g. "verl (15 options)"
        for table in re.findall(r"<table.*?</table>", page, flags=re.DOTALL):
            table = re.sub(r"<details>.*?</details>", "", table, flags=re.DOTALL)
            table = re.sub(r"<style.*?</style>", "", table, flags=re.DOTALL)
            table = re.sub(r'\s(?:style|class|id)="[^"]*"', "", table)
            table = re.sub(r"<colgroup>.*?</colgroup>", "", table, flags=re.DOTALL)
            if caption:
                table = table.replace("<table>", f"<table><caption>{caption.group(1)}</caption>", 1)
            # inline math written $...$ (a results table's caption or header): the decks' MathJax
            # reads \(...\) only
            table = re.sub(r"(?<![\\$])\$([^$<>\n]+?)\$", r"\\(\1\\)", table)
            tables.append(table)
    return tables


def split_rows(table: str, rows: int = TABLE_ROWS) -> list[str]:
    """A table cut into tables of at most ``rows`` body rows, each with the header."""
    head = re.search(r"<thead>.*?</thead>", table, flags=re.DOTALL)
    body = re.findall(
        r"<tr>.*?</tr>", re.sub(r"<thead>.*?</thead>", "", table, flags=re.DOTALL), flags=re.DOTALL
    )
    if len(body) <= rows:
        return [table]
    head_html = head.group(0) if head else ""
    caption = re.search(r"<caption>.*?</caption>", table, flags=re.DOTALL)
    head_html = (caption.group(0) if caption else "") + head_html
    return [
        f"<table>{head_html}<tbody>{''.join(body[i : i + rows])}</tbody></table>"
        for i in range(0, len(body), rows)
    ]


# --- slides ---------------------------------------------------------------------------------------


@dataclass
class Slide:
    kind: str
    title: str
    body: str
    source: str  # "Chapter N, “section”" (HTML)
    source_chapter: str = ""  # the notebook's name

    def html(self) -> str:
        dense = " dense" if len(re.sub(r"<[^>]+>", "", self.body)) > 650 else ""
        return (
            f'<section class="{self.kind}{dense}">'
            f"<h2>{self.title}</h2>{self.body}"
            f'<p class="source">{self.source}</p></section>'
        )


def section_slides(
    chapter: str, section: Section, kinds, render: Renderer, images: Path
) -> list[Slide]:
    number = chapter_number(chapter)
    title = render(section.title).strip().removeprefix("<p>").removesuffix("</p>")
    where = f"Chapter {number}, “{title}”"
    slides: list[Slide] = []
    text = "\n\n".join(section.markdown)
    if "lead" in kinds:
        lead = lead_paragraph(text)
        slides.append(Slide("lead", title, render(lead) if lead else "", where))
    for kind, arg, body in blocks(text):
        if kind.startswith("prf:"):
            what = kind[4:]
            if what in STATEMENTS and "statements" in kinds:
                name = f"{what.capitalize()}" + (f": {render(arg).strip()[3:-4]}" if arg else "")
                slides.append(Slide("statement", name, render(body), where))
            elif what == "proof" and "proofs" in kinds:
                slides.append(Slide("proof", "Proof", render(body), where))
        elif kind == "text":
            if "equations" in kinds:
                for m in re.finditer(r"\$\$.+?\$\$[ \t]*(?:\([\w-]+\))?", body, flags=re.DOTALL):
                    slides.append(Slide("equation", title, render(m.group(0)), where))
            if "tables" in kinds:
                for m in re.finditer(r"(?:^\|.*\n?)+", body, flags=re.MULTILINE):
                    for part in split_rows(render(m.group(0))):
                        slides.append(Slide("table", title, part, where))
    if "tables" in kinds:
        for table in html_tables(section.outputs):
            for part in split_rows(table):
                slides.append(Slide("table", title, part, where))
    if "figures" in kinds:
        for out in section.outputs:
            png = out.get("data", {}).get("image/png")
            if png:
                data = base64.b64decode("".join(png) if isinstance(png, list) else png)
                name = f"{chapter}-{hashlib.sha1(data).hexdigest()[:12]}.png"  # one file per figure
                (images / name).write_bytes(data)
                slides.append(
                    Slide(
                        "figure",
                        title,
                        f'<img src="img/{name}" alt="figure from chapter {number}">',
                        where,
                    )
                )
    return slides


def deck_slides(deck: dict, render: Renderer, images: Path, root: Path = ROOT) -> list[Slide]:
    slides = []
    for item in deck["items"]:
        chapter = item["chapter"]
        _, sections = read_chapter(chapter, root)
        kinds = tuple(item.get("kinds", DEFAULT_KINDS))
        bad = set(kinds) - set(KINDS)
        if bad:
            raise ValueError(
                f"slides/decks.yml: unknown kinds {sorted(bad)} for {chapter}; allowed: {KINDS}"
            )
        for name in item["sections"]:
            if name not in sections:
                raise ValueError(
                    f"slides/decks.yml: {chapter} has no section {name!r}; its sections: "
                    f"{list(sections)}"
                )
            for slide in section_slides(chapter, sections[name], kinds, render, images):
                slide.source_chapter = chapter
                slides.append(slide)
    return slides


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<link rel="stylesheet" href="lib/reveal/reveal.css">
<link rel="stylesheet" href="lib/reveal/theme/white.css">
<link rel="stylesheet" href="slides.css">
<script>
window.MathJax = {{tex: {{inlineMath: [["\\\\(", "\\\\)"]], displayMath: [["\\\\[", "\\\\]"]],
  tags: "none", packages: {{"[-]": ["noundefined"]}}}},  // an undefined macro is an error
  startup: {{typeset: false}},
  chtml: {{fontURL: "lib/mathjax/output/chtml/fonts/woff-v2"}}}};
</script>
<script src="lib/mathjax/tex-mml-chtml.js"></script>
<script src="lib/reveal/reveal.js"></script>
</head><body>
<div class="reveal"><div class="slides">
<section class="title"><h1>{title}</h1><p class="subtitle">{subtitle}</p>
<p>{count} slides · about {minutes} minutes · generated from
<a href="../book/intro.html">the klnotes book</a>, edition {edition}</p>
<p class="source"><a href="index.html">all decks</a> · {pdf}
<a href="../book/course.html">course guide</a></p></section>
{slides}
</div></div>
<script>
Reveal.initialize({{hash: true, width: {width}, height: {height}, margin: 0.04, center: false,
  slideNumber: "c/t", transition: "none", pdfSeparateFragments: false}})
  .then(() => MathJax.startup.promise)
  .then(() => MathJax.typesetPromise())
  .then(() => Reveal.layout())
  .then(() => {{ window.slidesReady = true; }});
</script>
</body></html>
"""

INDEX = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>klnotes: lecture slides</title>
<link rel="stylesheet" href="slides.css"></head>
<body class="index"><h1>klnotes: lecture slides</h1>
<p>Generated from the chapters of <a href="../book/intro.html">the book</a> (edition {edition})
for the lectures of <a href="../book/course.html">the course guide</a>.</p>
<ul>{items}</ul></body></html>
"""


def copy_assets(out: Path, node_modules: Path) -> None:
    reveal, mathjax = node_modules / "reveal.js" / "dist", node_modules / "mathjax3" / "es5"
    missing = [
        str(p) for p in (reveal / "reveal.js", mathjax / "tex-mml-chtml.js") if not p.exists()
    ]
    if missing:
        raise FileNotFoundError(
            f"missing {', '.join(missing)}: run `{NPM_HINT}` in {node_modules.parent}"
        )
    lib = out / "lib"
    shutil.copytree(
        reveal,
        lib / "reveal",
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("*.map", "*.esm.js"),
    )
    (lib / "mathjax").mkdir(parents=True, exist_ok=True)
    shutil.copy2(mathjax / "tex-mml-chtml.js", lib / "mathjax" / "tex-mml-chtml.js")
    shutil.copytree(
        mathjax / "output" / "chtml" / "fonts" / "woff-v2",
        lib / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2",
        dirs_exist_ok=True,
    )


def build(
    out: Path = ROOT / "_build" / "slides",
    root: Path = ROOT,
    node_modules: Path | None = None,
    *,
    pdf_links: bool = True,
) -> dict[str, int]:
    """Write every deck's HTML (and the assets) into ``out``; returns deck name -> slide count.

    ``pdf_links``: link each deck's PDF (``<deck>.pdf``, printed by :func:`print_pdfs`).
    """
    sys.path.insert(0, str(root))
    from klnotes import __version__

    decks = yaml.safe_load((root / "slides" / "decks.yml").read_text(encoding="utf-8"))
    if out.exists():
        shutil.rmtree(out)
    (out / "img").mkdir(parents=True)
    copy_assets(out, node_modules or root / "node_modules")
    shutil.copy2(root / "slides" / "slides.css", out / "slides.css")
    render = Renderer(root)
    counts = {}
    for name, deck in decks.items():
        slides = deck_slides(deck, render, out / "img", root)
        counts[name] = len(slides) + 1  # and the title slide
        (out / f"{name}.html").write_text(
            PAGE.format(
                title=html.escape(deck["title"]),
                subtitle=html.escape(deck.get("subtitle", "")),
                minutes=deck.get("minutes", 90),
                count=counts[name],
                edition=__version__,
                pdf=f'<a href="{name}.pdf">PDF</a> ·' if pdf_links else "",
                slides="\n".join(s.html() for s in slides),
                width=WIDTH,
                height=HEIGHT,
            ),
            encoding="utf-8",
        )
    items = "".join(
        f'<li><a href="{n}.html">{html.escape(decks[n]["title"])}</a> ({c} slides'
        + (f'; <a href="{n}.pdf">PDF</a>' if pdf_links else "")
        + ")</li>"
        for n, c in counts.items()
    )
    (out / "index.html").write_text(
        INDEX.format(edition=__version__, items=items), encoding="utf-8"
    )
    return counts


def print_pdfs(out: Path, names) -> list[Path]:
    """Each deck printed by headless Chromium in reveal's print mode (``?print-pdf``)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import bookbrowser
    from playwright.sync_api import sync_playwright

    chromium = bookbrowser.find_chromium()
    if chromium is None:
        raise FileNotFoundError("chromium not found: apt-get install -y chromium")
    pdfs = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        for name in names:
            page.goto((out / f"{name}.html").resolve().as_uri() + "?print-pdf")
            page.wait_for_function("window.slidesReady === true", timeout=60_000)
            pdf = out / f"{name}.pdf"
            page.pdf(
                path=str(pdf),
                width=f"{WIDTH}px",
                height=f"{HEIGHT}px",
                print_background=True,
                prefer_css_page_size=True,
            )
            pdfs.append(pdf)
        browser.close()
    return pdfs


MEASURE = r"""() => {
  const box = document.querySelector('.reveal .slides').getBoundingClientRect();
  const slide = Reveal.getCurrentSlide();
  const over = [];
  for (const el of slide.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;
    if (el.parentElement.closest('mjx-container')) continue;  // an equation is measured whole
    const sides = {right: r.right - box.right, left: box.left - r.left,
                   bottom: r.bottom - box.bottom, top: box.top - r.top};
    for (const [side, d] of Object.entries(sides)) {
      if (d > 1) over.push(`${el.tagName.toLowerCase()} ${side} by ${Math.round(d)} px`);
    }
  }
  const raw = [];
  const walker = document.createTreeWalker(slide, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const t = walker.currentNode;
    if (t.parentElement.closest('mjx-container, script, code')) continue;
    const tex = /\\\(|\\\[|\$[^$\s]|MATHPH/;  // delimiters MathJax left in the text
    if (tex.test(t.textContent)) raw.push(t.textContent.trim().slice(0, 60));
  }
  return {title: (slide.querySelector('h1, h2') || {}).textContent || '',
          overflow: over.slice(0, 3), overflowCount: over.length, raw: raw,
          math: slide.querySelectorAll('mjx-container').length,
          mathErrors: slide.querySelectorAll('mjx-merror, [data-mjx-error]').length,
          images: [...slide.querySelectorAll('img')]
                   .filter(i => !i.complete || i.naturalWidth === 0)
                   .map(i => i.getAttribute('src'))};
}"""


def measure(out: Path, names, shots: Path | None = None) -> dict[str, list[dict]]:
    """Open every slide of each deck at 1280x720 in headless Chromium.

    Per slide: its overflow (elements outside the slide), TeX left unrendered, MathJax errors,
    broken images; per deck: its JavaScript errors."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import bookbrowser
    from playwright.sync_api import sync_playwright

    report = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=bookbrowser.find_chromium(), args=["--no-sandbox"]
        )
        for name in names:
            page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
            errors: list[str] = []
            page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
            page.on(
                "console",
                lambda m, errors=errors: errors.append(m.text) if m.type == "error" else None,
            )
            page.goto((out / f"{name}.html").resolve().as_uri())
            page.wait_for_function("window.slidesReady === true", timeout=60_000)
            total = page.evaluate("Reveal.getTotalSlides()")
            rows = []
            for i in range(total):
                page.evaluate(f"Reveal.slide({i})")
                page.wait_for_timeout(30)
                row = page.evaluate(MEASURE)
                row["index"] = i + 1
                rows.append(row)
                if shots is not None:
                    shots.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(shots / f"{name}-{i + 1:02d}.png"))
            report[name] = {"slides": rows, "errors": errors, "total": total}
            page.close()
        browser.close()
    return report


def problems(report: dict) -> list[str]:
    """One line per defect in a :func:`measure` report."""
    out = []
    for name, deck in report.items():
        out += [f"{name}: JavaScript error: {e}" for e in deck["errors"]]
        for row in deck["slides"]:
            where = f"{name} slide {row['index']} ({row['title'][:50]!r})"
            if row["overflowCount"]:
                out.append(
                    f"{where}: {row['overflowCount']} elements outside the slide, e.g. "
                    f"{', '.join(row['overflow'])}"
                )
            if row["raw"]:
                out.append(f"{where}: unrendered TeX {row['raw'][:2]}")
            if row["mathErrors"]:
                out.append(f"{where}: {row['mathErrors']} MathJax errors")
            if row["images"]:
                out.append(f"{where}: images that did not load {row['images']}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "slides")
    parser.add_argument("--pdf", action="store_true", help="also print each deck to PDF (Chromium)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="open every slide at 1280x720 in Chromium and report defects",
    )
    parser.add_argument(
        "--shots", type=Path, help="with --check: a PNG of every slide in this folder"
    )
    args = parser.parse_args(argv)
    counts = build(args.out)
    for name, n in counts.items():
        print(f"{name}: {n} slides -> {args.out / (name + '.html')}")
    if args.check:
        found = problems(measure(args.out, counts, args.shots))
        print("\n".join(found) or "every slide fits, every equation renders, no JavaScript error")
        if found:
            return 1
    if args.pdf:
        for pdf in print_pdfs(args.out, counts):
            print(f"PDF: {pdf}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
