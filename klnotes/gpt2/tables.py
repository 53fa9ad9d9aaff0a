"""Tables of stored runs: each run's final metrics, the reward-KL frontier, means and standard
deviations over seeds, and the readable labels of the trainer's metrics (:doc:`chapter 8 </book/08_gpt2_training>`).

Input frames are tidy: one row per run and training step, as :func:`klnotes.gpt2.experiments.run`
returns them (identifying columns ``experiment``, ``arm``, ``beta``, ``seed``, ``updates_per_batch``,
``policy``; then ``step`` and the metrics of :data:`klnotes.gpt2.trainconfig.METRICS`).
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from klnotes.gpt2._checks import is_int

__all__ = [
    "final_metrics",
    "frontier",
    "summarize",
    "METRIC_LABELS",
    "metric_label",
    "mean_sd_table",
]

_ID_COLUMNS = ("experiment", "arm", "beta", "seed", "updates_per_batch", "policy")


def final_metrics(
    frame: pd.DataFrame, *, last: int = 5, metrics: Sequence[str] | None = None
) -> pd.DataFrame:
    r"""Per run, the mean of each metric over its last ``last`` steps: one row per run.

    For run :math:`r` with steps :math:`0..S-1`: :math:`\bar m_r = \frac{1}{K}\sum_{s=S-K}^{S-1} m_{r,s}`,
    :math:`K` = ``last`` (:doc:`chapter 8 </book/08_gpt2_training>`).

    ``metrics`` default: every numeric column other than the identifiers and ``step``.
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame must be a pandas DataFrame, got {type(frame).__name__}")
    if frame.empty:
        raise ValueError("empty results frame: run an experiment first")
    if not is_int(last) or last < 1:
        raise ValueError(f"last must be an int >= 1 (steps averaged at the end), got {last!r}")
    if "step" not in frame.columns:
        raise ValueError(f"results frame has no 'step' column (columns: {list(frame.columns)})")
    ids = [c for c in _ID_COLUMNS if c in frame.columns]
    if metrics is None:
        metrics = [c for c in frame.select_dtypes("number").columns if c not in ids and c != "step"]
    tail = frame.sort_values("step").groupby(ids, group_keys=False).tail(last)
    return tail.groupby(ids, as_index=False)[list(metrics)].mean()


def frontier(
    frame: pd.DataFrame, *, reward: str = "reward", kl: str = "kl_seq_exact", last: int = 5
) -> pd.DataFrame:
    """Reward against KL at the end of training: per run, columns of the ids, ``reward`` and ``kl``.

    The two terms of the objective :eq:`eq-1-objective` that
    :doc:`chapter 8 </book/08_gpt2_training>` plots against each other.
    """
    out = final_metrics(frame, last=last, metrics=[reward, kl])
    return out.rename(columns={reward: "reward", kl: "kl"})


def summarize(
    frame: pd.DataFrame,
    *,
    metrics: Sequence[str],
    by: Sequence[str] = ("arm", "beta"),
    last: int = 5,
) -> pd.DataFrame:
    r"""Mean and standard deviation over seeds of each metric's final value, one row per ``by`` group.

    Over the seeds' final values :math:`\bar m_1, \dots, \bar m_n`: :math:`\bar m = \frac1n\sum_i \bar m_i`
    and the sample standard deviation :math:`s = \big(\frac{1}{n-1}\sum_i (\bar m_i - \bar m)^2\big)^{1/2}`
    (:doc:`chapter 8 </book/08_gpt2_training>`'s tables).
    """
    fin = final_metrics(frame, last=last, metrics=metrics)
    out = fin.groupby(list(by))[list(metrics)].agg(["mean", "std"])
    out.columns = [f"{m}_{s}" for m, s in out.columns]
    return out.reset_index()


#: Axis labels of the trainer's logged metrics (the raw column names are for code, not for readers).
METRIC_LABELS: dict[str, str] = {
    "reward": "reward",
    "kl_seq_exact": "sequence KL (nats, exact)",
    "logprob_diff": "Logprob Diff (mean log-ratio)",
    "entropy": "entropy (nats per token)",
    "response_length": "response length (tokens)",
    "frac_abs_log_ratio_gt_1": r"share of tokens with $|u_t| > 1$",
}


def metric_label(metric: str) -> str:
    """Readable axis label of a logged metric (:data:`METRIC_LABELS`); unknown names pass through.

    (:doc:`Chapter 8 </book/08_gpt2_training>`'s figures and tables.)
    """
    return METRIC_LABELS.get(metric, metric)


def mean_sd_table(summary: pd.DataFrame, *, digits: int = 3) -> pd.DataFrame:
    """A :func:`summarize` frame for reading: each metric's ``<m>_mean`` and ``<m>_std`` columns become
    one column ``"mean ± sd"`` headed by :func:`metric_label` (without matplotlib's ``$`` signs), so the
    table stays narrow.

    (:doc:`Chapter 8 </book/08_gpt2_training>`'s tables.)

    Raises:
        ValueError: a ``_mean`` column without its ``_std`` partner (names it).
    """
    means = [c[: -len("_mean")] for c in summary.columns if c.endswith("_mean")]
    missing = [m for m in means if f"{m}_std" not in summary.columns]
    if missing:
        raise ValueError(f"no _std column for {missing}; columns: {list(summary.columns)}")
    keys = [c for c in summary.columns if not any(c in (f"{m}_mean", f"{m}_std") for m in means)]
    out = summary[keys].copy()
    for m in means:
        out[metric_label(m).replace("$", "")] = [
            f"{a:.{digits}f} ± {b:.{digits}f}"
            for a, b in zip(summary[f"{m}_mean"], summary[f"{m}_std"].fillna(0.0))
        ]
    return out
