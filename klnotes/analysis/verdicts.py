"""Verdicts that never come from noise: one stated test behind every "holds" the book prints.

A claim about training runs ("arm A ends with a lower KL than arm B") is decided on differences
oriented so that a positive value supports the claim:

- with two or more seeds, one paired difference per seed (the runs of one seed share their first
  rollout), each between the two arms' final values (mean of the last ``last`` steps);
- with one seed, the difference of the two arms' means over the last ``last`` steps, with the
  standard error of two independent means, ``sqrt(s_a^2 + s_b^2) / sqrt(last)``, from each arm's
  step-to-step spread (a test within a run). It is deliberately *not* paired by step: the runs of
  one seed share their samples until they diverge, so step-paired differences of two nearly
  identical runs have almost no spread, and a negligible but systematic difference (1e-3 nats
  between curves that look the same) would count. Each arm's step-to-step spread is the run's own
  measure of its noise.

The rule, the same at every scale: with mean difference ``m`` and its standard error ``se`` (over
seeds: ``sd / sqrt(n)`` of the per-seed differences),

    holds                       if  m >  max(k se, tol)
    does not hold               if  m < -max(k se, tol)
    inconclusive at this scale  otherwise (and always when n < 2),

where ``k`` is Student's ``t`` quantile at two-sided level ``level`` (95%) with ``n - 1`` degrees of
freedom, ``n`` the number of seeds or of final steps (12.71 for n = 2, 4.30 for n = 3, 2.78 for
n = 5): the difference must lie beyond ``k`` standard errors from zero. ``tol`` (default 0) is an
optional floor in the metric's units.
An equivalence claim ("A is within 25% of B") holds when the whole interval ``m +- k se`` lies
within ``+-margin`` and does not hold when it lies wholly outside.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FAILS",
    "HOLDS",
    "INCONCLUSIVE",
    "OUTCOMES",
    "Differences",
    "Verdict",
    "all_verdict",
    "arm_differences",
    "critical_value",
    "difference_verdict",
    "equivalence_verdict",
    "paired_verdict",
]

#: The outcome when the difference lies beyond ``k`` standard errors in the claimed direction.
HOLDS = "holds"
#: The outcome when the difference lies beyond ``k`` standard errors against the claim.
FAILS = "does not hold"
#: The outcome when the difference lies within ``k`` standard errors of zero.
INCONCLUSIVE = "inconclusive at this scale"
#: The three outcomes a verdict can have.
OUTCOMES: tuple[str, ...] = (HOLDS, FAILS, INCONCLUSIVE)


def _t_cdf(x: float, nu: int, intervals: int = 4000) -> float:
    """Student's ``t`` CDF at ``x >= 0``: ``1/2 + int_0^x f(t) dt`` by composite Simpson, with
    ``f(t) = Gamma((nu + 1) / 2) / (sqrt(nu pi) Gamma(nu / 2)) (1 + t^2 / nu)^(-(nu + 1) / 2)``."""
    c = math.exp(math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2)) / math.sqrt(nu * math.pi)
    h = x / intervals
    total = 0.0
    for i in range(intervals + 1):
        w = 1 if i in (0, intervals) else (4 if i % 2 else 2)
        total += w * (1 + (i * h) ** 2 / nu) ** (-(nu + 1) / 2)
    return 0.5 + c * total * h / 3


def critical_value(n: int, level: float = 0.95) -> float:
    r"""``k``: Student's ``t`` quantile ``t_{(1 + level) / 2, n - 1}`` for ``n`` paired differences.

    .. math:: k = t_{(1+\text{level})/2,\ n-1}, \qquad
        P\big(\lvert T_{n-1}\rvert \le k\big) = \text{level}

    the threshold of every verdict of :doc:`chapter 8 </book/08_gpt2_training>`.

    Found by bisection on the ``t`` CDF (:func:`_t_cdf`, Simpson's rule; error below 1e-6):
    12.706 for ``n = 2``, 4.303 for ``n = 3``, 2.776 for ``n = 5``, 1.960 as ``n`` grows.

    Raises:
        ValueError: ``n`` not an int >= 2 (no standard error from one value); ``level`` outside (0,
            1).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an int >= 2 (a standard error needs two values), got {n!r}")
    if not (isinstance(level, (int, float)) and not isinstance(level, bool) and 0 < level < 1):
        raise ValueError(f"level must be a number in (0, 1), got {level!r}")
    return _t_quantile(int(n) - 1, float(level))


@functools.lru_cache(maxsize=256)
def _t_quantile(nu: int, level: float) -> float:
    target = (1 + level) / 2
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, nu) < target:  # bracket the quantile
        lo, hi = hi, 2 * hi
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _t_cdf(mid, nu) < target else (lo, mid)
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Verdict:
    r"""The outcome of one claim and the numbers it rests on.

    The rule (:func:`difference_verdict`): holds when :math:`m > k\,\mathrm{se}`, does not hold when
    :math:`m < -k\,\mathrm{se}`, with :math:`k = t_{(1+\text{level})/2,\,n-1}`; the verdicts printed in
    :doc:`chapter 8 </book/08_gpt2_training>`.

    Attributes:
        claim: what is claimed, in words.
        outcome: one of :data:`OUTCOMES`.
        estimate: mean paired difference ``m`` (positive supports the claim); for an equivalence
            claim,
            the mean difference whose size is compared with ``margin``.
        se: its standard error ``s / sqrt(n)`` (NaN with fewer than two differences).
        n: number of paired differences.
        k: the critical value (standard errors) the difference had to exceed (NaN when ``n < 2``).
        unit: what one difference is (``"seeds"``, ``"steps of one run"``).
        margin: the equivalence margin, or ``None`` for a difference claim.
    """

    claim: str
    outcome: str
    estimate: float
    se: float
    n: int
    k: float
    unit: str = "seeds"
    margin: float | None = None

    def __post_init__(self):
        if self.outcome not in OUTCOMES:
            raise ValueError(f"Verdict.outcome must be one of {OUTCOMES}, got {self.outcome!r}")

    @property
    def holds(self) -> bool:
        return self.outcome == HOLDS

    @property
    def conclusive(self) -> bool:
        return self.outcome != INCONCLUSIVE

    @property
    def z(self) -> float:
        """``m / se`` (infinite when ``se == 0`` and ``m != 0``; NaN when ``n < 2`` or
        ``m = se = 0``)."""
        if not math.isfinite(self.se) or (self.se == 0 and self.estimate == 0):
            return math.nan
        return math.copysign(math.inf, self.estimate) if self.se == 0 else self.estimate / self.se

    def __str__(self) -> str:
        if self.n < 2:
            numbers = f"difference {self.estimate:+.3g} from {self.n} value(s): no standard error"
        elif self.margin is None:
            numbers = (
                f"difference {self.estimate:+.3g} +- {self.se:.2g} (1 SE) "
                f"over {self.n} {self.unit}, "
                f"{self.z:+.1f} SE; needs beyond {self.k:.2f} SE"
            )
        else:
            numbers = (
                f"difference {self.estimate:+.3g} +- {self.k * self.se:.2g} ({self.k:.2f} SE) over "
                f"{self.n} {self.unit}; margin {self.margin:g}"
            )
        return f"{self.outcome}: {self.claim} [{numbers}]"


@dataclass(frozen=True)
class Differences:
    r"""A difference between two arms and its standard error (:func:`arm_differences`).

    .. math:: m = \frac1n\sum_i d_i, \qquad \mathrm{se} = \frac{s_d}{\sqrt n}

    for paired differences :math:`d_i` (:doc:`chapter 8 </book/08_gpt2_training>`, "Which of the
    paper's findings reproduce").

    Attributes:
        estimate: mean difference ``m``. se: its standard error. n: seeds, or final steps with one
            seed (the degrees of freedom of ``k`` are ``n - 1``). unit: ``"seeds"`` or
        ``"steps of one run"``.
    """

    estimate: float
    se: float
    n: int
    unit: str


def _summary(differences, unit: str) -> tuple[float, float, int, str]:
    """``(m, se, n, unit)`` of a :class:`Differences` or of an array of paired differences."""
    if isinstance(differences, Differences):
        return differences.estimate, differences.se, differences.n, differences.unit
    d = _as_differences(differences)
    m, se = _mean_se(d)
    return m, se, int(d.size), unit


def _as_differences(differences) -> np.ndarray:
    d = np.asarray(differences, dtype=float).reshape(-1)
    if not np.isfinite(d).all():
        raise ValueError(f"paired differences must be finite, got {d.tolist()}")
    return d


def _mean_se(d: np.ndarray) -> tuple[float, float]:
    if d.size == 0:
        raise ValueError("no paired differences: need at least one value")
    m = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size >= 2 else math.nan
    return m, se


def difference_verdict(
    differences,
    claim: str,
    *,
    unit: str = "seeds",
    level: float = 0.95,
    k: float | None = None,
    tol: float = 0.0,
) -> Verdict:
    r"""Decide a claim from paired differences ``d [n]`` (positive supports it), or from a
    :class:`Differences`.

    .. math:: \text{holds} \iff m > \max(k\,\mathrm{se}, \mathrm{tol}), \qquad
        \text{does not hold} \iff m < -\max(k\,\mathrm{se}, \mathrm{tol})

    with :math:`k` of :func:`critical_value` (:doc:`chapter 8 </book/08_gpt2_training>`).

    ``holds`` if ``m > max(k se, tol)``, ``does not hold`` if ``m < -max(k se, tol)``, else
    ``inconclusive at this scale`` (always when ``n < 2``); for an array ``m = mean(d)``,
    ``se = sd(d) / sqrt(n)``; ``k = critical_value(n, level)`` unless given.

    Raises:
        ValueError: no or non-finite differences; ``k`` or ``tol`` negative or not finite.
    """
    m, se, n, unit = _summary(differences, unit)
    for name, value in (("k", k), ("tol", tol)):
        if value is not None and not (
            isinstance(value, (int, float)) and math.isfinite(value) and value >= 0
        ):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if n < 2 or not math.isfinite(se):
        return Verdict(claim, INCONCLUSIVE, m, math.nan, n, math.nan, unit)
    k = critical_value(n, level) if k is None else float(k)
    bar = max(k * se, float(tol))
    outcome = HOLDS if m > bar else FAILS if m < -bar else INCONCLUSIVE
    return Verdict(claim, outcome, m, se, n, k, unit)


def equivalence_verdict(
    differences,
    claim: str,
    margin: float,
    *,
    unit: str = "seeds",
    level: float = 0.95,
    k: float | None = None,
) -> Verdict:
    r"""Decide "the difference is smaller than ``margin``" from paired differences ``d [n]`` or a
    :class:`Differences`.

    .. math:: \text{holds} \iff [m - k\,\mathrm{se},\ m + k\,\mathrm{se}] \subset
        (-\mathrm{margin}, \mathrm{margin}), \qquad
        \text{does not hold} \iff \lvert m\rvert - k\,\mathrm{se} > \mathrm{margin}

    (:doc:`chapter 8 </book/08_gpt2_training>`).

    ``holds`` if the interval ``m +- k se`` lies inside ``(-margin, margin)``; ``does not hold`` if
    it lies wholly outside it (``|m| - k se > margin``); else ``inconclusive at this scale``.

    Raises:
        ValueError: no or non-finite differences; ``margin`` not a finite number > 0.
    """
    if not (
        isinstance(margin, (int, float))
        and not isinstance(margin, bool)
        and math.isfinite(margin)
        and margin > 0
    ):
        raise ValueError(f"margin must be a finite number > 0, got {margin!r}")
    m, se, n, unit = _summary(differences, unit)
    if n < 2 or not math.isfinite(se):
        return Verdict(claim, INCONCLUSIVE, m, math.nan, n, math.nan, unit, float(margin))
    k = critical_value(n, level) if k is None else float(k)
    half = k * se
    outcome = HOLDS if abs(m) + half < margin else FAILS if abs(m) - half > margin else INCONCLUSIVE
    return Verdict(claim, outcome, m, se, n, k, unit, float(margin))


def all_verdict(verdicts: Iterable[Verdict], claim: str) -> Verdict:
    r"""A conjunction: ``holds`` if every part holds, ``does not hold`` if any part does not, else
    inconclusive.

    The weakest part is the one with the smallest :math:`m/\mathrm{se}`
    (:doc:`chapter 8 </book/08_gpt2_training>`'s combined claims).

    The numbers reported are those of the weakest part (smallest ``m / se``).

    Raises:
        ValueError: no parts.
    """
    parts = list(verdicts)
    if not parts:
        raise ValueError("all_verdict needs at least one verdict")
    outcomes = {v.outcome for v in parts}
    outcome = FAILS if FAILS in outcomes else HOLDS if outcomes == {HOLDS} else INCONCLUSIVE
    weakest = min(parts, key=lambda v: v.z if not math.isnan(v.z) else -math.inf)
    return Verdict(
        claim,
        outcome,
        weakest.estimate,
        weakest.se,
        weakest.n,
        weakest.k,
        weakest.unit,
        weakest.margin,
    )


def arm_differences(
    runs, metric: str, a: str, b: str, *, last: int = 5, relative: bool = False
) -> Differences:
    r"""The difference ``a - b`` of ``metric`` between two arms at the end of tidy runs, with its
    standard error.

    .. math:: d_s = \bar x_{a,s} - \bar x_{b,s}, \qquad m = \frac1n\sum_s d_s, \qquad
        \mathrm{se} = \frac{s_d}{\sqrt n}

    (several seeds), or :math:`\mathrm{se} = \sqrt{s_a^2 + s_b^2}/\sqrt n` over the last steps of one
    run (:doc:`chapter 8 </book/08_gpt2_training>`).

    ``runs``: a frame with columns ``arm``, ``seed``, ``step`` and ``metric`` (one beta and one
    number of
    updates per batch: filter first). With two or more seeds that both arms have: ``d[s]`` =
    difference of the arms' means over their last ``last`` steps in seed ``s``, ``m = mean(d)``,
    ``se = sd(d) / sqrt(n)``
    (unit ``"seeds"``). With one seed: ``m`` = difference of the two arms' means over the last
    ``last`` steps, ``se = sqrt(s_a^2 + s_b^2) / sqrt(n)`` from each arm's step-to-step spread over
    those
    ``n`` steps (unit ``"steps of one run"``; not paired by step, see the module). ``relative``:
    ``m``
    and ``se``
    divided by the mean of ``b``'s values.

    Raises:
        KeyError: a missing column or arm (named). ValueError: ``last`` not an int >= 1; duplicated
            steps;
            the arms share no seed or no step; ``relative`` with a zero mean of ``b``.
    """
    for col in ("arm", "seed", "step", metric):
        if col not in runs.columns:
            raise KeyError(
                f"runs have no column {col!r}; have: {', '.join(map(str, runs.columns))}"
            )
    for arm in (a, b):
        if arm not in set(runs["arm"]):
            raise KeyError(
                f"no runs of arm {arm!r}; arms present: {', '.join(sorted(set(runs['arm'])))}"
            )
    if isinstance(last, bool) or not isinstance(last, (int, np.integer)) or last < 1:
        raise ValueError(f"last must be an int >= 1, got {last!r}")
    sub = runs[runs["arm"].isin([a, b])]
    if sub.duplicated(["arm", "seed", "step"]).any():
        raise ValueError(
            "runs hold duplicated (arm, seed, step) rows: filter to one beta and one "
            "updates_per_batch first"
        )
    table = sub.pivot(index=["seed", "step"], columns="arm", values=metric).dropna()
    seeds = sorted(set(table.index.get_level_values("seed")))
    if not seeds:
        raise ValueError(f"arms {a!r} and {b!r} share no (seed, step)")
    tails = [table.xs(s, level="seed").sort_index().tail(last) for s in seeds]
    if len(seeds) >= 2:
        va = np.array([t[a].mean() for t in tails])
        vb = np.array([t[b].mean() for t in tails])
        d = _as_differences(va - vb)
        m, se = _mean_se(d)
        n, unit = len(seeds), "seeds"
    else:
        va, vb = tails[0][a].to_numpy(dtype=float), tails[0][b].to_numpy(dtype=float)
        n, unit = len(va), "steps of one run"
        m = float(va.mean() - vb.mean())
        se = float(math.sqrt((va.var(ddof=1) + vb.var(ddof=1)) / n)) if n >= 2 else math.nan
    if relative:
        scale = float(np.mean(vb))
        if scale == 0:
            raise ValueError(
                f"relative differences need a non-zero mean of {metric!r} for arm {b!r}, got 0"
            )
        m, se = m / scale, se / abs(scale)
    return Differences(m, se, n, unit)


def paired_verdict(
    runs,
    metric: str,
    lower: str,
    higher: str,
    *,
    claim: str | None = None,
    last: int = 5,
    level: float = 0.95,
    tol: float = 0.0,
) -> Verdict:
    r"""Verdict on "arm ``lower`` ends with a smaller ``metric`` than arm ``higher``".

    The claim holds when :math:`m > \max(k\,\mathrm{se}, \mathrm{tol})` with
    :math:`m = \bar x_{\text{higher}} - \bar x_{\text{lower}}` (:doc:`chapter 8 </book/08_gpt2_training>`).

    The difference is ``higher - lower`` from :func:`arm_differences` (per seed, or over the final
    steps with one seed), decided by :func:`difference_verdict`.
    """
    claim = claim or f"{lower} ends with a smaller {metric} than {higher}"
    return difference_verdict(
        arm_differences(runs, metric, higher, lower, last=last), claim, level=level, tol=tol
    )
