r"""Monte Carlo quality of KL estimators and of KL gradient estimates: bias, variance, confidence intervals.

Book chapter 2 ("the value-estimation view"). Samples ``y ~ pi_theta`` give log-probabilities
``logp = log pi_theta(y)`` and ``logp_ref = log pi_ref(y)``, ``[n]``; an estimator ``k_n`` of
``KL(pi_theta || pi_ref)`` (:mod:`klnotes.core.estimators`) turns them into ``n`` values whose mean estimates
the KL. This module answers three questions about such estimates:

1. Sampling error: :func:`mean_ci`, :func:`variance_ci` and :func:`kl_estimate` give a point estimate,
   its standard error and a normal-approximation confidence interval

   .. math::

       \bar x \pm z_{(1+\mathrm{level})/2}\, \frac{s}{\sqrt n}, \qquad
       s^2 = \frac{1}{n-1}\sum_i (x_i - \bar x)^2 .

2. Exact bias and variance, to compare sampling against. For a categorical policy (exact enumeration in
   float64, :func:`categorical_moments`) and for a pair of Gaussians (closed forms,
   :func:`gaussian_moments`). For Gaussians, sampler ``q = N(mu_q, sigma_q^2)`` (the policy) and
   reference ``p = N(mu_p, sigma_p^2)``, with ``x = mu_q + sigma_q z``, ``z ~ N(0, 1)`` the log-ratio is a
   quadratic in ``z`` (eq-2-gauss-u):

   .. math::

       u &= \log q(x) - \log p(x) = a + b z + c z^2, \\
       a &= \log\frac{\sigma_p}{\sigma_q} + \frac{(\mu_q - \mu_p)^2}{2\sigma_p^2}, \qquad
       b = \frac{(\mu_q - \mu_p)\,\sigma_q}{\sigma_p^2}, \qquad
       c = \frac12\Big(\frac{\sigma_q^2}{\sigma_p^2} - 1\Big),

   and the variance of :math:`k_3 = e^{-u} - 1 + u` is (eq-2-k3-var):

   .. math::

       \mathrm{Var}_q[k_3] &= \chi^2(p\,\|\,q) + \mathrm{Var}_q[u]
           - 2\big(\mathrm{KL}(q\,\|\,p) + \mathrm{KL}(p\,\|\,q)\big), \\
       \chi^2(p\,\|\,q) &= \mathbb{E}_q\big[(p/q)^2\big] - 1,

   finite if and only if ``sigma_q^2 > sigma_p^2 / 2`` (:func:`k3_variance_finite`). The paper's example
   (Liu et al., 2025) samples from ``q = N(0.1, 0.2^2)`` with reference ``p = N(0, 1)``:
   ``0.04 < 0.5``, so k3's variance is infinite although its mean is the KL.

3. Gradient estimates: per-sample gradient vectors ``[n, d]`` summarized by their mean, the trace of
   their covariance and per-coordinate intervals (:func:`gradient_estimate`); the cosine and relative
   error of the mean gradient against a reference, with bootstrap intervals (:func:`gradient_error_ci`).
   For a categorical policy with logits ``theta`` ``[V]``, the gradient of an implementation's surrogate
   depends on the sample only through the outcome, so :func:`outcome_gradients` gives all ``V`` of them
   ``[V, V]`` and :func:`exact_expected_gradient` their exact expectation ``sum_y pi(y) g(y)``.

Inputs are validated: fewer than 2 samples, confidence levels outside ``(0, 1)``, wrong shapes,
non-finite values and unknown estimator or implementation names raise errors saying what was
received and what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable

import pandas as pd
import torch

from klnotes.core import coefficients, estimators, surrogates
from klnotes.core.estimators import NAMES

__all__ = [
    "Estimate",
    "Moments",
    "Gaussian",
    "GradientEstimate",
    "GradientError",
    "z_value",
    "mean_ci",
    "variance_ci",
    "estimator_values",
    "kl_estimate",
    "bias_estimate",
    "categorical_moments",
    "sample_categorical",
    "categorical_samples",
    "categorical_sweep",
    "gaussian_kl",
    "gaussian_log_prob",
    "gaussian_samples",
    "gaussian_log_ratio_coefficients",
    "k3_variance_finite",
    "gaussian_moments",
    "gaussian_sweep",
    "running_std",
    "outcome_gradients",
    "exact_expected_gradient",
    "gradient_estimate",
    "gradient_error_ci",
    "expected_gradient_sweep",
]

DEFAULT_CONFIDENCE = 0.95


# --- validation ---------------------------------------------------------------------------------


def z_value(confidence: float) -> float:
    r"""Two-sided standard normal quantile ``z`` with ``P(|Z| <= z) = confidence`` (1.96 for 0.95).

    :math:`z = \Phi^{-1}\big(\tfrac{1 + \text{confidence}}{2}\big)`, with :math:`\Phi` the standard
    normal CDF: the half-width factor of :func:`mean_ci` and :func:`variance_ci`
    (:doc:`chapter 2 </book/02_value_estimation>`).

    Raises:
        ValueError: if ``confidence`` is not a number strictly between 0 and 1.
    """
    if (
        isinstance(confidence, bool)
        or not isinstance(confidence, (int, float))
        or not 0.0 < confidence < 1.0
    ):
        raise ValueError(
            f"confidence must be a number strictly between 0 and 1 (e.g. 0.95), got {confidence!r}"
        )
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def _check_samples(name: str, x: torch.Tensor, *, ndim: int = 1) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise TypeError(f"{name} must have a floating dtype (float32 or float64), got {x.dtype}")
    shape = "[n]" if ndim == 1 else "[n, d]"
    if x.dim() != ndim:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 samples for a variance, got n = {x.shape[0]}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(
            f"{name} has {int((~torch.isfinite(x)).sum())} non-finite value(s) of {x.numel()}"
        )
    return x.detach()


def _check_name(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return estimators.get(name)  # raises ValueError listing the allowed names


def _check_logprobs(name: str, logp: torch.Tensor) -> None:
    if not isinstance(logp, torch.Tensor) or not torch.is_floating_point(logp):
        raise TypeError(f"{name} must be a floating torch.Tensor of log-probabilities [V]")
    if logp.dim() != 1 or logp.shape[0] < 2:
        raise ValueError(f"{name} must have shape [V] with V >= 2, got {tuple(logp.shape)}")
    if not bool(torch.isfinite(logp).all()):
        raise ValueError(f"{name} has non-finite entries; every outcome needs positive probability")
    total = float(torch.logsumexp(logp.double(), 0))
    if abs(total) > 1e-6:
        raise ValueError(
            f"{name} must be normalized log-probabilities (logsumexp 0), got logsumexp {total:.3g}"
        )


# --- sampling error -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    r"""A point estimate with its standard error and a ``confidence`` interval ``[low, high]``.

    :math:`[\mathrm{low}, \mathrm{high}] = \hat x \pm z\,\mathrm{se}` for the normal intervals
    (:func:`mean_ci`, :func:`variance_ci`), percentiles for the bootstrap ones
    (:func:`gradient_error_ci`); :doc:`chapter 2 </book/02_value_estimation>`'s sampled estimates.
    """

    value: float
    std_error: float
    low: float
    high: float
    n: int
    confidence: float

    @property
    def half_width(self) -> float:
        """Half the width of the interval."""
        return 0.5 * (self.high - self.low)

    def contains(self, x: float) -> bool:
        """Whether ``x`` lies in ``[low, high]``."""
        return self.low <= x <= self.high


def mean_ci(samples: torch.Tensor, confidence: float = DEFAULT_CONFIDENCE) -> Estimate:
    r"""Sample mean of ``samples`` ``[n]`` (``n >= 2``) with the normal interval
    :math:`\bar x \pm z\,s/\sqrt n`.

    The interval around a sampled :math:`\mathbb{E}[k_n]` of :eq:`eq-2-estimators`
    (:doc:`chapter 2 </book/02_value_estimation>`).

    Raises:
        TypeError: not a floating tensor. ValueError: not 1-D, ``n < 2``, non-finite values, bad confidence.
    """
    z = z_value(confidence)
    x = _check_samples("samples", samples).double()
    n = x.shape[0]
    mean = float(x.mean())
    se = float(x.std(unbiased=True)) / math.sqrt(n)
    return Estimate(mean, se, mean - z * se, mean + z * se, n, confidence)


def variance_ci(samples: torch.Tensor, confidence: float = DEFAULT_CONFIDENCE) -> Estimate:
    r"""Unbiased sample variance ``s^2`` of ``samples`` ``[n]`` with a delta-method normal interval.

    .. math:: s^2 \pm z\,\sqrt{(m_4 - s^4)/n}

    for :math:`\mathrm{Var}[k_n]`, whose finiteness :eq:`eq-2-k3-var` decides for :math:`k_3`
    (:doc:`chapter 2 </book/02_value_estimation>`).

    Standard error ``sqrt((m4 - s^4) / n)`` with ``m4`` the fourth central sample moment; valid when the
    fourth moment is finite (it is not for k3 in the paper's Gaussian example: the interval is then
    meaningless, which is the point of that example).
    """
    z = z_value(confidence)
    x = _check_samples("samples", samples).double()
    n = x.shape[0]
    d = x - x.mean()
    var = float((d * d).sum()) / (n - 1)
    m4 = float((d**4).mean())
    se = math.sqrt(max(m4 - var * var, 0.0) / n)
    return Estimate(var, se, var - z * se, var + z * se, n, confidence)


def estimator_values(name: str, logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    r"""Per-sample values of estimator ``name`` (``"k1"``, ``"k2"``, ``"k3"``,
    :eq:`eq-2-estimators`) at samples ``y ~ pi_theta``.

    :math:`k_1 = u`, :math:`k_2 = u^2/2`, :math:`k_3 = e^{-u} - 1 + u` with
    :math:`u = \log\pi_\theta(y) - \log\pi_{\mathrm{ref}}(y)`.

    Args:
        logp, logp_ref: ``[n]`` log-probabilities of the samples under the sampler and the reference.
    Returns:
        ``[n]`` detached values ``k_n(u_i)``, ``u_i = logp_i - logp_ref_i``.
    Raises:
        ValueError: unknown name (lists the allowed ones), mismatched shapes, non-finite inputs.
    """
    return _check_name(name)(logp, logp_ref).detach()


def kl_estimate(
    name: str, logp: torch.Tensor, logp_ref: torch.Tensor, confidence: float = DEFAULT_CONFIDENCE
) -> Estimate:
    r"""Monte Carlo estimate of :math:`\mathrm{KL}(\pi_\theta\,\|\,\pi_{\mathrm{ref}})` by the mean
    of :math:`k_n`
    (:eq:`eq-2-estimators`) over samples ``[n]``, with its interval."""
    return mean_ci(estimator_values(name, logp, logp_ref), confidence)


def bias_estimate(
    name: str,
    logp: torch.Tensor,
    logp_ref: torch.Tensor,
    exact_kl: float,
    confidence: float = DEFAULT_CONFIDENCE,
) -> Estimate:
    r"""Estimated bias ``E[k_n] - KL`` from samples ``[n]`` given the exact ``KL``, with its interval.

    .. math:: \widehat{\mathrm{bias}} = \frac1n\sum_i k_n(u_i) - \mathrm{KL}(\pi_\theta\,\|\,\pi_{\mathrm{ref}})

    with :math:`k_n` of :eq:`eq-2-estimators` and the interval of :func:`mean_ci`; ``logp``,
    ``logp_ref``: ``[n]``.
    """
    if not isinstance(exact_kl, (int, float)) or not math.isfinite(exact_kl):
        raise ValueError(f"exact_kl must be a finite number, got {exact_kl!r}")
    e = kl_estimate(name, logp, logp_ref, confidence)
    return Estimate(
        e.value - exact_kl, e.std_error, e.low - exact_kl, e.high - exact_kl, e.n, e.confidence
    )


# --- exact moments: categorical -----------------------------------------------------------------


@dataclass(frozen=True)
class Moments:
    r"""Exact moments of one estimator: ``kl`` (the target), ``mean = E[k_n]``, ``variance = Var[k_n]``.

    .. math:: \mathbb{E}_{y\sim\pi_\theta}[k_n], \qquad
        \mathrm{Var}_{y\sim\pi_\theta}[k_n], \qquad \mathrm{kl} = \mathrm{KL}(\pi_\theta\,\|\,\pi_{\mathrm{ref}})

    of an estimator of :eq:`eq-2-estimators`; for Gaussians, :eq:`eq-2-gauss-u` and :eq:`eq-2-k3-var`.

    ``variance`` is ``math.inf`` where it diverges.
    """

    name: str
    kl: float
    mean: float
    variance: float

    @property
    def bias(self) -> float:
        """``E[k_n] - KL``."""
        return self.mean - self.kl

    @property
    def std(self) -> float:
        """Standard deviation of one sample's value, ``sqrt(Var[k_n])``."""
        return math.sqrt(self.variance)

    @property
    def relative_bias(self) -> float:
        """``bias / KL``."""
        return self.bias / self.kl

    @property
    def relative_std(self) -> float:
        """``std / KL`` (Schulman's "stdev/true")."""
        return self.std / self.kl


def categorical_moments(name: str, logp: torch.Tensor, logp_ref: torch.Tensor) -> Moments:
    r"""Exact mean and variance of ``k_n`` under ``y ~ pi_theta`` for categorical policies, by enumeration.

    .. math:: \mathbb{E}[k_n] = \sum_y \pi_\theta(y)\,k_n(u_y), \qquad
        \mathrm{Var}[k_n] = \sum_y \pi_\theta(y)\,\big(k_n(u_y) - \mathbb{E}[k_n]\big)^2

    with :math:`k_n` of :eq:`eq-2-estimators` (:doc:`chapter 2 </book/02_value_estimation>`).

    ``E[k_n] = sum_y pi(y) k_n(u_y)``, ``Var[k_n] = sum_y pi(y) (k_n(u_y) - E[k_n])^2``, in float64.

    Args:
        name: ``"k1"``, ``"k2"`` or ``"k3"``.
        logp, logp_ref: normalized log-probabilities ``[V]`` of ``pi_theta`` (the sampler) and ``pi_ref``.
    """
    fn = _check_name(name)
    _check_logprobs("logp", logp)
    _check_logprobs("logp_ref", logp_ref)
    lp, lr = logp.detach().double(), logp_ref.detach().double()
    if lp.shape != lr.shape:
        raise ValueError(
            f"logp and logp_ref must have the same shape, got {tuple(lp.shape)} and {tuple(lr.shape)}"
        )
    pi = lp.exp()
    k = fn(lp, lr)
    mean = float((pi * k).sum())
    var = float((pi * (k - mean) ** 2).sum())
    kl = float((pi * (lp - lr)).sum())
    return Moments(name, kl, mean, var)


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n (the number of samples) must be an int >= 2, got {n!r}")
    return n


def sample_categorical(
    logp: torch.Tensor, n: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    r"""``n`` i.i.d. outcomes ``[n]`` (int64) from the categorical distribution ``exp(logp)`` ``[V]``.

    :math:`y_i \sim \pi` i.i.d., :math:`\pi(y) = e^{\mathrm{logp}_y}`: the samples on which
    :doc:`chapter 2 </book/02_value_estimation>` evaluates the estimators of :eq:`eq-2-estimators`.
    """
    _check_logprobs("logp", logp)
    return torch.multinomial(
        logp.detach().double().exp(), _check_n(n), replacement=True, generator=generator
    )


def categorical_samples(
    logp: torch.Tensor, logp_ref: torch.Tensor, n: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Sample ``y ~ exp(logp)`` ``n`` times; return ``(logp[y], logp_ref[y])``, each ``[n]``.

    The pair :math:`(\log\pi_\theta(y_i), \log\pi_{\mathrm{ref}}(y_i))`, :math:`y_i \sim \pi_\theta`,
    whose difference is the :math:`u` of :eq:`eq-2-estimators` (:doc:`chapter 2 </book/02_value_estimation>`).
    """
    _check_logprobs("logp_ref", logp_ref)
    if logp.shape != logp_ref.shape:
        raise ValueError(
            f"logp and logp_ref must have the same shape [V], got {tuple(logp.shape)} and {tuple(logp_ref.shape)}"
        )
    y = sample_categorical(logp, n, generator)
    return logp.detach()[y], logp_ref.detach()[y]


def categorical_sweep(logits_ref: torch.Tensor, direction: torch.Tensor, scales) -> pd.DataFrame:
    r"""Exact moments of k1, k2, k3 as ``pi_theta = softmax(logits_ref + t * direction)`` moves away from ``pi_ref``.

    :func:`categorical_moments` at each :math:`t`, with
    :math:`\mathrm{relative\_bias} = (\mathbb{E}[k_n] - \mathrm{KL})/\mathrm{KL}` and
    :math:`\mathrm{relative\_std} = \sqrt{\mathrm{Var}[k_n]}/\mathrm{KL}` (:eq:`eq-2-estimators`);
    drawn in :numref:`fig-2-categorical-sweep`.

    Args:
        logits_ref, direction: ``[V]``; scales: iterable of ``t > 0``.
    Returns:
        a tidy frame, one row per ``(t, estimator)``: ``t``, ``estimator``, ``kl``, ``mean``, ``bias``,
        ``std``, ``relative_bias``, ``relative_std``.
    """

    logits_ref = logits_ref.detach().double()
    lr = torch.log_softmax(logits_ref, -1)
    rows = []
    for t in scales:
        lp = torch.log_softmax(logits_ref + float(t) * direction.detach().double(), -1)
        for name in NAMES:
            m = categorical_moments(name, lp, lr)
            rows.append(_row(m, t=float(t)))
    if not rows:
        raise ValueError("scales must contain at least one value")
    return pd.DataFrame(rows)


def _row(m: Moments, **extra) -> dict:
    return {
        **extra,
        "estimator": m.name,
        "kl": m.kl,
        "mean": m.mean,
        "bias": m.bias,
        "std": m.std,
        "relative_bias": m.relative_bias,
        "relative_std": m.relative_std,
    }


# --- exact moments: Gaussians -------------------------------------------------------------------


@dataclass(frozen=True)
class Gaussian:
    r"""A normal distribution ``N(mean, std^2)``; ``std > 0``.

    The policies of :doc:`chapter 2 </book/02_value_estimation>`'s Gaussian example:
    :math:`q = \mathcal{N}(\mu_q, \sigma_q^2)` plays :math:`\pi_\theta`, :math:`p = \mathcal{N}(\mu_p,
    \sigma_p^2)` plays :math:`\pi_{\mathrm{ref}}` (:eq:`eq-2-gauss-u`).
    """

    mean: float
    std: float

    def __post_init__(self):
        if not (isinstance(self.mean, (int, float)) and math.isfinite(self.mean)):
            raise ValueError(f"Gaussian mean must be a finite number, got {self.mean!r}")
        if not (isinstance(self.std, (int, float)) and math.isfinite(self.std) and self.std > 0):
            raise ValueError(f"Gaussian std must be a finite number > 0, got {self.std!r}")


def gaussian_kl(q: Gaussian, p: Gaussian) -> float:
    r""":math:`\mathrm{KL}(q\,\|\,p) = \log\frac{\sigma_p}{\sigma_q}
    + \frac{\sigma_q^2 + (\mu_q - \mu_p)^2}{2\sigma_p^2} - \frac12`
    of two normal distributions (:eq:`eq-1-kl`)."""
    return math.log(p.std / q.std) + (q.std**2 + (q.mean - p.mean) ** 2) / (2 * p.std**2) - 0.5


def gaussian_log_prob(x: torch.Tensor, g: Gaussian) -> torch.Tensor:
    r"""``log N(x; mu, sigma^2)`` elementwise, shape of ``x``.

    .. math:: \log\mathcal{N}(x;\mu,\sigma^2) = -\frac{(x-\mu)^2}{2\sigma^2} - \log\sigma - \tfrac12\log 2\pi

    the log-densities whose difference is :eq:`eq-2-gauss-u`'s :math:`u`.
    """
    return -0.5 * ((x - g.mean) / g.std) ** 2 - math.log(g.std) - 0.5 * math.log(2 * math.pi)


def gaussian_samples(
    q: Gaussian, p: Gaussian, n: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Sample ``x ~ q`` ``n`` times (float64); return ``(log q(x), log p(x))``, each ``[n]``.

    Their difference is :math:`u = \log q(x) - \log p(x) = a + bz + \kappa z^2`
    (:eq:`eq-2-gauss-u`), the input of :numref:`fig-2-running-std`.

    ``q`` plays ``pi_theta`` (the sampler) and ``p`` plays ``pi_ref``: the estimators then target ``KL(q || p)``.
    """
    x = q.mean + q.std * torch.randn(_check_n(n), dtype=torch.float64, generator=generator)
    return gaussian_log_prob(x, q), gaussian_log_prob(x, p)


def gaussian_log_ratio_coefficients(q: Gaussian, p: Gaussian) -> tuple[float, float, float]:
    r"""``(a, b, c)`` with :math:`u = \log q(x) - \log p(x) = a + b z + c z^2` for
    :math:`x = \mu_q + \sigma_q z`
    (:eq:`eq-2-gauss-u`)."""
    d = q.mean - p.mean
    a = math.log(p.std / q.std) + d * d / (2 * p.std**2)
    b = d * q.std / p.std**2
    c = 0.5 * (q.std**2 / p.std**2 - 1.0)
    return a, b, c


def k3_variance_finite(q: Gaussian, p: Gaussian) -> bool:
    r"""Whether :math:`\mathrm{Var}_{x\sim q}[k_3]` is finite (:eq:`eq-2-k3-var`): iff
    :math:`\mathbb{E}_q[(p/q)^2] < \infty` iff :math:`\sigma_q^2 > \sigma_p^2/2`."""
    return 1.0 + 4.0 * gaussian_log_ratio_coefficients(q, p)[2] > 0.0


def _poly_mul(x: list[float], y: list[float]) -> list[float]:
    out = [0.0] * (len(x) + len(y) - 1)
    for i, xi in enumerate(x):
        for j, yj in enumerate(y):
            out[i + j] += xi * yj
    return out


def _normal_moment(k: int) -> float:
    """``E[z^k]`` for ``z ~ N(0, 1)``: 0 for odd ``k``, ``(k - 1)!!`` for even ``k``."""
    return 0.0 if k % 2 else float(math.prod(range(k - 1, 0, -2)))


def _quadratic_moments(a: float, b: float, c: float, order: int) -> list[float]:
    """``[E[u^0], ..., E[u^order]]`` for ``u = a + b z + c z^2``, by expanding the polynomial."""
    base, power, out = [a, b, c], [1.0], []
    for _ in range(order + 1):
        out.append(sum(coef * _normal_moment(k) for k, coef in enumerate(power)))
        power = _poly_mul(power, base)
    return out


def gaussian_moments(name: str, q: Gaussian, p: Gaussian) -> Moments:
    r"""Exact mean and variance of ``k_n`` under ``x ~ q`` as an estimator of ``KL(q || p)``, in closed form.

    .. math:: \mathbb{E}[u] = a + \kappa, \qquad \mathrm{Var}[u] = b^2 + 2\kappa^2, \qquad
        \chi^2(p\,\|\,q) = \frac{e^{-2a + 2b^2/(1 + 4\kappa)}}{\sqrt{1 + 4\kappa}} - 1

    (the module writes :math:`c` for :math:`\kappa`).

    With ``u = a + b z + c z^2`` (eq-2-gauss-u): ``E[u] = a + c``, ``Var[u] = b^2 + 2 c^2``;
    ``k2 = u^2/2`` from ``E[u^2]``, ``E[u^4]``; ``E[k3] = KL(q || p)`` (since ``E_q[p/q] = 1``) and
    ``Var[k3]`` from eq-2-k3-var with
    ``chi2(p || q) = E[exp(-2u)] - 1 = exp(-2a + 2 b^2 / (1 + 4c)) / sqrt(1 + 4c) - 1`` when ``1 + 4c > 0``;
    ``math.inf`` otherwise (``sigma_q^2 <= sigma_p^2 / 2``), and also where the finite value exceeds
    float64's range (``sigma_q^2`` barely above ``sigma_p^2 / 2`` with different means).
    """
    _check_name(name)
    a, b, c = gaussian_log_ratio_coefficients(q, p)
    m = _quadratic_moments(a, b, c, 4)
    kl = gaussian_kl(q, p)
    if name == "k1":
        return Moments(name, kl, m[1], m[2] - m[1] ** 2)
    if name == "k2":
        return Moments(name, kl, 0.5 * m[2], 0.25 * (m[4] - m[2] ** 2))
    if not k3_variance_finite(q, p):
        return Moments(name, kl, kl, math.inf)
    s = 1.0 + 4.0 * c  # = 2 sigma_q^2 / sigma_p^2 - 1
    exponent = -2.0 * a + 2.0 * b * b / s
    if (
        exponent > 700.0
    ):  # finite, but beyond float64 (only just above the threshold with a mean shift)
        return Moments(name, kl, kl, math.inf)
    chi2_pq = math.exp(exponent) / math.sqrt(s) - 1.0
    var = chi2_pq + (m[2] - m[1] ** 2) - 2.0 * (kl + gaussian_kl(p, q))
    return Moments(name, kl, kl, var)


def gaussian_sweep(p: Gaussian, qs) -> pd.DataFrame:
    """Exact moments of k1, k2, k3 for each sampler ``q`` in ``qs`` against the reference ``p``.

    :func:`gaussian_moments` for each :math:`q` (:eq:`eq-2-gauss-u`, :eq:`eq-2-k3-var`): the
    curves of :numref:`fig-2-k3-variance`.

    Returns:
        a tidy frame, one row per ``(q, estimator)``: ``q_mean``, ``q_std``, ``estimator``, ``kl``, ``mean``,
        ``bias``, ``std`` (``inf`` where it diverges), ``relative_bias``, ``relative_std``.
    """

    rows = [
        _row(gaussian_moments(name, q, p), q_mean=q.mean, q_std=q.std) for q in qs for name in NAMES
    ]
    if not rows:
        raise ValueError("qs must contain at least one Gaussian")
    return pd.DataFrame(rows)


def running_std(values: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    r"""Sample standard deviation of the first ``m`` values, for each ``m`` in ``at``.

    .. math:: s_m = \sqrt{\frac{1}{m-1}\Big(\sum_{i\le m} x_i^2 - \frac1m\big(\sum_{i\le m} x_i\big)^2\Big)}

    the curves of :numref:`fig-2-running-std`.

    Args:
        values: ``[n]`` samples; at: ``[k]`` integer prefix lengths in ``[2, n]``.
    Returns:
        ``[k]`` float64 standard deviations (unbiased variance), computed by cumulative sums.
    """
    x = _check_samples("values", values).double()
    at = torch.as_tensor(at, dtype=torch.long)
    if at.dim() != 1 or bool((at < 2).any()) or bool((at > x.shape[0]).any()):
        raise ValueError(f"at must be 1-D prefix lengths in [2, {x.shape[0]}], got {at.tolist()}")
    shift = x[0]  # centring by one sample keeps the cumulative sums well conditioned
    s1 = torch.cumsum(x - shift, 0)[at - 1]
    s2 = torch.cumsum((x - shift) ** 2, 0)[at - 1]
    m = at.double()
    return ((s2 - s1 * s1 / m) / (m - 1)).clamp_min(0.0).sqrt()


# --- gradients ----------------------------------------------------------------------------------


def outcome_gradients(label: str, logits: torch.Tensor, logits_ref: torch.Tensor) -> torch.Tensor:
    r"""Gradient of an implementation's surrogate with respect to the logits, for every outcome.

    Row :math:`y`: :math:`\nabla_{\text{logits}}\,s(y) = c(y)\,\nabla_{\text{logits}}\log\pi_\theta(y)`
    (:eq:`eq-3-coefficient`), with :math:`s` the surrogate of :eq:`eq-3-in-reward` or
    :eq:`eq-3-as-loss`.

    For a categorical policy ``pi = softmax(logits)`` ``[V]`` and sampled outcome ``y``, the surrogate of
    ``label`` (e.g. ``"k3 as loss"``, :func:`klnotes.core.surrogates.surrogate`) is evaluated at
    ``logp = log pi(y)``, ``logp_ref = log pi_ref(y)`` and differentiated by autograd.

    Returns:
        ``G`` ``[V, V]`` float64, row ``y`` = ``grad_logits surrogate(y)``. Per-sample gradients of samples
        ``ys`` ``[n]`` are ``G[ys]`` ``[n, V]``.
    Raises:
        ValueError: unknown label (lists the implementations), bad logits.
    """
    coefficients.parse_implementation(label)
    for nm, x in (("logits", logits), ("logits_ref", logits_ref)):
        if not isinstance(x, torch.Tensor) or x.dim() != 1 or x.shape[0] < 2:
            raise ValueError(
                f"{nm} must be a tensor of shape [V] with V >= 2, got {getattr(x, 'shape', x)!r}"
            )
    if logits.shape != logits_ref.shape:
        raise ValueError(
            f"logits and logits_ref must have the same shape, got {tuple(logits.shape)} and {tuple(logits_ref.shape)}"
        )
    theta = logits.detach().double().clone().requires_grad_(True)
    lr = torch.log_softmax(logits_ref.detach().double(), -1)
    rows = []
    for y in range(theta.shape[0]):
        lp = torch.log_softmax(theta, -1)
        (g,) = torch.autograd.grad(
            surrogates.surrogate(label, lp[y : y + 1], lr[y : y + 1]).sum(), theta
        )
        rows.append(g)
    return torch.stack(rows)


def exact_expected_gradient(
    label: str, logits: torch.Tensor, logits_ref: torch.Tensor
) -> torch.Tensor:
    r""":math:`\mathbb{E}_{y\sim\pi}[\nabla_{\text{logits}}\,s(y)] = \sum_y \pi(y)\,G[y]` ``[V]``,
    exact in float64
    (on-policy, :eq:`eq-4-expected-gradient`)."""
    g = outcome_gradients(label, logits, logits_ref)
    return torch.softmax(logits.detach().double(), -1) @ g


@dataclass(frozen=True)
class GradientEstimate:
    r"""Summary of per-sample gradients ``[n, d]``.

    .. math:: \bar g = \frac1n\sum_i g_i, \qquad
        \mathrm{tr}\,\mathrm{Cov}[g] = \frac{1}{n-1}\sum_i \lVert g_i - \bar g\rVert^2

    of per-sample gradients :math:`g_i = c(y_i)\,\nabla_\theta\log\pi_\theta(y_i)`
    (:eq:`eq-3-coefficient`), :doc:`chapter 2 </book/02_value_estimation>`.

    ``mean`` ``[d]``; ``std_error`` ``[d]`` per coordinate; ``cov_trace = tr Cov[g]`` (total variance of one
    sample's gradient); ``low``/``high`` ``[d]`` per-coordinate normal intervals at ``confidence``.
    """

    mean: torch.Tensor
    std_error: torch.Tensor
    cov_trace: float
    low: torch.Tensor
    high: torch.Tensor
    n: int
    confidence: float

    def contains(self, reference: torch.Tensor) -> bool:
        """Whether every coordinate of ``reference`` ``[d]`` lies in its interval."""
        reference = torch.as_tensor(reference, dtype=self.mean.dtype)
        if reference.shape != self.mean.shape:
            raise ValueError(
                f"reference must have shape {tuple(self.mean.shape)}, got {tuple(reference.shape)}"
            )
        return bool(((self.low <= reference) & (reference <= self.high)).all())


def gradient_estimate(
    grads: torch.Tensor, confidence: float = DEFAULT_CONFIDENCE
) -> GradientEstimate:
    r"""Mean, per-coordinate standard errors and intervals, and ``tr Cov`` of per-sample gradients ``[n, d]``.

    :math:`\bar g = \frac1n\sum_i g_i` and
    :math:`\mathrm{se}_j = \sqrt{\widehat{\mathrm{Var}}[g_{\cdot j}]/n}`, the sampled version of the
    expected gradient :eq:`eq-4-expected-gradient` (:doc:`chapter 2 </book/02_value_estimation>`).

    Intervals are simultaneous by Bonferroni: each coordinate uses level ``1 - (1 - confidence) / d``, so
    all ``d`` contain their true means with probability at least ``confidence`` (asymptotically).
    """
    z_value(confidence)
    g = _check_samples("grads", grads, ndim=2).double()
    n, d = g.shape
    z = z_value(1.0 - (1.0 - confidence) / d)
    mean = g.mean(0)
    var = g.var(0, unbiased=True)
    se = (var / n).sqrt()
    return GradientEstimate(mean, se, float(var.sum()), mean - z * se, mean + z * se, n, confidence)


@dataclass(frozen=True)
class GradientError:
    r"""Cosine and relative error ``|mean - ref| / |ref|`` of a mean gradient against a reference, with intervals.

    .. math:: \cos = \frac{\langle\bar g, g^\star\rangle}{\lVert\bar g\rVert\,\lVert g^\star\rVert},
        \qquad \mathrm{rel} = \frac{\lVert\bar g - g^\star\rVert}{\lVert g^\star\rVert}

    against the reverse-KL gradient :math:`g^\star` of :eq:`eq-3-rkl-gradient`
    (:func:`gradient_error_ci`).
    """

    cosine: Estimate
    relative_error: Estimate


def _cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1))


def gradient_error_ci(
    grads: torch.Tensor,
    reference: torch.Tensor,
    confidence: float = DEFAULT_CONFIDENCE,
    *,
    n_boot: int = 1000,
    generator: torch.Generator | None = None,
) -> GradientError:
    r"""Cosine similarity and relative error of the mean of ``grads`` ``[n, d]`` against ``reference`` ``[d]``.

    .. math:: \cos = \frac{\langle\bar g, g^\star\rangle}{\lVert\bar g\rVert\,\lVert g^\star\rVert}, \qquad
        \mathrm{rel} = \frac{\lVert\bar g - g^\star\rVert}{\lVert g^\star\rVert}, \qquad
        \bar g = \frac1n\sum_i g_i

    The reference is usually the reverse-KL gradient of :eq:`eq-3-rkl-gradient`
    (:doc:`chapter 2 </book/02_value_estimation>`, "A good value estimate is not a good gradient").

    ``cosine = <g, ref> / (|g| |ref|)``, ``relative_error = |g - ref| / |ref|`` with ``g`` the sample mean.
    Intervals: percentile bootstrap over ``n_boot`` resamples of the ``n`` rows; ``std_error`` is the
    bootstrap standard deviation.

    Raises:
        ValueError: bad shapes, ``n < 2``, a zero reference, ``n_boot < 2``, bad confidence.
    """
    z_value(confidence)
    g = _check_samples("grads", grads, ndim=2).double()
    ref = torch.as_tensor(reference).detach().double()
    if ref.shape != g.shape[1:]:
        raise ValueError(f"reference must have shape [d] = [{g.shape[1]}], got {tuple(ref.shape)}")
    if float(ref.norm()) == 0.0:
        raise ValueError("reference gradient is zero: cosine and relative error are undefined")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 2:
        raise ValueError(f"n_boot must be an int >= 2, got {n_boot!r}")
    n = g.shape[0]
    idx = torch.randint(0, n, (n_boot, n), generator=generator)
    # resampled means via counts: [n_boot, n] @ [n, d], memory n_boot * n indices only
    counts = torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(
        1, idx, torch.ones(n_boot, n, dtype=torch.float64)
    )
    boot = counts @ g / n
    mean = g.mean(0)
    out = []
    for stat in (lambda m: _cosine(m, ref), lambda m: (m - ref).norm(dim=-1) / ref.norm()):
        point = float(stat(mean))
        b = stat(boot)
        lo, hi = torch.quantile(
            b, torch.tensor([(1 - confidence) / 2, (1 + confidence) / 2], dtype=torch.float64)
        )
        out.append(Estimate(point, float(b.std()), float(lo), float(hi), n, confidence))
    return GradientError(*out)


def expected_gradient_sweep(
    labels, logits_ref: torch.Tensor, direction: torch.Tensor, scales
) -> pd.DataFrame:
    r"""Exact expected gradient of each implementation against the reverse-KL gradient along a path.

    .. math:: \mathrm{relative\_error}(t) = \frac{\lVert \mathbb{E}[g] - g^\star\rVert}{\lVert g^\star\rVert},
        \qquad g^\star = \nabla_\theta\,\mathrm{KL}(\pi_\theta\,\|\,\pi_{\mathrm{ref}})

    with :math:`\mathbb{E}[g]` of :eq:`eq-4-expected-gradient` and :math:`g^\star` of
    :eq:`eq-3-rkl-gradient`: the curves of :numref:`fig-3-gradient-errors`.

    For ``pi_theta = softmax(logits_ref + t * direction)`` (``[V]``) and each ``t`` in ``scales``, compares
    :func:`exact_expected_gradient` of every label with ``g* = grad_theta KL(pi_theta || pi_ref)`` (autograd
    through the exact sum).

    Returns:
        a tidy frame, one row per ``(t, label)``: ``t``, ``kl``, ``label``, ``relative_error`` =
        ``|E g - g*| / |g*|`` and ``cosine`` = ``<E g, g*> / (|E g| |g*|)`` (NaN where
        ``|E g| <= 1e-12 |g*|``: no direction).
    """

    logits_ref = logits_ref.detach().double()
    logp_ref = torch.log_softmax(logits_ref, -1)
    rows = []
    for t in scales:
        theta = (logits_ref + float(t) * direction.detach().double()).requires_grad_(True)
        kl = _kl(torch.log_softmax(theta, -1), logp_ref)
        (target,) = torch.autograd.grad(kl, theta)
        theta, kl = theta.detach(), kl.detach()
        for label in labels:
            g = exact_expected_gradient(label, theta, logits_ref)
            norm, tnorm = float(g.norm()), float(target.norm())
            rows.append(
                {
                    "t": float(t),
                    "kl": float(kl),
                    "label": label,
                    "relative_error": float((g - target).norm() / target.norm()),
                    # a zero expected gradient (up to rounding) has no direction
                    "cosine": float(g @ target) / (norm * tnorm)
                    if norm > 1e-12 * tnorm
                    else math.nan,
                }
            )
    if not rows:
        raise ValueError("scales and labels must be non-empty")
    return pd.DataFrame(rows)


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    return (logp.exp() * (logp - logq)).sum(-1)
