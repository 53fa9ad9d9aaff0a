"""Write a full-page PNG of every page of the book, for review by eye.

    python scripts/screenshots.py                      # build the test book, shots in .scratch/screenshots
    python scripts/screenshots.py --out shots --width 1280 --width 400
    python scripts/screenshots.py --html /tmp/b/_build/html --page book/09_in_practice.html

The book is built as the browser test builds it (MathJax from the local copy, see
scripts/bookbrowser.py), then each page is opened in headless Chromium at each width (default
1280 px) and saved as ``<page>-<width>.png``. The problems the browser test would report are
printed too.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bookbrowser  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        default=str(bookbrowser.ROOT / ".scratch" / "screenshots"),
        help="folder for the PNGs (default: .scratch/screenshots)",
    )
    parser.add_argument(
        "--html", help="an existing build made by bookbrowser.build_test_book (skip the build)"
    )
    parser.add_argument(
        "--width", type=int, action="append", help="viewport width in px (repeatable; default 1280)"
    )
    parser.add_argument(
        "--page", action="append", help="only this page, e.g. book/09_in_practice.html (repeatable)"
    )
    parser.add_argument(
        "--dark", action="store_true", help="also the chapters in dark mode at 1280 px"
    )
    args = parser.parse_args(argv)
    missing = bookbrowser.missing_tools()
    if missing:
        print(f"missing {', '.join(missing)}; {bookbrowser.INSTALL_HINT}", file=sys.stderr)
        return 2
    start = time.time()
    html = (
        Path(args.html)
        if args.html
        else bookbrowser.build_test_book(Path(tempfile.mkdtemp(prefix="klnotes-book-")))
    )
    print(f"book: {html} ({time.time() - start:.0f} s)")
    out = Path(args.out)
    report = bookbrowser.measure_book(
        html,
        bookbrowser.find_mathjax(),
        widths=tuple(args.width or [1280]),
        only=args.page,
        screenshots=out,
        dark=args.dark,
    )
    shots = sorted(out.glob("*.png"))
    n_pages = len(
        [page for page in report if "?q=" not in page and not page.startswith(bookbrowser.DARK)]
    )
    print(f"{len(shots)} screenshots of {n_pages} pages in {out} ({time.time() - start:.0f} s)")
    for check, issues in bookbrowser.problems(report, html).items():
        print(f"{check}: {len(issues)} problem(s)")
        for issue in issues:
            print(f"  {issue}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
