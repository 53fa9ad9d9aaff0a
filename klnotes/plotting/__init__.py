"""One seaborn house style and every figure of the book.

Every chapter calls :func:`use_style` once (its set-up cell does), then the figure functions.
Figure functions take data, draw on a new (or given) ``Axes`` and return the ``Figure``; they never
call ``plt.show()`` themselves, the notebook does. Figures are drawn for the book's text column
(about 690 px: 6.4 inches at the style's 110 dpi), several panels stacked, not side by side.

The house style and the figures of chapters 1 and 9 are in this module; the others by topic:
:mod:`klnotes.plotting.estimation` (chapters 2-3), :mod:`klnotes.plotting.sequences` (chapters 5-6),
:mod:`klnotes.plotting.transformers` (chapters 7-8). All are importable from ``klnotes.plotting``.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from klnotes.plotting.estimation import (
    plot_coefficients,
    plot_gradient_errors,
    plot_moments,
    plot_running_std,
)
from klnotes.plotting.sequences import (
    display_name,
    implementation_styles,
    plot_bias_sweep,
    plot_clipping,
    plot_position_errors,
    plot_training,
    plot_update_bias,
)
from klnotes.plotting.style import (
    PALETTE,
    color,
    legend_below,
    line_styles,
    log_error_lines,
    new_axes,
    styled,
    use_style,
)
from klnotes.plotting.tables import Table, table
from klnotes.plotting.transformers import (
    log_scale,
    plot_ablation,
    plot_coefficient_scatter,
    plot_gradient_sweep,
    plot_metric,
    plot_run_frontier,
)

__all__ = [
    # house style
    "PALETTE",
    "use_style",
    "color",
    "legend_below",
    "line_styles",
    "log_error_lines",
    "new_axes",
    "display_name",
    "implementation_styles",
    "styled",
    # results tables (klnotes.plotting.tables)
    "Table",
    "table",
    # chapter 1
    "plot_kl_fits",
    "plot_frontier",
    # chapters 2-3 (klnotes.plotting.estimation)
    "plot_moments",
    "plot_running_std",
    "plot_coefficients",
    "plot_gradient_errors",
    # chapters 5-6 (klnotes.plotting.sequences)
    "plot_bias_sweep",
    "plot_position_errors",
    "plot_training",
    "plot_update_bias",
    "plot_clipping",
    # chapters 7-8 (klnotes.plotting.transformers)
    "plot_gradient_sweep",
    "plot_coefficient_scatter",
    "plot_metric",
    "plot_run_frontier",
    "plot_ablation",
    "log_scale",
    # chapter 9
    "plot_framework_coefficients",
    "plot_offpolicy_bias",
]


def plot_kl_fits(grid, target_logp, fits: dict, ax: plt.Axes | None = None) -> plt.Figure:
    r"""Chapter 1: a bimodal target and Gaussians fitted by reverse and forward KL.

    Draws :math:`p` shaded and each fitted :math:`q_{\mu,\sigma}`, the minimizers of
    :math:`\mathrm{KL}(q\,\|\,p)` (reverse) and :math:`\mathrm{KL}(p\,\|\,q)` (forward) of
    :eq:`eq-1-kl`: :numref:`fig-1-kl-fits`.

    Args:
        grid: ``[V]`` points; target_logp: ``[V]`` log-probabilities of the target on ``grid``;
        fits: ``{label: (mu, sigma)}``, e.g. ``{"reverse KL": (2.0, 0.6), "forward KL": (0.4, 2.1)}``.
    """
    import torch

    from klnotes.analysis.objective import discretized_gaussian_logprobs

    fig, ax = new_axes(ax)
    g = torch.as_tensor(grid)
    ax.fill_between(
        g.numpy(),
        torch.as_tensor(target_logp).exp().numpy(),
        color="#cccccc",
        label="reference / target p",
    )
    for label, (mu, sigma) in fits.items():
        q = discretized_gaussian_logprobs(
            g, torch.tensor(mu, dtype=g.dtype), torch.tensor(sigma, dtype=g.dtype)
        ).exp()
        ax.plot(
            g.numpy(),
            q.numpy(),
            lw=2.2,
            color=PALETTE.get(label),
            label=rf"{label}: $\mu={mu:.2f}$, $\sigma={sigma:.2f}$",
        )
    ax.set_xlabel("y")
    ax.set_ylabel("probability")
    ax.legend(loc="upper left", fontsize=9)
    return fig


def plot_frontier(frame, ax: plt.Axes | None = None, label: str | None = None) -> plt.Figure:
    r"""Reward against KL(pi || pi_ref) from a frame with columns ``kl``, ``reward`` (and ``beta``).

    Draws the points :math:`\big(\mathrm{KL}(\pi^\star_\beta\,\|\,\pi_{\mathrm{ref}}),\
    \mathbb{E}_{\pi^\star_\beta}[r]\big)` of the optimal policies of :eq:`eq-1-objective`
    (:func:`klnotes.analysis.objective.optimal_frontier`): :numref:`fig-1-frontier`.

    About six points are annotated with their ``beta``, skipping any closer than 6% of the axes to the
    last annotated one so that labels do not overlap; ``label`` names the curve in a legend.
    """
    fig, ax = new_axes(ax)
    ax.plot(
        frame["kl"], frame["reward"], marker="o", lw=1.8, color=PALETTE["principled"], label=label
    )
    if "beta" in frame:
        span_x = float(frame["kl"].max() - frame["kl"].min()) or 1.0
        span_y = float(frame["reward"].max() - frame["reward"].min()) or 1.0
        last = None
        for _, row in frame.iloc[:: max(1, len(frame) // 6)].iterrows():
            here = (float(row["kl"]) / span_x, float(row["reward"]) / span_y)
            if (
                last is not None
                and ((here[0] - last[0]) ** 2 + (here[1] - last[1]) ** 2) ** 0.5 < 0.06
            ):
                continue
            ax.annotate(
                rf"$\beta={row['beta']:g}$",
                (row["kl"], row["reward"]),
                textcoords="offset points",
                xytext=(6, -10),
                fontsize=9,
            )
            last = here
    if label is not None:
        ax.legend(loc="lower right", fontsize="small")
    ax.set_xlabel(r"$\mathrm{KL}(\pi \,\|\, \pi_{\mathrm{ref}})$")
    ax.set_ylabel("expected reward")
    return fig


def plot_framework_coefficients(
    u, curves: dict, ax: plt.Axes | None = None, styles: dict | None = None
) -> plt.Figure:
    r"""Chapter 9: gradient coefficient ``c(u)`` of framework KL options against ``u = log pi_theta - log pi_ref``.

    Draws each option's :math:`c_t = \partial\ell/\partial\log\pi_\theta(y_t\mid s_t)` of
    :eq:`eq-9-coefficient` beside the principled :math:`c = u` (:eq:`eq-3-rkl-gradient`):
    :numref:`fig-9-clamps`.

    Args:
        u: ``[n]`` log-ratios; curves: ``{label: [n] coefficients}``, drawn in order; the principled
            coefficient ``c = u`` is drawn dashed for reference; styles: see :func:`line_styles`.
    """
    fig, ax = new_axes(ax)
    u = [float(x) for x in u]
    ax.plot(
        u, u, color=color("principled"), linestyle="--", linewidth=1.2, label="principled: c = u"
    )
    for (label, c), (col, ls) in zip(curves.items(), line_styles(list(curves), styles)):
        ax.plot(u, [float(x) for x in c], color=col, linestyle=ls, linewidth=2, label=label)
    ax.axhline(0, color="#999999", linewidth=0.8)
    ax.set_xlabel(r"$u = \log \pi_\theta(y_t) - \log \pi_{\mathrm{ref}}(y_t)$")
    ax.set_ylabel("gradient coefficient $c(u)$")
    ax.legend(loc="upper left", fontsize="small")
    return fig


def plot_offpolicy_bias(
    steps, errors: dict, ax: plt.Axes | None = None, styles: dict | None = None
) -> plt.Figure:
    r"""Chapter 9: relative error of the off-policy KL gradient against the size of the policy change.

    Draws :math:`\lVert g - g^\star\rVert/\lVert g^\star\rVert` per option (log-log, through
    :func:`klnotes.plotting.style.log_error_lines`), :math:`g^\star` the reverse-KL gradient of
    :eq:`eq-3-rkl-gradient`: :numref:`fig-9-offpolicy-bias`.

    Args:
        steps: ``[m]`` sizes of the logit change from ``pi_old`` to ``pi_theta``;
        errors: ``{label: [m] relative errors}`` (zeros are drawn at the bottom of the axis);
        styles: see :func:`line_styles`.
    """
    fig, ax = new_axes(ax)
    lines = [
        (label, steps, err, col, ls)
        for (label, err), (col, ls) in zip(errors.items(), line_styles(list(errors), styles))
    ]
    log_error_lines(ax, lines)
    ax.set_xlabel(r"size of the update from $\pi_{\mathrm{old}}$ to $\pi_\theta$ (logit scale)")
    ax.set_ylabel("relative error of the KL gradient")
    ax.legend(loc="center right", fontsize=9)
    return fig
