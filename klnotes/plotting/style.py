"""The book's house style: one palette of implementation colours, the seaborn theme, new axes.

Used by every figure module of :mod:`klnotes.plotting` (which re-exports these names).
"""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import seaborn as sns

__all__ = [
    "PALETTE",
    "line_styles",
    "use_style",
    "color",
    "new_axes",
    "styled",
    "legend_below",
    "log_error_lines",
]

#: Colours of the implementations, shared by every figure of the book so a reader learns them once.
PALETTE: dict[str, str] = {
    "principled": "#222222",
    "reverse KL": "#222222",
    "forward KL": "#7f7f7f",
    "k1 in reward": "#1b9e77",
    "k1 as loss": "#d95f02",
    "k2 as loss": "#7570b3",
    "k3 as loss": "#e7298a",
    "k2 in reward": "#66a61e",
    "k3 in reward": "#e6ab02",
    "none": "#a6761d",
    "k1": "#1b9e77",
    "k2": "#7570b3",
    "k3": "#e7298a",
}


def line_styles(labels, styles: dict | None = None) -> list[tuple[str, str]]:
    """``(colour, linestyle)`` for each label: ``styles[label]`` where given (a colour, or a
    ``(colour, linestyle)`` pair), else the house colour of the label if it has one, else the next
    colour of seaborn's colour-blind palette, solid.

    The styles of :numref:`fig-6-clipping`, :numref:`fig-9-clamps` and
    :numref:`fig-9-offpolicy-bias`; no formula.
    """
    styles = styles or {}
    spare = iter(sns.color_palette("colorblind", len(labels)))
    out = []
    for label in labels:
        if label in styles:
            given = styles[label]
            out.append(tuple(given) if isinstance(given, (tuple, list)) else (given, "-"))
        elif label in PALETTE:
            out.append((PALETTE[label], "-"))
        else:
            out.append((next(spare), "-"))
    return out


def use_style() -> None:
    """Apply the book's plotting style (seaborn ``whitegrid``, readable fonts, crisp figures).

    Called once by every chapter's set-up cell (e.g. :doc:`chapter 1 </book/01_kl_objective>`);
    no formula.
    """
    sns.set_theme(context="notebook", style="whitegrid", font_scale=1.0)
    matplotlib.rcParams.update(
        {
            "figure.figsize": (6.4, 4.0),
            "figure.dpi": 110,
            "savefig.dpi": 150,
            "savefig.bbox": "tight",
            "axes.titleweight": "bold",
            "axes.spines.top": False,
            "axes.spines.right": False,
            "legend.frameon": False,
        }
    )


def color(name: str) -> str:
    """Colour of an implementation or estimator ``name`` in the house palette.

    Used for the lines every chapter draws by hand, e.g. :numref:`fig-4-k3-bias`,
    :numref:`fig-4-coefficient-variance`, :numref:`fig-7-offpolicy`; no formula.

    Raises:
        KeyError: if ``name`` has no colour; the message lists the known names.
    """
    try:
        return PALETTE[name]
    except KeyError:
        raise KeyError(f"no colour for {name!r}; known: {', '.join(sorted(PALETTE))}") from None


def new_axes(ax: plt.Axes | None = None, **subplot_kw) -> tuple[plt.Figure, plt.Axes]:
    """Return ``(fig, ax)``: the given axes and its figure, or a fresh pair.

    Used by every figure function and by chapter cells that draw their own panels
    (:numref:`fig-4-k3-bias`, :numref:`fig-4-coefficient-variance`); no formula.
    """
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(**subplot_kw)
    return fig, ax


def styled(frame):
    """``frame.style`` with the book's table look (the theme's ``dataframe`` class: borders, zebra
    rows,
    padding), for tables that format their numbers per column; chain ``.format``/``.hide`` as
    usual.

    No chapter calls it today: the chapters' results tables come from
    :func:`klnotes.plotting.tables.table`. No formula.
    """
    return frame.style.set_table_attributes('class="dataframe"')


def legend_below(ax: plt.Axes, ncol: int = 2, **kwargs):
    """A legend under the axes, below its x label, so that it never covers a line of data.

    Used by :numref:`fig-8-training`; no formula.

    Drawn as a figure-level anchor in axes coordinates; ``savefig.bbox = "tight"`` keeps it in the
    saved image. Returns the ``Legend``.
    """
    below = -0.2 if ax.get_xlabel() else -0.1
    return ax.legend(
        loc="upper center", bbox_to_anchor=(0.5, below), ncol=ncol, fontsize=9, **kwargs
    )


def log_error_lines(ax: plt.Axes, lines, floor: float = 1e-17, **plot_kw) -> None:
    r"""Relative errors on log-log axes, one line per ``(label, x, errors, colour, linestyle)`` of
    ``lines``; errors below ``floor`` (exact zeros among them) are drawn at ``floor``, the bottom
    of the axis. ``plot_kw`` goes to every ``ax.plot`` (e.g. ``markersize``).

    Each line is :math:`\max(e, \text{floor})` against :math:`x` on log-log axes:
    :numref:`fig-3-gradient-errors` and :numref:`fig-9-offpolicy-bias`.

    The shared drawing of :func:`klnotes.plotting.estimation.plot_gradient_errors` and
    :func:`klnotes.plotting.plot_offpolicy_bias`.
    """
    for label, x, errors, col, ls in lines:
        ax.plot(
            [float(v) for v in x],
            [max(float(e), floor) for e in errors],
            marker="o",
            lw=2,
            ls=ls,
            color=col,
            label=label,
            **plot_kw,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor / 2)
