"""Figures of chapters 7 and 8: gradients of a transformer and training runs.

Data come from :mod:`klnotes.gpt2.gradcompare` and :mod:`klnotes.gpt2.experiments`; colours from the house
palette of :mod:`klnotes.plotting`.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch

from klnotes.gpt2.experiments import metric_label
from klnotes.plotting.style import PALETTE, new_axes

__all__ = [
    "log_scale",
    "plot_gradient_sweep",
    "plot_coefficient_scatter",
    "plot_metric",
    "plot_run_frontier",
    "plot_ablation",
]


def _base_label(label: str) -> str:
    return label.split(" | ")[0].replace(" (seq)", "").replace(" (rtg)", "")


def log_scale(ax, values, *, axis: str = "x") -> str:
    r"""A log scale on ``axis`` that keeps non-positive values visible; return the scale set.

    The KL axis of :numref:`fig-7-sweep` and :numref:`fig-8-frontier`: a Monte Carlo estimate of
    :math:`\mathrm{KL}(\pi_\theta\,\|\,\pi_{\mathrm{ref}})` can be :math:`\le 0`.

    ``values``: the data drawn on that axis (any shape). Every value ``> 0``: ``"log"``. Otherwise (a
    Monte Carlo KL estimate can be ``<= 0`` when the policy is close to its reference; a log axis
    would drop those points and leave a panel empty): ``"symlog"``, logarithmic beyond ``linthresh``
    and linear in ``[-linthresh, linthresh]``, with ``linthresh`` = the smallest non-zero ``|value|``
    (``1`` when all are zero), floored at ``1e-6 max |value|``; a dotted line marks 0 and the
    axis label says that the scale is linear near 0.

    Raises:
        ValueError: ``axis`` not ``"x"`` or ``"y"``; no values, or a non-finite one.
    """
    import numpy as np

    if axis not in ("x", "y"):
        raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
    v = np.asarray(values, dtype=float).reshape(-1)
    if v.size == 0 or not np.isfinite(v).all():
        raise ValueError(f"log_scale needs finite values, got {v.tolist()[:8]}")
    if (v > 0).all():
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        return "log"
    size = np.abs(v)
    nonzero = size[size > 0]
    linthresh = float(max(nonzero.min(), 1e-6 * nonzero.max())) if nonzero.size else 1.0
    (ax.set_xscale if axis == "x" else ax.set_yscale)("symlog", linthresh=linthresh)
    (ax.axvline if axis == "x" else ax.axhline)(0.0, color="#888888", lw=0.8, ls=":", zorder=1)
    label = ax.get_xlabel() if axis == "x" else ax.get_ylabel()
    note = f"symlog: linear within $\\pm${linthresh:.1g}"
    (ax.set_xlabel if axis == "x" else ax.set_ylabel)(f"{label}\n({note})" if label else note)
    return "symlog"


def plot_gradient_sweep(
    frame: pd.DataFrame, metric: str = "cosine", *, labels: Sequence[str] | None = None, ax=None
):
    r"""Plot ``metric`` (``cosine``, ``rel_norm`` or ``rel_error``) against the exact KL for each implementation.

    Draws :math:`\cos(g, g^\star)`, :math:`\lVert g\rVert/\lVert g^\star\rVert` or
    :math:`\lVert g - g^\star\rVert/\lVert g^\star\rVert` against the KL, :math:`g^\star` the principled
    gradient of :eq:`eq-7-principled`: :numref:`fig-7-sweep`.

    Sequence-level variants are dashed, reward-to-go dotted; colours follow the house palette.
    Monte Carlo frames get their jackknife bands. The KL axis is logarithmic, symmetric-logarithmic
    when a Monte Carlo KL estimate is ``<= 0`` (:func:`log_scale`); such points get open markers.
    """

    fig, ax = new_axes(ax)
    labels = list(dict.fromkeys(frame["implementation"])) if labels is None else list(labels)
    for label in labels:
        sub = frame[frame["implementation"] == label].sort_values("kl")
        style = "--" if "(seq)" in label else (":" if "(rtg)" in label else "-")
        col = PALETTE.get(_base_label(label), "#555555")
        ax.plot(sub["kl"], sub[metric], style, marker="o", ms=3, lw=1.8, color=col, label=label)
        if f"{metric}_lo" in sub:
            ax.fill_between(
                sub["kl"], sub[f"{metric}_lo"], sub[f"{metric}_hi"], color=col, alpha=0.15
            )
        low = sub[sub["kl"] <= 0]
        if len(low):  # estimates at or below zero: open markers, so they read as noise, not as data
            ax.plot(low["kl"], low[metric], "o", ms=7, mfc="none", color=col)
    ax.set_xlabel(r"KL$(\pi_\theta\,\|\,\pi_{\mathrm{ref}})$ of the response (nats)")
    log_scale(ax, frame["kl"], axis="x")
    ax.set_ylabel(
        {
            "cosine": "cosine with the principled gradient",
            "rel_norm": r"$|g| / |g^\star|$",
            "rel_error": r"$|g - g^\star| / |g^\star|$",
        }.get(metric, metric)
    )
    ax.legend(fontsize=9, loc="best")
    return fig


def plot_coefficient_scatter(
    policy, reference, prompt, length, *, n: int = 512, seed: int = 0, ax=None
):
    r"""Token coefficients ``C_t`` of per-token k2/k3 as loss against the principled reward-to-go of ``u``.

    Draws :math:`C_t` against :math:`G_t = \sum_{s\ge t} u_s` (:eq:`eq-5-reward-to-go`), the
    coefficient of :eq:`eq-7-expected`: :numref:`fig-7-scatter`.

    Samples ``n`` responses from ``policy``; the principled token coefficient (reward-to-go
    ``sum_{s>=t} u_s``, the ``"k1 in reward (rtg)"`` coefficient) is on the x-axis. Points off the
    diagonal show, token by token, where the per-token implementations differ from it.
    """
    from klnotes.gpt2.gradcompare import sample_responses, token_coefficients, token_logprobs

    fig, ax = new_axes(ax)
    gen = torch.Generator().manual_seed(int(seed))
    responses = sample_responses(policy, prompt, length, n, generator=gen)
    with torch.no_grad():
        lp = token_logprobs(policy, prompt, responses).double()
        lr = token_logprobs(reference, prompt, responses).double()
    x = (
        token_coefficients("k1 in reward (rtg)", lp, lr).reshape(-1).cpu()
    )  # host tensors: plotting needs numpy
    for label in ("k2 as loss", "k3 as loss"):
        y = token_coefficients(label, lp, lr).reshape(-1).cpu()
        ax.scatter(x.numpy(), y.numpy(), s=5, alpha=0.4, color=PALETTE[label], label=label)
    lo, hi = float(x.min()), float(x.max())
    ax.plot([lo, hi], [lo, hi], "--", color=PALETTE["principled"], lw=1, label="principled (rtg)")
    ax.set_xlabel(r"principled token coefficient $\sum_{s\geq t} u_s$")
    ax.set_ylabel("token coefficient $C_t$")
    ax.legend(fontsize=9)
    return fig


def _label(arm: str) -> str:
    from klnotes.gpt2 import trainer

    return trainer.ARM_LABELS.get(arm, arm)


def _arm_color(arm: str) -> str:
    """The palette colour of the arm's implementation; a darker shade for the ratio-corrected
    arms."""
    from klnotes.gpt2 import trainer

    variant = trainer.ARM_VARIANTS.get(arm)
    if variant is None:
        return PALETTE.get(_label(arm), "#555555")
    if variant.correction == "ratio":
        darker = {"k2 as loss": "#4b4594", "k3 as loss": "#9e1a5c"}
        return darker.get(variant.implementation, "#555555")
    return PALETTE.get(variant.implementation, "#555555")


def _arm_linestyle(arm: str) -> str:
    """Dashed for ``none`` (whose curves lie on top of ``k1-loss``'s, in a similar colour) and for
    the ratio-corrected arms (drawn beside their plain versions); solid otherwise."""
    return "--" if arm == "none" or arm.endswith("-is") else "-"


def plot_metric(
    frame: pd.DataFrame,
    metric: str,
    *,
    ax=None,
    title: str | None = None,
    smooth: int = 1,
    legend: bool = True,
):
    """One metric over training steps, a line per arm with a band over seeds (mean +- sd).

    Draws the logged metrics of :doc:`chapter 8 </book/08_gpt2_training>`'s runs:
    :numref:`fig-8-training`, :numref:`fig-8-length` and the GPU-scale figure of its "At GPU
    scale" section; no formula.

    ``smooth``: rolling-mean window over steps within a run (1 = raw). The y label is
    :func:`metric_label` of ``metric``.
    """

    if metric not in frame.columns:
        raise KeyError(f"no metric {metric!r}; have: {', '.join(frame.columns)}")
    fig, ax = new_axes(ax)
    for arm, sub in frame.groupby("arm", sort=False):
        runs = (
            sub.sort_values("step")
            .groupby("seed")[metric]
            .apply(lambda s: s.rolling(smooth, min_periods=1).mean().reset_index(drop=True))
        )
        wide = runs.unstack(0) if isinstance(runs.index, pd.MultiIndex) else runs.to_frame()
        steps = sub.sort_values("step").drop_duplicates("step")["step"].to_numpy()[: len(wide)]
        mean, sd = wide.mean(axis=1).to_numpy(), wide.std(axis=1).fillna(0.0).to_numpy()
        col = _arm_color(arm)
        ax.plot(
            steps,
            mean,
            _arm_linestyle(arm),
            color=col,
            lw=1.8,
            label=_label(arm),
            zorder=3 if arm == "none" else 2,
        )
        if wide.shape[1] > 1:
            ax.fill_between(steps, mean - sd, mean + sd, color=col, alpha=0.15)
    ax.set_xlabel("step")
    ax.set_ylabel(metric_label(metric))
    if title:
        ax.set_title(title)
    if legend:
        ax.legend(fontsize=9, handlelength=2.5)
    return fig


def plot_run_frontier(points: pd.DataFrame, *, ax=None):
    r"""Reward against KL at the end of training (:func:`klnotes.gpt2.experiments.frontier`): a point per run.

    Draws the points :math:`\big(\mathrm{KL}(\pi_\theta\,\|\,\pi_{\mathrm{ref}}),\ \mathbb{E}[r]\big)` of
    :eq:`eq-1-objective`'s two terms (reward of :eq:`eq-8-reward`): :numref:`fig-8-frontier` (and
    the GPU-scale figure of :doc:`chapter 8 </book/08_gpt2_training>`'s "At GPU scale").

    Colour and marker per arm; with several betas, filled markers for the largest and hollow ones for
    the others. ``none`` and ``k1-loss`` often land on the same spot, so ``none`` is a large open ring
    drawn around the spot and ``k1-loss`` a small filled dot inside it: both stay visible.
    """

    fig, ax = new_axes(ax)
    markers = {
        "none": "o",
        "k1-loss": "o",
        "k2-loss": "s",
        "k3-loss": "^",
        "k1-reward": "D",
        "k2-loss-is": "v",
        "k3-loss-is": "<",
    }
    betas = sorted(points["beta"].unique(), reverse=True)
    for arm, sub in points.groupby("arm", sort=False):
        col = _arm_color(arm)
        for i, beta in enumerate(betas):
            pts = sub[sub["beta"] == beta]
            label = _label(arm) if len(betas) == 1 else rf"{_label(arm)}, $\beta = {beta:g}$"
            # ``none``: a large open ring around the spot, so that k1-loss's dots inside it stay visible
            ring = arm == "none"
            ax.scatter(
                pts["kl"],
                pts["reward"],
                marker=markers.get(arm, "o"),
                s=190 if ring else 36,
                facecolors="none" if ring or i > 0 else col,
                edgecolors=col,
                linewidths=2.0 if ring else 1.0,
                alpha=0.85,
                label=label,
                zorder=2 if ring else 3,
            )
    ax.set_xlabel(r"exact KL$(\pi_\theta\,\|\,\pi_{\mathrm{ref}})$ (nats)")
    ax.set_ylabel("reward")
    ax.legend(fontsize=9, ncol=1 if len(betas) == 1 else 2)
    return fig


def plot_ablation(
    frame: pd.DataFrame,
    metric: str = "kl_seq_exact",
    *,
    last: int = 5,
    ax=None,
    legend: bool = True,
):
    """Off-policy ablation: final ``metric`` against updates per batch, a line per arm (mean +- sd over seeds).

    Draws :numref:`fig-8-ablation`: several updates per batch, off-policy
    (:eq:`eq-6-correction` for the corrected arms); no formula of its own.
    """
    from klnotes.gpt2.experiments import final_metrics

    fig, ax = new_axes(ax)
    fin = final_metrics(frame, last=last, metrics=[metric])
    for arm, sub in fin.groupby("arm", sort=False):
        g = sub.groupby("updates_per_batch")[metric].agg(["mean", "std"]).reset_index()
        ax.errorbar(
            g["updates_per_batch"],
            g["mean"],
            yerr=g["std"].fillna(0.0),
            fmt=_arm_linestyle(arm),
            marker="o",
            color=_arm_color(arm),
            capsize=3,
            label=_label(arm),
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(fin["updates_per_batch"].unique()))
    ax.get_xaxis().set_major_formatter(__import__("matplotlib").ticker.ScalarFormatter())
    ax.set_xlabel("updates per rollout batch")
    ax.set_ylabel(f"final {metric_label(metric)}")
    if legend:
        ax.legend(fontsize=9, handlelength=2.5)
    return fig
