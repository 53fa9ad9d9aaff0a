"""Read the built book the way a reader does: in headless Chromium, at a desktop and a phone width.

Used by ``tests/test_book_browser.py`` (which asserts on what is measured here) and by
``scripts/screenshots.py`` (which writes a PNG of every page). Nothing here downloads a browser:
it drives the system's Chromium (Debian package ``chromium``) through Playwright's
``executable_path``, and MathJax is served from a local copy of the version the book pins in
``_config.yml`` (npm packages ``mathjax`` and its font ``@mathjax/mathjax-newcm-font``, both in
``node_modules/``), wired in through Sphinx's ``mathjax_path`` and MathJax's font path for the
test build only; the published book loads the same version from the CDN.

    build_test_book(out)                 jupyter-book build with mathjax_path -> the local copy
    serve(html_dir, mathjax_dir)         a local HTTP server for the build and MathJax
    measure_book(html_dir, mathjax_dir)  every page at 1280 px and 400 px -> {page: {width: facts}}
    problems(report)                     the facts turned into one to-do list per defect class
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = (1280, 400)  # desktop (the checked layout) and a phone
DESKTOP = 1280
MIN_FIGURE_SCALE = 0.85  # a figure may be shown at no less than 85% of its natural width
MATHJAX_URL_PATH = "/_mathjax/"  # where the test server serves the local MathJax copy


def pinned_mathjax(config_file: Path = ROOT / "_config.yml") -> str:
    """The MathJax version the book pins: the ``mathjax@X.Y.Z`` in ``_config.yml``'s ``mathjax_path``.

    Raises:
        ValueError: if ``mathjax_path`` names no exact version.
    """
    match = re.search(r"mathjax_path:.*mathjax@(\d+\.\d+\.\d+)/", Path(config_file).read_text())
    if match is None:
        raise ValueError(f"{config_file}: mathjax_path must pin an exact version (mathjax@X.Y.Z)")
    return match.group(1)


INSTALL_HINT = (
    "the browser test needs Debian's Chromium, a local MathJax and Playwright: "
    f"`apt-get install -y chromium && npm install --no-save mathjax@{pinned_mathjax()} && pip install playwright` "
    "(from the repository root; .ci/run does this)"
)


def find_chromium() -> str | None:
    """Path of the system Chromium (``$KLNOTES_CHROMIUM`` first), or None."""
    for name in (os.environ.get("KLNOTES_CHROMIUM"), "chromium", "chromium-browser"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def find_mathjax() -> Path | None:
    """The ``node_modules`` folder holding the pinned MathJax (``mathjax/tex-mml-chtml.js``, version
    :func:`pinned_mathjax`) and its font (``@mathjax/``); ``$KLNOTES_MATHJAX`` first; or None."""
    import json

    for folder in (os.environ.get("KLNOTES_MATHJAX"), ROOT / "node_modules"):
        package = Path(folder or "/nonexistent") / "mathjax" / "package.json"
        if (
            folder
            and package.is_file()
            and (package.parent / "tex-mml-chtml.js").is_file()
            and json.loads(package.read_text()).get("version") == pinned_mathjax()
            and (Path(folder) / "@mathjax").is_dir()
        ):
            return Path(folder)
    return None


def have_playwright() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


def missing_tools() -> list[str]:
    """What of Chromium, MathJax and Playwright is missing (empty when the browser test can run)."""
    missing = []
    if find_chromium() is None:
        missing.append("chromium (apt-get install -y chromium)")
    if find_mathjax() is None:
        missing.append(
            f"MathJax {pinned_mathjax()} (npm install --no-save mathjax@{pinned_mathjax()})"
        )
    if not have_playwright():
        missing.append("playwright (pip install playwright)")
    return missing


def build_test_book(out: Path) -> Path:
    """Build the book into ``out`` with MathJax loaded from the test server; return the HTML folder.

    The configuration is ``_config.yml`` with one addition, ``mathjax_path``, written to a copy so
    the published build is untouched.
    """
    import yaml

    out = Path(out)
    shutil.rmtree(out / "_build", ignore_errors=True)  # no stale pages from an earlier build
    out.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    sphinx = config.setdefault("sphinx", {})
    sphinx.setdefault("config", {})["mathjax_path"] = MATHJAX_URL_PATH + "mathjax/tex-mml-chtml.js"
    mathjax_config = sphinx["config"].setdefault("mathjax3_config", {})
    mathjax_config.setdefault("loader", {}).setdefault("paths", {})["fonts"] = (
        MATHJAX_URL_PATH + "@mathjax"
    )
    # local extension folders are relative to the configuration file: make them absolute
    sphinx["local_extensions"] = {
        name: str(ROOT / folder) for name, folder in (sphinx.get("local_extensions") or {}).items()
    }
    config_path = out / "_config_browser_test.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [
        str(jb) if jb.exists() else "jupyter-book",
        "build",
        str(ROOT),
        "--config",
        str(config_path),
        "--path-output",
        str(out),
        "--all",
        "-q",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    html = out / "_build" / "html"
    if result.returncode != 0 or not (html / "index.html").is_file():
        raise RuntimeError(
            f"test build failed ({' '.join(cmd)}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return html


class _Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, html_dir: Path, mathjax_dir: Path, **kwargs):
        self._mathjax_dir = mathjax_dir
        super().__init__(*args, directory=str(html_dir), **kwargs)

    def translate_path(self, path):
        clean = urllib.parse.urlsplit(path).path
        if clean.startswith(MATHJAX_URL_PATH):
            rel = urllib.parse.unquote(clean[len(MATHJAX_URL_PATH) :])
            target = (self._mathjax_dir / rel).resolve()
            if self._mathjax_dir.resolve() in target.parents:
                return str(target)
        return super().translate_path(path)

    def log_message(self, *args):  # quiet
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(
            sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)
        ):  # a page left mid-load
            super().handle_error(request, client_address)


def serve(html_dir: Path, mathjax_dir: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve ``html_dir`` (and MathJax under ``/_mathjax/``) on a free local port; (server, base URL)."""
    handler = functools.partial(_Handler, html_dir=Path(html_dir), mathjax_dir=Path(mathjax_dir))
    server = _Server(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def pages(html_dir: Path) -> list[str]:
    """Every HTML page of the build, as paths relative to ``html_dir`` (static files and redirect
    pages such as the root ``index.html`` excluded)."""
    html_dir = Path(html_dir)
    return sorted(
        p.relative_to(html_dir).as_posix()
        for p in html_dir.rglob("*.html")
        if not p.relative_to(html_dir).parts[0].startswith("_")
        and p.relative_to(html_dir).parts[0] != "slides"  # tests/test_slides.py reads them
        and 'http-equiv="Refresh"' not in p.read_text(errors="replace")[:2000]
    )


# One evaluation per page: what a reader sees, in numbers. Widths in CSS pixels.
_MEASURE_JS = r"""
async () => {
  if (document.querySelector('script[src*="tex-mml-chtml"]')) {
    for (let i = 0; i < 200 && !(window.MathJax && MathJax.startup && MathJax.startup.promise); i++)
      await new Promise(r => setTimeout(r, 50));
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  }
  await document.fonts.ready;   // MathJax's web fonts change the widths measured below
  await Promise.all([...document.images].map(img => img.complete ? null :
      new Promise(r => { img.onload = img.onerror = r; })));
  const article = document.querySelector('article.bd-article') || document.body;
  const cs = getComputedStyle(article);
  const aRect = article.getBoundingClientRect();
  const colLeft = aRect.left + parseFloat(cs.paddingLeft);
  const colRight = aRect.right - parseFloat(cs.paddingRight);
  const column = colRight - colLeft;
  const r1 = x => Math.round(x * 10) / 10;
  const where = el => {   // a name for an element a reader can find
    const cell = el.closest('.cell');
    const sec = el.closest('section[id]');
    let s = sec ? '#' + sec.id : '';
    if (cell) {
      const cells = [...document.querySelectorAll('.cell')];
      s += ` code cell ${cells.indexOf(cell) + 1}`;
    }
    return s;
  };
  const out = {title: document.title, column: r1(column), viewport: innerWidth,
               scrollWidth: document.documentElement.scrollWidth, equations: [], figures: [],
               tables: [], truncations: [], labels: [], headings: [], links: [], ids: [], mathErrors: []};
  // display equations
  for (const div of article.querySelectorAll('div.math')) {
    const math = div.querySelector('mjx-container mjx-math');
    const eqno = div.querySelector('.eqno');
    const name = eqno ? eqno.firstChild.textContent.trim() : (div.id ? '#' + div.id : where(div));
    if (!math) { out.equations.push({name, typeset: false}); continue; }
    const m = math.getBoundingClientRect();
    const d = div.getBoundingClientRect();
    const need = m.width + (eqno ? eqno.getBoundingClientRect().width + 8 : 0);
    const avail = Math.min(d.right, colRight) - Math.max(d.left, colLeft);
    const ox = getComputedStyle(div).overflowX;
    out.equations.push({name, typeset: true, width: r1(need), available: r1(avail),
                        scrolls: (ox === 'auto' || ox === 'scroll') && div.getBoundingClientRect().right <= colRight + 1});
  }
  for (const e of document.querySelectorAll('mjx-merror'))
    out.mathErrors.push((e.getAttribute('data-mjx-error') || e.textContent).slice(0, 120));
  // figures: images of the page's content (theme logos and remote badges excluded)
  for (const img of article.querySelectorAll('img')) {
    if (/^https?:/.test(img.getAttribute('src') || '') && !img.src.startsWith(location.origin)) continue;
    const r = img.getBoundingClientRect();
    const natural = img.hasAttribute('width') && !/%/.test(img.getAttribute('width'))
        ? parseFloat(img.getAttribute('width')) : img.naturalWidth;
    const cap = img.closest('figure') && img.closest('figure').querySelector('figcaption');
    out.figures.push({name: (img.getAttribute('src') || '').split('/').pop() + ' (' + where(img).trim()
                        + (cap ? ', "' + cap.textContent.trim().slice(0, 40) + '"' : '') + ')',
                      loaded: img.complete && img.naturalWidth > 0, width: r1(r.width), natural,
                      right: r1(r.right - colRight), left: r1(colLeft - r.left)});
  }
  // tables (pandas outputs, markdown tables, autodoc field lists are not tables)
  for (const t of article.querySelectorAll('table')) {
    if (t.closest('mjx-container')) continue;
    const r = t.getBoundingClientRect();
    const head = [...t.querySelectorAll('th')].slice(0, 3).map(h => h.textContent.trim()).join('|');
    out.tables.push({name: `table [${head.slice(0, 50)}] (${where(t).trim()})`, width: r1(r.width),
                     right: r1(r.right - colRight), height: Math.round(r.height)});
  }
  // numbers hidden behind truncation: "…" / "..." in outputs and table cells, CSS ellipsis
  const outputs = article.querySelectorAll('.cell_output, table');
  for (const o of outputs) {
    const walker = document.createTreeWalker(o, NodeFilter.SHOW_TEXT);
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
      const t = n.textContent;
      // a cut word ("use_kl_l...", "0.12…"), an elided column ("0.1  ...  0.3") or row ("...  ...")
      for (const line of t.split('\n')) {
        if (/…|[\w)\]}]\.\.\.(?=\s|$|\|)|\S\s+\.\.\.\s|^\s*\.\.\.(\s+\.\.\.)+\s*$|^\s*\.\.\.\s*$/.test(line))
          out.truncations.push(`${where(n.parentElement).trim()}: "${line.trim().slice(0, 70)}"`);
      }
    }
  }
  for (const el of article.querySelectorAll('td, th, pre, p, span, div')) {
    const s = getComputedStyle(el);
    if (s.textOverflow === 'ellipsis' && el.scrollWidth > el.clientWidth + 1)
      out.truncations.push(`${where(el).trim()}: CSS ellipsis hides "${el.textContent.trim().slice(0, 40)}"`);
  }
  // raw labels in rendered text (code input cells and math excluded)
  const walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
  const rawLabel = /\beq-[0-9a-z][\w-]*|\{(?:prf:ref|eq|numref|ref|doc|cite(?::[a-z]+)?)\}|\(\d+-(?!based\)|indexed\)|dim|step|shot|bit)[a-z][\w-]*\)|\(eq[:-][\w-]+\)/g;
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const p = n.parentElement;
    if (!p || p.closest('.cell_input, script, style, mjx-container, .headerlink, .MathJax')) continue;
    for (const m of n.textContent.matchAll(rawLabel))
      out.labels.push(`${where(p).trim()}: "${m[0]}" in "${n.textContent.trim().slice(0, 60)}"`);
  }
  // titles and navigation text (for doubled chapter numbers)
  out.headings.push(document.title);
  for (const el of document.querySelectorAll('h1, h2, nav a, .prev-next-area a, .bd-sidebar a, header a'))
    out.headings.push(el.textContent.replace(/\s+/g, ' ').trim());
  // links and anchors
  for (const a of document.querySelectorAll('a[href]')) {
    const href = a.getAttribute('href');
    if (!href || href.startsWith('javascript:') || href.startsWith('mailto:')) continue;
    let u; try { u = new URL(href, location.href); } catch (e) { out.links.push({bad: href}); continue; }
    if (u.origin !== location.origin) continue;
    out.links.push({path: decodeURIComponent(u.pathname), hash: decodeURIComponent(u.hash.slice(1)),
                    text: a.textContent.trim().slice(0, 40)});
  }
  // what makes the page itself scroll sideways (content inside a scrolling box does not count)
  out.sideways = [];
  if (document.documentElement.scrollWidth > innerWidth + 1) {
    const clips = el => { for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
        const o = getComputedStyle(a).overflowX; if (o === 'auto' || o === 'scroll' || o === 'hidden') return true; }
      return false; };
    for (const el of article.querySelectorAll('*')) {
      const r = el.getBoundingClientRect();
      if (r.right <= innerWidth + 1 || r.width === 0 || clips(el)) continue;
      const p = el.parentElement;
      if (p && p !== article && p.getBoundingClientRect().right > innerWidth + 1 && !clips(p)) continue;
      out.sideways.push(`<${el.tagName.toLowerCase()}${el.className && typeof el.className === 'string' ?
          ' class="' + el.className.split(' ').slice(0, 2).join(' ') + '"' : ''}> ${where(el).trim()} `
          + `reaches ${Math.round(r.right)} px`);
      if (out.sideways.length >= 5) break;
    }
  }
  // a box that scrolls sideways by itself (then what is inside it does not push the page)
  const scrollBox = el => { for (let a = el.parentElement; a && a !== article; a = a.parentElement) {
      const o = getComputedStyle(a).overflowX; if (o === 'auto' || o === 'scroll') return a; } return null; };
  // text outputs wider than their box (a reader would have to scroll to see the end of a line)
  out.outputs = [];
  for (const pre of article.querySelectorAll('.cell_output pre')) {
    if (pre.scrollWidth > pre.clientWidth + 1)
      out.outputs.push(`${where(pre).trim()}: a text output holds ${pre.scrollWidth} px in a ${pre.clientWidth} px box: `
                       + `"${pre.textContent.split('\n').sort((a, b) => b.length - a.length)[0].trim().slice(0, 60)}"`);
  }
  // code cells: how many monospace characters a line may have, and the lines that are longer
  out.code = {capacity: null, wide: 0, cells: 0, longest: 0};
  for (const pre of article.querySelectorAll('.cell_input pre')) {
    const probe = document.createElement('span');
    probe.textContent = '0'.repeat(100);
    pre.appendChild(probe);
    const ch = probe.getBoundingClientRect().width / 100;
    probe.remove();
    const ps = getComputedStyle(pre);
    const inner = pre.clientWidth - parseFloat(ps.paddingLeft) - parseFloat(ps.paddingRight);
    const capacity = Math.floor(inner / ch);
    const longest = Math.max(...pre.textContent.split('\n').map(l => l.length));
    out.code.capacity = out.code.capacity === null ? capacity : Math.min(out.code.capacity, capacity);
    out.code.cells += 1;
    out.code.longest = Math.max(out.code.longest, longest);
    if (pre.scrollWidth > pre.clientWidth + 1) out.code.wide += 1;
  }
  // inline math that runs past the column outside any scrolling box (it must wrap)
  out.inlineMath = [];
  for (const m of article.querySelectorAll('mjx-container:not([display="true"])')) {
    if (m.closest('div.math, .cell_input, table') || scrollBox(m)) continue;
    const r = m.getBoundingClientRect();
    if (r.right > colRight + 1)
      out.inlineMath.push(`${where(m).trim()}: inline math reaches ${Math.round(r.right - colRight)} px past the column`);
  }
  // tables: a table may be wider than the column only inside its own scrolling box, and no cell's
  // content may spill into its neighbour (overlapping columns)
  out.tableBoxes = [];
  for (const t of article.querySelectorAll('table')) {
    if (t.closest('mjx-container')) continue;
    const head = [...t.querySelectorAll('th')].slice(0, 2).map(h => h.textContent.trim()).join('|').slice(0, 40);
    const r = t.getBoundingClientRect();
    const box = scrollBox(t);
    const boxRight = box ? box.getBoundingClientRect().right : r.right;
    if (boxRight > colRight + 1)
      out.tableBoxes.push(`table [${head}] (${where(t).trim()}) reaches ${Math.round(boxRight - colRight)} px past the column`);
    for (const cell of t.querySelectorAll('td, th')) {
      if (cell.scrollWidth > cell.clientWidth + 2) {
        out.tableBoxes.push(`table [${head}] (${where(t).trim()}): cell "${cell.textContent.trim().slice(0, 30)}" spills `
                            + `${cell.scrollWidth - cell.clientWidth} px into its neighbour`);
        break;
      }
    }
  }
  // dark mode: text of tables readable on its background, figures on a light paper
  const rgb = c => (c.match(/[\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => { const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  const background = el => { for (let a = el; a; a = a.parentElement) { const c = rgb(getComputedStyle(a).backgroundColor);
      if (c.length >= 3 && (c.length < 4 || c[3] > 0.5)) return c; } return [255, 255, 255]; };
  out.theme = document.documentElement.dataset.theme || 'light';
  out.contrast = [];
  for (const cell of article.querySelectorAll('table td, table th')) {
    if (!cell.textContent.trim()) continue;
    const fg = lum(rgb(getComputedStyle(cell).color)), bg = lum(background(cell));
    const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
    if (ratio < 4.5) { out.contrast.push(`table cell "${cell.textContent.trim().slice(0, 30)}" (${where(cell).trim()}): `
                                          + `contrast ${ratio.toFixed(1)} < 4.5`); break; }
  }
  for (const img of article.querySelectorAll('.cell_output img, figure img')) {
    const bg = lum(background(img));
    if (out.theme === 'dark' && bg < 0.8)
      out.contrast.push(`figure ${(img.getAttribute('src') || '').split('/').pop()} (${where(img).trim()}) `
                        + `lies on a dark background (luminance ${bg.toFixed(2)}): its dark labels are illegible`);
  }
  // search boxes a reader sees (one is enough)
  out.searchBoxes = [...document.querySelectorAll('.search-button-field, form.bd-search')].filter(e => {
      const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0
          && getComputedStyle(e).visibility !== 'hidden'; }).length;
  out.ids = [...document.querySelectorAll('[id]')].map(e => e.id)
      .concat([...document.querySelectorAll('a[name]')].map(e => e.getAttribute('name')));
  return out;
}
"""


SEARCH = "gradient coefficient"  # a query whose results cite equations
RANKED_SEARCH = "k3"  # a query that the API reference answers many times: chapters come first


DARK = "dark:"  # report key prefix of the pages measured in dark mode


def measure_book(
    html_dir: Path,
    mathjax_dir: Path,
    widths=WIDTHS,
    only=None,
    screenshots: Path | None = None,
    search: str | None = SEARCH,
    dark: bool = True,
):
    """Open every page at each width in one headless Chromium; return ``{page: {width: facts}}``.

    ``facts`` is what ``_MEASURE_JS`` returns plus ``errors``: JavaScript exceptions, console
    errors and failed local requests. With ``screenshots``, a full-page PNG of each page is written
    there at each width (``<page>-<width>.png``). With ``search``, the search page's results for that
    query are recorded too, under ``"search.html?q=<query>"`` (``snippets``: the text of each result).
    With ``dark``, the chapter pages are measured once more at 1280 px with the reader's system in
    dark mode (the theme follows it), under ``"dark:<page>"``.
    """
    from playwright.sync_api import sync_playwright

    server, base = serve(html_dir, mathjax_dir)
    report: dict[str, dict[int, dict]] = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=find_chromium(),
                args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
            )
            try:
                passes = [(w, "light") for w in widths]
                if dark:
                    passes.append((DESKTOP, "dark"))
                for width, scheme in passes:
                    context = browser.new_context(
                        viewport={"width": width, "height": 900}, color_scheme=scheme
                    )
                    # Only the local server answers: remote badges and fonts are refused, not waited for.
                    context.route(
                        "**/*",
                        lambda route: (
                            route.continue_()
                            if route.request.url.startswith(base)
                            else route.abort()
                        ),
                    )
                    page = context.new_page()
                    errors: list[str] = []
                    page.on("pageerror", lambda exc: errors.append(f"JavaScript error: {exc}"))
                    page.on(
                        "console",
                        lambda msg: (
                            errors.append(f"console error: {msg.text}")
                            if msg.type == "error"
                            and (msg.location or {}).get("url", base).startswith(base)
                            and "Failed to load resource" not in msg.text
                            else None
                        ),
                    )
                    # (a request cut short by leaving the page, net::ERR_ABORTED, is not a defect)
                    page.on(
                        "requestfailed",
                        lambda req: (
                            errors.append(
                                f"failed to load {req.url[len(base) - 1 :]} ({req.failure})"
                            )
                            if req.url.startswith(base) and "ABORTED" not in (req.failure or "")
                            else None
                        ),
                    )
                    page.on(
                        "response",
                        lambda resp: (
                            errors.append(f"HTTP {resp.status} for {resp.url[len(base) - 1 :]}")
                            if resp.url.startswith(base) and resp.status >= 400
                            else None
                        ),
                    )
                    for query in (
                        [search, RANKED_SEARCH]
                        if width == DESKTOP and search and scheme == "light"
                        else []
                    ):
                        errors.clear()
                        page.goto(
                            base + "search.html?q=" + urllib.parse.quote(query), wait_until="load"
                        )
                        page.wait_for_function(
                            "() => { const s = document.querySelector('#search-results p.search-summary');"
                            " return s && s.textContent.trim().length > 0; }",
                            timeout=60000,
                        )
                        snippets = page.eval_on_selector_all(
                            "#search-results li", "els => els.map(e => e.textContent)"
                        )
                        links = page.eval_on_selector_all(
                            "#search-results li",
                            "els => els.map(e => (e.querySelector('a') || {href: ''}).href)",
                        )
                        report.setdefault("search.html?q=" + query, {})[width] = {
                            "snippets": snippets,
                            "links": links,
                            "errors": list(dict.fromkeys(errors)),
                        }
                    names = only or pages(html_dir)
                    if scheme == "dark":
                        names = [n for n in names if re.match(r"book/\d\d_", n)] or names[:1]
                    for name in names:
                        errors.clear()
                        page.goto(base + name, wait_until="load")
                        facts = page.evaluate(_MEASURE_JS)
                        facts["errors"] = list(dict.fromkeys(errors))
                        key = name if scheme == "light" else DARK + name
                        report.setdefault(key, {})[width] = facts
                        if screenshots is not None:
                            Path(screenshots).mkdir(parents=True, exist_ok=True)
                            suffix = f"{width}" if scheme == "light" else f"{width}-dark"
                            shot = (
                                Path(screenshots)
                                / f"{name.removesuffix('.html').replace('/', '_')}-{suffix}.png"
                            )
                            page.screenshot(path=str(shot), full_page=True)
                    context.close()
            finally:
                browser.close()
    finally:
        server.shutdown()
    return report


_RAW_TEX = re.compile(r"\\[()\[\]]|\\[A-Za-z]{2,}|\$\$")
_DOUBLED = re.compile(r"(?:^|\s)(\d+)\.\s+\1\.(?:\s|$)")


def problems(report: dict, html_dir: Path) -> dict[str, list[str]]:
    """Turn ``measure_book``'s facts into one list of "page: what is wrong, by how much" per check."""
    html_dir = Path(html_dir)
    out: dict[str, list[str]] = {
        k: []
        for k in (
            "javascript",
            "equations",
            "figures",
            "tables",
            "truncation",
            "labels",
            "chapter numbers",
            "links",
            "phone",
            "search",
            "outputs",
            "code lines",
            "phone equations",
            "phone inline math",
            "phone tables",
            "phone figures",
            "dark mode",
            "search boxes",
        )
    }
    ids = {
        name: set(by_width[min(by_width)]["ids"])
        for name, by_width in report.items()
        if "ids" in by_width[min(by_width)]
    }
    doubled: dict[str, set[str]] = {}
    for name, by_width in report.items():
        if name.startswith(DARK):
            for width, f in by_width.items():
                out["javascript"] += [f"{name} @{width}px: {e}" for e in f["errors"]]
                if f.get("theme") != "dark":
                    out["dark mode"].append(
                        f"{name}: the page did not switch to dark mode (theme {f.get('theme')!r})"
                    )
                out["dark mode"] += [f"{name}: {c}" for c in f.get("contrast", [])]
            continue
        for width, f in sorted(by_width.items()):
            if "snippets" in f:  # the search page's results
                out["javascript"] += [f"{name} @{width}px: {e}" for e in f["errors"]]
                if not f["snippets"]:
                    out["search"].append(f"{name}: no results")
                for snippet in f["snippets"]:
                    tex = _RAW_TEX.findall(snippet)
                    if tex:
                        out["search"].append(
                            f"{name}: raw TeX {tex[:3]} in the result {snippet.strip()[:100]!r}"
                        )
                continue
            for e in f["errors"]:
                out["javascript"].append(f"{name} @{width}px: {e}")
            for e in f["mathErrors"]:
                out["equations"].append(f"{name} @{width}px: TeX error {e!r}")
            for h in f["headings"]:
                if _DOUBLED.search(h):
                    doubled.setdefault(h, set()).add(name)
            if (
                f.get("searchBoxes", 0) > 1 and name != "search.html"
            ):  # the search page is a search form
                out["search boxes"].append(f"{name} @{width}px: {f['searchBoxes']} search boxes")
            if width == DESKTOP:
                out["outputs"] += [f"{name}: {o}" for o in f.get("outputs", [])]
                code = f.get("code") or {}
                if code.get("wide"):
                    out["code lines"].append(
                        f"{name}: {code['wide']} of {code['cells']} code cells have lines wider "
                        f"than the column ({code['capacity']} characters; longest line "
                        f"{code['longest']})"
                    )
            else:
                out["phone inline math"] += [
                    f"{name} @{width}px: {m}" for m in f.get("inlineMath", [])
                ]
                out["phone tables"] += [f"{name} @{width}px: {t}" for t in f.get("tableBoxes", [])]
                for e in f["equations"]:  # too wide for a phone: it must scroll inside its own box
                    if e["typeset"] and e["width"] > e["available"] + 0.5 and not e.get("scrolls"):
                        out["phone equations"].append(
                            f"{name} @{width}px: equation {e['name']} needs {e['width']:.0f} px, the column has "
                            f"{e['available']:.0f} px: cut off by {e['width'] - e['available']:.0f} px"
                        )
                for g in f["figures"]:
                    if (
                        g["loaded"]
                        and g["natural"]
                        and g["width"] < MIN_FIGURE_SCALE * g["natural"]
                    ):
                        out["phone figures"].append(
                            f"{name} @{width}px: figure {g['name']} shrunk to {g['width']:.0f} of "
                            f"{g['natural']:.0f} px "
                            f"({100 * g['width'] / g['natural']:.0f}%): its labels are too small to read"
                        )
            if width != DESKTOP and f["scrollWidth"] > f["viewport"] + 1:
                out["phone"].append(
                    f"{name} @{width}px: the page scrolls sideways ({f['scrollWidth']} px wide): "
                    + "; ".join(f["sideways"])
                )
            if width == DESKTOP:
                col = f["column"]
                for e in f["equations"]:
                    if not e["typeset"]:
                        out["equations"].append(
                            f"{name}: equation {e['name']} was not typeset by MathJax"
                        )
                    elif e["width"] > e["available"] + 0.5:
                        out["equations"].append(
                            f"{name}: equation {e['name']} needs {e['width']:.0f} px (with its number), "
                            f"column has {e['available']:.0f} px: {e['width'] - e['available']:.0f} px too wide"
                        )
                for g in f["figures"]:
                    if not g["loaded"]:
                        out["figures"].append(f"{name}: figure {g['name']} did not load")
                        continue
                    if g["right"] > 0.5 or g["left"] > 0.5:
                        out["figures"].append(
                            f"{name}: figure {g['name']} sticks out of the {col:.0f} px column "
                            f"by {max(g['right'], g['left']):.0f} px"
                        )
                    if g["natural"] and g["width"] < MIN_FIGURE_SCALE * g["natural"]:
                        out["figures"].append(
                            f"{name}: figure {g['name']} shown at {g['width']:.0f} of {g['natural']:.0f} px "
                            f"({100 * g['width'] / g['natural']:.0f}% < {100 * MIN_FIGURE_SCALE:.0f}%): "
                            f"draw it at most {col / MIN_FIGURE_SCALE:.0f} px wide"
                        )
                for t in f["tables"]:
                    if t["right"] > 0.5:
                        out["tables"].append(
                            f"{name}: {t['name']} is {t['width']:.0f} px wide, "
                            f"{t['right']:.0f} px wider than the {col:.0f} px column"
                        )
                for t in f["truncations"]:
                    out["truncation"].append(f"{name}: truncated output {t}")
            for lab in f["labels"]:
                if width == DESKTOP:
                    out["labels"].append(f"{name}: raw label {lab}")
            if width == DESKTOP:
                for link in f["links"]:
                    if "bad" in link:
                        out["links"].append(f"{name}: malformed link {link['bad']!r}")
                        continue
                    target = link["path"].lstrip("/") or "index.html"
                    if target.endswith("/"):
                        target += "index.html"
                    if not (html_dir / target).exists():
                        out["links"].append(
                            f"{name}: link {link['text']!r} -> /{target}: no such file"
                        )
                    elif link["hash"] and target in ids and link["hash"] not in ids[target]:
                        out["links"].append(
                            f"{name}: link {link['text']!r} -> /{target}#{link['hash']}: "
                            f"no such anchor"
                        )
    for text, where in sorted(doubled.items()):
        out["chapter numbers"].append(
            f"doubled chapter number in {text!r} (title or navigation of "
            f"{len(where)} pages, e.g. {sorted(where)[0]})"
        )
    return out
