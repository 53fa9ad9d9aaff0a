"""The book's results tables: one object that reads well in a notebook, on the web and in the PDF.

:func:`table` turns a data frame into a :class:`Table` with a caption, readable headers and
numbers formatted per column. A notebook (Jupyter, Colab) shows its HTML (``_repr_html_``); the book
renders its MyST Markdown (``_repr_markdown_``): a ``list-table`` with a caption and a label, which
Sphinx numbers ("Table 2.1") on the web and writes as a real LaTeX table in the PDF (``_config.yml``
gives ``text/markdown`` the first place in myst-nb's mime priority for both builders).

Numbers never break across lines: a minus is U+2212 and the spaces inside a formatted number
("1.000 ± 0.002") are no-break spaces, so no browser or TeX line breaker can split them.
"""

from __future__ import annotations

import html
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Table", "table", "number"]

MINUS = "\u2212"
NBSP = "\u00a0"
_LABEL = re.compile(r"^tab-[0-9a-z][0-9a-z-]*$")
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+\-.!|~:$&])")

Formatter = str | Callable[[object], str]


def number(value, spec: str = ".3g", na: str = "\u2013") -> str:
    """``value`` formatted with ``spec`` (``"{:.2e}"``-style without braces), unbreakable.

    The number format of the chapters' tables (e.g. :doc:`chapter 2 </book/02_value_estimation>`);
    no formula.

    ``number(-1.5e-16, ".1e")`` gives ``"−1.5e−16"`` (U+2212 minus signs); NaN and None give ``na``;
    strings pass through with their spaces made no-break.
    """
    if value is None or (isinstance(value, float) and value != value):
        return na
    text = value if isinstance(value, str) else format(value, spec)
    return unbreakable(text)


def unbreakable(text: str) -> str:
    """``text`` with hyphen-minus signs made U+2212 where they are minus signs (before a digit) and
    spaces made no-break spaces: ``"1.0 ± -2e-3"`` -> ``"1.0 ± −2e−3"`` that never wraps."""
    text = re.sub(r"(?<![A-Za-z_])-(?=[\d.])|(?<=\de)-(?=\d)", MINUS, str(text))
    return text.replace(" ", NBSP)


def _is_number(v) -> bool:
    return isinstance(v, numbers.Number) and not isinstance(v, bool)


def _formatter(spec: Formatter | None) -> Callable[[object], str]:
    """The cell writer for ``spec``; a format applies to numbers only, other cells are ``str``."""
    if spec is None:
        return lambda v: number(v) if isinstance(v, float) else ("\u2013" if v is None else str(v))
    if callable(spec):
        return lambda v: unbreakable(spec(v))
    if "{" in spec:

        def write(v):
            if v is None or (_is_number(v) and v != v):
                return number(v, na="\u2013")
            return unbreakable(spec.format(v)) if _is_number(v) else str(v)

        return write
    return lambda v: number(v, spec) if _is_number(v) else ("\u2013" if v is None else str(v))


def md_escape(text: str) -> str:
    """``text`` with every Markdown-special ASCII character backslash-escaped (CommonMark allows
    escaping any ASCII punctuation), so that a cell is shown as written and never parsed as a list,
    emphasis, a role or math."""
    return _MD_SPECIAL.sub(r"\\\1", str(text))


def _unescape(text: str) -> str:
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", text)


@dataclass(frozen=True)
class Table:
    """A captioned results table: ``header`` (column titles, MyST: ``$c(u)$`` is math), ``rows``
    (cells as formatted text).

    The results tables of every chapter (e.g. :doc:`chapter 2 </book/02_value_estimation>`'s
    ``tab-2-moments``); no formula.

    ``label`` (``tab-<chapter>-<name>``) lets the text refer to it by number (MyST ``numref`` role);
    a cell holding several lines (``"a\\nb"``) shows them one under the other;
    columns in ``math`` hold TeX shown as inline math, columns in ``code`` are shown as code; cells
    of columns in ``wrap`` may break between words, all others never wrap.
    """

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str
    label: str | None = None
    math: tuple[int, ...] = ()
    code: tuple[int, ...] = ()
    wrap: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.caption.strip():
            raise ValueError("a table needs a caption (what it shows, with units)")
        if self.label is not None and not _LABEL.match(self.label):
            raise ValueError(
                f"table label {self.label!r} must look like 'tab-2-bias' "
                "(tab-, lower-case letters, digits and dashes)"
            )
        bad = [i for i, r in enumerate(self.rows) if len(r) != len(self.header)]
        if bad:
            raise ValueError(
                f"rows {bad} have a number of cells other than the "
                f"{len(self.header)} columns {list(self.header)}"
            )

    # --- the three renderings ------------------------------------------------------------------

    def _cell_md(self, j: int, text: str) -> str:
        """One cell in MyST; a cell with several lines gets a hard line break between them."""
        if "\n" in text:
            return "\\\n    ".join(self._cell_md(j, line) for line in text.split("\n"))
        if j in self.math and text not in ("", "\u2013"):
            return f"${text}$"
        if j in self.code and text:
            return "``" + text.replace(NBSP, " ") + "``"
        return md_escape(text) if text else "\u2013"

    def _repr_markdown_(self) -> str:
        """MyST: a ``list-table`` with the caption as its title and the label as its name."""
        classes = "klnotes-table" + (" klnotes-table-wraps" if self.wrap else "")
        lines = [f":::{{list-table}} {self.caption}", ":header-rows: 1", f":class: {classes}"]
        if self.label:
            lines.append(f":name: {self.label}")
        if self.wrap:  # give the wrapping columns the room: widths by their longest cell
            longest = [
                max(len(line) for r in (self.header, *self.rows) for line in r[j].split("\n"))
                for j in range(len(self.header))
            ]
            widths = [min(max(n, 6), 40) for n in longest]
            lines.append(":widths: " + " ".join(str(w) for w in widths))
        lines.append("")
        for cells in (self.header, *self.rows):
            is_header = cells is self.header
            for j, text in enumerate(cells):
                cell = text if is_header else self._cell_md(j, text)
                lines.append(("* - " if j == 0 else "  - ") + cell)
        return "\n".join([*lines, ":::"]) + "\n"

    def _repr_html_(self) -> str:
        """HTML for a notebook (Jupyter, Colab): caption on top, numbers that never wrap, and a box
        that scrolls sideways by itself when the table is wider than the screen."""

        def cell(tag: str, j: int, text: str) -> str:
            style = "" if j in self.wrap else ' style="white-space:nowrap"'
            body = html.escape(text)
            if tag == "th":
                body = re.sub(r"\$([^$]+)\$", r"\\(\1\\)", _unescape(body))
            elif j in self.math and text not in ("", "\u2013"):
                body = "\\(" + body + "\\)"
            elif j in self.code:
                body = "<br>".join(f"<code>{line}</code>" for line in body.split("\n"))
            return f"<{tag}{style}>{body.replace(chr(10), '<br>')}</{tag}>"

        head = "".join(cell("th", j, t) for j, t in enumerate(self.header))
        body = "".join(
            "<tr>" + "".join(cell("td", j, t) for j, t in enumerate(r)) + "</tr>" for r in self.rows
        )
        return (
            f'<div class="klnotes-table mathjax_process" style="overflow-x:auto">'
            f'<table class="dataframe"><caption>{html.escape(self.caption)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
        )

    def __repr__(self) -> str:
        """Plain text: the caption and the columns aligned (what a terminal shows)."""
        cells = [[_unescape(c).replace(NBSP, " ") for c in r] for r in (self.header, *self.rows)]
        widths = [max(len(r[j]) for r in cells) for j in range(len(self.header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
        return "\n".join([self.caption, *lines])


def table(
    frame,
    caption: str,
    *,
    label: str | None = None,
    headers: Mapping[str, str] | None = None,
    formats: Formatter | Mapping[str, Formatter] | None = None,
    index: bool = False,
    math: Sequence[str] = (),
    code: Sequence[str] = (),
    wrap: Sequence[str] = (),
) -> Table:
    """A :class:`Table` of the data frame ``frame`` for the book.

    Used for every results table of the chapters (e.g. :doc:`chapter 2 </book/02_value_estimation>`);
    no formula.

    Args:
        frame: the data (its columns in order; with ``index=True`` the index comes first).
        caption: what the table shows, with units; Sphinx adds "Table N.k".
        label: ``tab-<chapter>-<name>``, so that the text can refer to the table by its number.
        headers: readable titles for raw column names, in MyST (``{"coef": "$c(u)$"}``); the
            names not given here are shown as they are.
        formats: one format for every number (``".3f"``, ``"{:.1e}"`` or a function) or one per
            column (by the raw column name); other cells are written with ``str``.
        math, code, wrap: raw column names whose cells are TeX, code, or long text that may wrap.

    Raises:
        KeyError: a name in ``formats``/``math``/``code``/``wrap`` is not a column (the message lists them).
    """
    frame = frame.reset_index() if index else frame
    columns = [str(c) for c in frame.columns]
    per_column = formats if isinstance(formats, Mapping) else {}
    for name in [*per_column, *math, *code, *wrap]:
        if name not in columns:
            raise KeyError(f"{name!r} is not a column of the table; columns: {columns}")
    default = None if isinstance(formats, Mapping) else formats
    fmts = []
    for c in frame.columns:
        spec = per_column.get(str(c), default)
        fmts.append(
            _formatter(spec)
            if spec is not None or frame[c].dtype.kind == "f"
            else (
                lambda v: (
                    "\u2013"
                    if v is None or v != v
                    else unbreakable(v)
                    if isinstance(v, (int, float))
                    else str(v)
                )
            )
        )
    rows = tuple(
        tuple(f(v) for f, v in zip(fmts, r)) for r in frame.itertuples(index=False, name=None)
    )
    headers = headers or {}
    header = tuple(headers[c] if c in headers else md_escape(c) for c in columns)
    where = {c: j for j, c in enumerate(columns)}
    return Table(
        header,
        rows,
        caption,
        label,
        tuple(where[c] for c in math),
        tuple(where[c] for c in code),
        tuple(where[c] for c in wrap),
    )
