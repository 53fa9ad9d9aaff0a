"""The lecture slides (``scripts/build_slides.py``), as a class sees them: every deck of
``slides/decks.yml`` is generated from the chapters and every slide opened at 1280x720 in headless
Chromium. Nothing may overflow a slide, every equation must render (MathJax 3), no JavaScript error.

Without Chromium, Playwright or the npm assets (reveal.js, MathJax) the browser tests skip with
the command that installs them; under CI (``CI`` set) they fail instead, as the book's browser
test does.
"""

import os
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import bookbrowser  # noqa: E402 - from scripts/, put on the path above
import build_slides  # noqa: E402

DECKS = yaml.safe_load((ROOT / "slides" / "decks.yml").read_text(encoding="utf-8"))


def _missing() -> list[str]:
    missing = [m for m in bookbrowser.missing_tools() if not m.startswith("MathJax")]
    for asset in ("reveal.js/dist/reveal.js", "mathjax3/es5/tex-mml-chtml.js"):
        if not (ROOT / "node_modules" / asset).exists():
            missing.append(f"node_modules/{asset} ({build_slides.NPM_HINT})")
    return missing


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    missing = _missing()
    if missing:
        message = f"missing {', '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the slide check: {message}")
        pytest.skip(message)
    out = tmp_path_factory.mktemp("slides")
    counts = build_slides.build(out)
    return out, counts, build_slides.measure(out, counts)


def _lines(built, pattern):
    return [p for p in build_slides.problems(built[2]) if re.search(pattern, p)]


def test_every_deck_is_built_with_every_slide_measured(built):
    out, counts, report = built
    assert set(counts) == set(DECKS)
    for name, n in counts.items():
        assert n >= 10, (name, n)
        assert report[name]["total"] == n == len(report[name]["slides"]), name
        assert (out / f"{name}.html").is_file()
    assert list((out / "img").glob("*.png")), "no figure was taken from the chapters' outputs"


def test_no_slide_overflows_at_1280x720(built):
    bad = _lines(built, "outside the slide|did not load")
    assert not bad, "\n".join(bad)


def test_every_equation_renders(built):
    bad = _lines(built, "unrendered TeX|MathJax errors")
    assert not bad, "\n".join(bad)
    _, counts, report = built
    assert all(sum(row["math"] for row in report[name]["slides"]) > 10 for name in counts)


def test_no_javascript_errors(built):
    bad = _lines(built, "JavaScript error")
    assert not bad, "\n".join(bad)


def test_the_check_sees_a_bad_slide(built):
    out = built[0]
    page = (out / "lecture-1.html").read_text(encoding="utf-8")
    bad = (
        '<section><h2>bad</h2><div style="height: 2000px">too tall</div>'
        r"<p>\(\fraq{1}{2}\)</p><p>$k_1$ left as TeX</p></section>"
    )  # undefined macro
    end = "</div></div>\n<script>\nReveal"
    assert end in page
    (out / "bad.html").write_text(page.replace(end, bad + end), encoding="utf-8")
    found = build_slides.problems(build_slides.measure(out, ["bad"]))
    assert any("outside the slide" in p for p in found), found
    assert any("MathJax errors" in p for p in found), found
    assert any("unrendered TeX" in p for p in found), found


def test_pdf_has_one_page_per_slide(built):
    out, counts, _ = built
    (pdf,) = build_slides.print_pdfs(out, ["lecture-1"])
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF")
    pages = len(re.findall(rb"/Type\s*/Page(?!s)", data))
    assert pages == counts["lecture-1"], (pages, counts["lecture-1"])


def test_course_guide_slide_ranges_match_the_decks(tmp_path):
    """The course guide's "slides a–b (chapter N)" notes point at slides of chapter N, in the deck
    of their lecture ("In class: the one-lecture path", then "**Lecture k**")."""
    render = build_slides.Renderer()
    course = (ROOT / "book" / "course.md").read_text(encoding="utf-8")
    start = course.index("### In class: the one-lecture path")
    blocks = re.split(r"(?=\*\*Lecture \d\*\*)|(?=^## )", course[start:], flags=re.MULTILINE)
    checked = 0
    for block in blocks:
        lecture = re.match(r"\*\*Lecture (\d)\*\*", block)
        deck = (
            f"lecture-{lecture.group(1)}"
            if lecture
            else ("one-lecture" if block.startswith("### In class: the one-lecture path") else None)
        )
        if deck is None:
            continue
        sources = [
            build_slides.chapter_number(s.source_chapter)
            for s in build_slides.deck_slides(DECKS[deck], render, tmp_path)
        ]
        for first, last, chapters in re.findall(
            r"slides? (\d+)(?:–(\d+))? \(chapters? ([\d and]+)\)", block
        ):
            allowed = {int(c) for c in re.findall(r"\d+", chapters)}
            shown = {sources[i - 2] for i in range(int(first), int(last or first) + 1)}
            assert shown <= allowed, (deck, first, last, shown, allowed)
            checked += 1
    assert checked >= 13, checked


def test_each_chapter_links_the_decks_that_cover_it():
    for name, deck in DECKS.items():
        for item in deck["items"]:
            text = (ROOT / "book" / f"{item['chapter']}.ipynb").read_text(encoding="utf-8")
            assert f'href=\\"../slides/{name}.html\\"' in text, (item["chapter"], name)
