"""Publish the lecture slides with the book: after an HTML build, the decks of ``slides/decks.yml``
are generated from the chapters into ``<html>/slides/`` (``scripts/build_slides.py``), with the
PDFs that the README's slides command printed into ``_build/slides/``, when there are any.

The decks need reveal.js and MathJax from ``node_modules`` (the README's slides command installs
them); without them the book builds without slides and says so.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from sphinx.util import logging

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger(__name__)


def publish(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    sys.path.insert(0, str(ROOT / "scripts"))
    import build_slides

    printed = ROOT / "_build" / "slides"
    pdfs = sorted(printed.glob("*.pdf"))
    out = Path(app.outdir) / "slides"
    try:
        counts = build_slides.build(out, ROOT, pdf_links=bool(pdfs))
    except FileNotFoundError as err:
        logger.info(f"[klnotes_slides] no lecture slides in this build: {err}")
        return
    for pdf in pdfs:
        shutil.copy2(pdf, out / pdf.name)
    logger.info(f"[klnotes_slides] {sum(counts.values())} slides in {len(counts)} decks -> {out}")


def setup(app):
    app.connect("build-finished", publish)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
