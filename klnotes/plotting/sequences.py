"""Figures of chapters 5 and 6: sequence-level and off-policy gradients.

Data come from :mod:`klnotes.analysis.sequences`; colours from the house palette of :mod:`klnotes.plotting`.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

from klnotes.plotting import style

__all__ = [
    "display_name",
    "implementation_styles",
    "plot_bias_sweep",
    "plot_position_errors",
    "plot_training",
    "plot_update_bias",
    "plot_clipping",
]


_DASHES = ("-", "--", ":", "-.")


def display_name(name: str) -> str:
    """Legend text for an implementation or variant name: ``k1`` as ``$k_1$``, ``->`` as an arrow,
    `` x `` as a times sign, ``eps`` as ``$\\epsilon$``.

    Used in the legends of :numref:`fig-5-bias-sweep`, :numref:`fig-5-positions`,
    :numref:`fig-5-training` and :numref:`fig-6-update-bias`; ``k1`` is drawn as
    :math:`k_1`, the estimator of :eq:`eq-2-estimators`.
    """
    out = re.sub(r"\bk([123n])\b", r"$k_\1$", name)
    out = re.sub(r"\beps\b", r"$\\epsilon$", out)
    return out.replace(" -> ", " \u2192 ").replace(" x ", " \u00d7 ")


def implementation_styles(names: Sequence[str]) -> dict[str, tuple[str, str]]:
    """``{name: (colour, linestyle)}`` in the house palette.

    The styles of :numref:`fig-5-bias-sweep`, :numref:`fig-5-positions`, :numref:`fig-5-training`
    and :numref:`fig-6-update-bias` (and :numref:`fig-6-update-bias-tokens`).

    The colour is that of the first implementation label of :data:`klnotes.plotting.PALETTE` that occurs
    in ``name`` (longest first); names without one get :func:`klnotes.plotting.line_styles`' spare
    colours. The line is dotted for GRPO's per-response mean, dashed for other per-token forms, solid
    otherwise, and the next free style where two names would share colour and line."""
    keys = sorted((k for k in style.PALETTE if " " in k), key=len, reverse=True)
    spare = iter(
        style.line_styles([f"\0{i}" for i in range(len(names))])
    )  # labels with no house colour
    taken: set[tuple] = set()
    out = {}
    for name in names:
        key = next((k for k in keys if k in name), None)
        col = style.PALETTE[key] if key is not None else next(spare)[0]
        first = (
            2
            if ("seq-mean" in name or "GRPO" in name)
            else 1
            if ("per token" in name or "per-token" in name)
            else 0
        )
        order = _DASHES[first:] + _DASHES[:first]
        ls = next((d for d in order if (str(col), d) not in taken), order[0])
        taken.add((str(col), ls))
        out[name] = (col, ls)
    return out


def plot_bias_sweep(frame, axes=None):
    r"""Chapter 5: relative error (log-log, top) and cosine (bottom) against the sequence reverse-KL
    gradient, versus the exact sequence KL, one line per implementation (frame from
    :func:`klnotes.analysis.sequences.bias_sweep`).

    Draws :math:`\lVert g - g^\star\rVert/\lVert g^\star\rVert` and :math:`\cos(g, g^\star)`,
    :math:`g^\star` of :eq:`eq-5-seq-gradient`: :numref:`fig-5-bias-sweep`.
    """
    import matplotlib.pyplot as plt

    if axes is None:
        fig, axes = plt.subplots(2, 1, figsize=(6.4, 7.6), sharex=True)
    fig = axes[0].figure
    names = list(dict.fromkeys(frame["implementation"]))
    styles = implementation_styles(names)
    for name in names:
        d = frame[frame["implementation"] == name]
        col, ls = styles[name]
        err = d["rel_error"].clip(lower=1e-17)
        axes[0].plot(d["kl"], err, marker="o", ms=3, color=col, ls=ls, label=display_name(name))
        axes[1].plot(
            d["kl"], d["cosine"], marker="o", ms=3, color=col, ls=ls, label=display_name(name)
        )
    xlabel = r"sequence $\mathrm{KL}(\pi_\theta\,\|\,\pi_{\mathrm{ref}})$ (nats)"
    axes[0].set(
        xscale="log",
        yscale="log",
        ylabel="relative error of\nexpected gradient",
        title="Bias against the sequence reverse KL",
    )
    axes[1].set(
        xscale="log",
        xlabel=xlabel,
        ylabel="cosine with the sequence\nreverse-KL gradient",
        title="Direction",
    )
    axes[1].legend(loc="lower left", fontsize=9)
    fig.tight_layout()
    return fig


def plot_position_errors(frames: Mapping[str, object], ax=None):
    r"""Chapter 5: per-position error ``|g_t - g*_t| / |g*|`` of implementations (frames from
    :func:`klnotes.analysis.sequences.position_errors`), grouped bars by position.

    Draws :math:`\lVert g_t - g^\star_t\rVert/\lVert g^\star\rVert` per position :math:`t` (the
    missing :math:`G_{t+1}` of :eq:`eq-5-future`): :numref:`fig-5-positions`.
    """
    import numpy as np

    fig, ax = style.new_axes(ax)
    names = list(frames)
    styles = implementation_styles(names)
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        d = frames[name]
        total = float(np.sqrt((d["target_norm"] ** 2).sum()))
        x = d["position"].to_numpy() + (i - (len(names) - 1) / 2) * width
        ax.bar(x, d["error"] / total, width=width, color=styles[name][0], label=display_name(name))
    ax.set_xticks(sorted(set(frames[names[0]]["position"])))
    ax.set(
        xlabel=r"position $t$ of the token whose logits get the gradient",
        ylabel=r"$\|g_t - g^\star_t\| \,/\, \|g^\star\|$",
        title="Where per-token losses lose the gradient",
    )
    ax.legend(fontsize=9)
    return fig


def plot_training(frame, ax=None):
    r"""Chapter 5: optimality gap ``J* - J`` of the exact regularized objective along exact gradient
    descent with each implementation's KL term (frame from
    :func:`klnotes.analysis.sequences.train_exact`), log scale.

    Draws :math:`J^\star - J(\pi_\theta) = \beta\,\mathrm{KL}(\pi_\theta\,\|\,\pi^\star)` (:eq:`eq-1-gap`)
    along the steps: :numref:`fig-5-training`.
    """
    fig, ax = style.new_axes(ax)
    names = list(dict.fromkeys(frame["implementation"]))
    styles = implementation_styles(names)
    for name in names:
        d = frame[frame["implementation"] == name]
        col, ls = styles[name]
        ax.plot(
            d["step"], d["gap"].clip(lower=1e-17), lw=2, color=col, ls=ls, label=display_name(name)
        )
    ax.set(
        yscale="log",
        xlabel="gradient step",
        ylabel=r"$J^\star - J(\pi_\theta)$",
        title="Distance to the optimum of the regularized objective",
    )
    style.legend_below(ax, ncol=1)  # the lines fill the axes: no corner is free
    return fig


def plot_update_bias(frame, ax=None, *, log: bool = True):
    r"""Chapter 6: relative off-policy bias of each variant against the number of updates on the batch
    (frame from :func:`klnotes.analysis.sequences.simulate_updates`); ``log=True``: log scale with
    the 1e-12 line drawn.

    Draws :math:`\lVert g_{\mathrm{off}} - g_{\mathrm{on}}\rVert/\lVert g_{\mathrm{on}}\rVert` after
    :math:`K` updates (:eq:`eq-6-naive`, :eq:`eq-6-correction`): :numref:`fig-6-update-bias` and
    :numref:`fig-6-update-bias-tokens`.
    """
    fig, ax = style.new_axes(ax)
    names = list(dict.fromkeys(frame["variant"]))
    styles = implementation_styles(names)
    for name in names:
        d = frame[(frame["variant"] == name) & (frame["update"] > 0)]
        col, ls = styles[name]
        ax.plot(
            d["update"],
            d["rel_error"].clip(lower=1e-17),
            marker="o",
            ms=3,
            color=col,
            ls=ls,
            label=display_name(name),
        )
    if log:
        ax.axhline(1e-12, color="#999999", lw=0.8, ls=":")
    ax.set(
        yscale="log" if log else "linear",
        xlabel=r"updates on the same batch, $K$",
        ylabel="relative bias of expected gradient",
        title=r"Off-policy bias after $K$ updates from $\pi_{\mathrm{old}}$",
    )
    style.legend_below(ax, ncol=1)  # the lines fill the axes: no corner is free
    return fig


def plot_clipping(frames: Mapping[float, object], variant: str, axes=None):
    r"""Chapter 6: for each clip range ``eps`` (frames from
    :func:`klnotes.analysis.sequences.simulate_updates`), the ``pi_old``
    probability mass the clip actively removes (ratio outside the range on the side the head pushes,
    ``active_clipped_mass``) and the bias of the clipped ``variant`` against the updates.

    A unit counts as actively clipped when :math:`A > 0,\ \rho > 1+\epsilon` or
    :math:`A < 0,\ \rho < 1-\epsilon`, :math:`A = -\beta\,\mathrm{sg}(c)`.

    Draws the mass where the clip of :eq:`eq-6-clip` is active and the resulting bias:
    :numref:`fig-6-clipping`.
    """
    import matplotlib.pyplot as plt

    if axes is None:
        fig, axes = plt.subplots(2, 1, figsize=(6.4, 7.2), sharex=True)
    fig = axes[0].figure
    labels = {eps: rf"$\epsilon = {eps:g}$" for eps in frames}
    styles = style.line_styles(list(labels.values()))
    for (eps, frame), (col, ls) in zip(frames.items(), styles):
        d = frame[frame["variant"] == variant]
        axes[0].plot(
            d["update"],
            d["active_clipped_mass"],
            marker="o",
            ms=3,
            color=col,
            ls=ls,
            label=labels[eps],
        )
        axes[1].plot(
            d["update"], d["rel_error"], marker="o", ms=3, color=col, ls=ls, label=labels[eps]
        )
    xlabel = r"updates on the same batch, $K$"
    axes[0].set(
        ylabel=r"$\pi_{\mathrm{old}}$-mass actively clipped",
        title="How much of the batch the clip removes",
    )
    axes[1].set(
        xlabel=xlabel,
        ylabel="relative bias of expected gradient",
        title="Bias of the clipped KL head",
    )
    axes[1].legend(fontsize=9)
    fig.tight_layout()
    return fig
