"""How often a clamped KL coefficient reaches its clamp at realistic drift (chapter 9).

OpenRLHF clamps every KL value to ``[-10, 10]`` and verl its k3 to ``[-10, 10]``: k1 is clamped at
``|u| > 10``, k2 (``u^2/2``) at ``|u| > 4.47``, k3 (``e^{-u} - 1 + u``) at ``u < -2.62`` (and ``u
> 11``),
with ``u = log pi_theta - log pi_ref`` per token. A verdict such as "follows the sequence reverse
KL"
holds only for tokens inside the clamp. :func:`clamp_reach` measures, on the book's stored
training runs
(``results/<preset>/arms``, GPT-2-shaped policies trained with each KL arm), the fraction of sampled
tokens with ``|u| > 1``, an upper bound for every clamp edge above 1.
"""

from __future__ import annotations

import glob
from pathlib import Path

__all__ = ["CLAMP_EDGES", "clamp_reach", "reach_text"]

#: Where each clamped value leaves ``[-10, 10]`` (in ``u``).
CLAMP_EDGES = {"k1": "|u| > 10", "k2": "|u| > 4.47", "k3": "u < -2.62 or u > 11.0"}


def clamp_reach(folder=None, arm: str = "k1-reward") -> dict | None:
    r"""``{"median", "max", "runs", "folder"}`` of the per-step fraction of tokens with ``|u| > 1``
    (column ``frac_abs_log_ratio_gt_1``) over the stored runs of ``arm`` in ``folder`` (default: the
    ``cpu`` preset's ``arms`` runs); ``None`` when there are none.

    :math:`\frac{1}{T}\sum_t \mathbb{1}\big[\lvert u_t\rvert > 1\big]` per step, the share that
    :doc:`chapter 8 </book/08_gpt2_training>` logs and :doc:`chapter 9 </book/09_in_practice>` quotes
    for the clamps of :numref:`fig-9-clamps`.
    """
    import pandas as pd

    if folder is None:
        from klnotes.gpt2.experiments import (
            default_results_dir,
        )  # the stored runs; optional for the audit

        folder = default_results_dir("cpu") / "arms"
    files = sorted(glob.glob(str(Path(folder) / f"{arm}_*.csv")))
    if not files:
        return None
    frames = [pd.read_csv(f) for f in files]
    col = pd.concat(
        [f["frac_abs_log_ratio_gt_1"] for f in frames if "frac_abs_log_ratio_gt_1" in f]
    )
    if col.empty:
        return None
    return {
        "median": float(col.median()),
        "max": float(col.max()),
        "runs": len(frames),
        "folder": str(folder),
    }


def reach_text(estimator: str) -> str:
    r"""What the audit says about how often the clamp of ``estimator`` (k1, k2, k3) is reached.

    The clamps are those of :numref:`fig-9-clamps` (:doc:`chapter 9 </book/09_in_practice>`,
    "Clamped coefficients: the condition and how often it binds"); the condition is on
    :math:`\lvert u\rvert`, :math:`u = \log\pi_\theta - \log\pi_{\mathrm{ref}}`.
    """
    edge = CLAMP_EDGES.get(estimator, "the clamp edge")
    try:
        m = clamp_reach()
    except (OSError, ValueError, KeyError):
        m = None
    if m is None:
        return f"clamp reached where {edge}; not measured here (no stored runs)"
    return (
        f"clamp reached where {edge}; on the book's cpu-scale runs (k1 in reward, {m['runs']} "
        f"runs) at most "
        f"{100 * m['median']:.0f}% (median step) to {100 * m['max']:.0f}% (worst step) of tokens "
        f"have |u| > 1, "
        "an upper bound: the fraction beyond the edge itself is not stored"
    )
