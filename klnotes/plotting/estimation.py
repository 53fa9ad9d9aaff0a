"""Figures of chapters 2 and 3: the estimators' moments and the gradient coefficients.

Data come from :mod:`klnotes.analysis.montecarlo`; colours from the house palette of :mod:`klnotes.plotting`.
"""

from __future__ import annotations

from klnotes.core.estimators import NAMES
from klnotes.plotting import style

__all__ = ["plot_moments", "plot_running_std", "plot_coefficients", "plot_gradient_errors"]


def plot_moments(
    frame, x: str = "kl", y: str = "relative_std", ax=None, logx: bool = True, logy: bool = True
):
    r"""One line per estimator of column ``y`` against column ``x`` of a sweep frame (house colours).

    Draws, e.g., :math:`\sqrt{\mathrm{Var}[k_n]}/\mathrm{KL}` and :math:`(\mathbb{E}[k_n] -
    \mathrm{KL})/\mathrm{KL}` for :math:`k_1, k_2, k_3` of :eq:`eq-2-estimators`:
    :numref:`fig-2-categorical-sweep` and :numref:`fig-2-k3-variance`.

    Args:
        frame: from :func:`klnotes.analysis.montecarlo.categorical_sweep` or
            :func:`klnotes.analysis.montecarlo.gaussian_sweep`; x, y: column names.
    Returns:
        the ``Figure``.
    """

    fig, ax = style.new_axes(ax)
    for name in NAMES:
        part = frame[frame["estimator"] == name].sort_values(x)
        ax.plot(
            part[x], part[y], marker="o", markersize=3, lw=2, color=style.color(name), label=name
        )
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.legend()
    return fig


def plot_running_std(at, curves: dict, ax=None):
    """Running sample standard deviation against the number of samples, one line per estimator.

    Draws :math:`s_n` of :func:`klnotes.analysis.montecarlo.running_std` for :math:`k_1, k_2, k_3`
    (:eq:`eq-2-estimators`; :math:`k_3`'s never settles when :eq:`eq-2-k3-var` is infinite):
    :numref:`fig-2-running-std`.

    Args:
        at: ``[k]`` sample sizes; curves: ``{estimator name: [k] standard deviations}``.
    """

    fig, ax = style.new_axes(ax)
    at = [int(a) for a in at]
    for name, s in curves.items():
        ax.plot(at, [float(v) for v in s], lw=2, color=style.color(name), label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of samples n")
    ax.set_ylabel("sample standard deviation")
    ax.legend()
    return fig


def plot_coefficients(u, curves: dict, ax=None, dashed=("k2 as loss",)):
    r"""Gradient coefficients ``c(u)`` against the log-ratio ``u`` (the paper's Figure 1), house colours.

    Draws :math:`c(u)` of :eq:`eq-3-coefficient` (:math:`k_n` in reward, :math:`\partial k_n/\partial u`
    as loss): :numref:`fig-3-coefficients` and :numref:`fig-3-k4`.

    Args:
        u: ``[m]`` log-ratios; curves: ``{implementation label: [m] coefficients}``; labels without a
            house colour are drawn in grey shades; labels in ``dashed`` are drawn dashed (so a curve that
            coincides with another stays visible).
    """

    fig, ax = style.new_axes(ax)
    u = [float(v) for v in u]
    greys = iter(["#555555", "#999999", "#bbbbbb", "#333333"])
    for label, c in curves.items():
        col = style.PALETTE.get(label) or next(greys)
        ax.plot(
            u,
            [float(v) for v in c],
            lw=2.2,
            color=col,
            ls="--" if label in dashed else "-",
            label=label,
        )
    ax.axhline(0, color="#999999", lw=0.8)
    ax.set_xlabel(r"log-ratio $u = \log\pi_\theta(y) - \log\pi_{\mathrm{ref}}(y)$")
    ax.set_ylabel("gradient coefficient $c(u)$")
    ax.legend(fontsize="small")
    return fig


def plot_gradient_errors(frame, ax=None, floor: float = 1e-17):
    r"""Relative error of each implementation's exact expected gradient against ``KL`` (log-log).

    Draws :math:`\lVert\mathbb{E}[g] - g^\star\rVert/\lVert g^\star\rVert` against
    :math:`\mathrm{KL}(\pi_\theta\,\|\,\pi_{\mathrm{ref}})`, :math:`g^\star` of :eq:`eq-3-rkl-gradient`:
    :numref:`fig-3-gradient-errors`.

    Args:
        frame: from :func:`klnotes.analysis.montecarlo.expected_gradient_sweep`; errors below
        ``floor`` are drawn at ``floor``.
    """

    fig, ax = style.new_axes(ax)
    parts = {
        label: frame[frame["label"] == label].sort_values("kl")
        for label in dict.fromkeys(frame["label"])
    }
    lines = [
        (
            label,
            part["kl"],
            part["relative_error"],
            style.PALETTE.get(label, "#555555"),
            "--" if label == "k2 as loss" else "-",
        )
        for label, part in parts.items()
    ]
    style.log_error_lines(ax, lines, floor, markersize=3)
    ax.set_xlabel(r"$\mathrm{KL}(\pi_\theta\,\|\,\pi_{\mathrm{ref}})$")
    ax.set_ylabel("relative error of the expected gradient")
    ax.legend(fontsize="small")
    return fig
