r"""Schulman's KL estimators k1, k2, k3 as functions of log-probabilities.

Notation (book chapter 1, {cite:t}`liu2025rethinking`): a sample ``y ~ pi_theta`` has log-probabilities
``logp = log pi_theta(y)`` and ``logp_ref = log pi_ref(y)``; the log-ratio is

.. math:: u = \log\pi_\theta(y) - \log\pi_{\mathrm{ref}}(y) \qquad (\texttt{u = logp - logp\_ref})

and the paper's ratio is :math:`\delta = \pi_{\mathrm{ref}}(y)/\pi_\theta(y) = e^{-u}`. The three
estimators of :math:`\mathrm{KL}(\pi_\theta\,\|\,\pi_{\mathrm{ref}})` are

.. math::

    k_1 &= -\log\delta = u, \\
    k_2 &= \tfrac12 (\log\delta)^2 = \tfrac12 u^2, \\
    k_3 &= \delta - 1 - \log\delta = e^{-u} - 1 + u .

All functions are elementwise: ``logp`` and ``logp_ref`` are tensors of exactly the same shape and
floating dtype (any shape: ``[batch]``, ``[batch, time]``, ...), and the result has that shape.
They are differentiable in both arguments. Inputs are validated: a shape or dtype mismatch raises
``ValueError``/``TypeError`` (no silent broadcasting), and NaN or infinite inputs raise
``ValueError`` saying how many there are and where.

Numerics: k3 is evaluated without cancellation. For ``|u| < 0.5`` it uses its Taylor series
:math:`u^2/2 - u^3/6 + u^4/24 - \dots` (relative error ~ machine epsilon even for ``u = 1e-20``); elsewhere
``expm1(-u) + u``. It is finite for ``|u| <= 50`` in float32 (``exp(50) ~ 5e21``); in float32 it
overflows only beyond ``u < -88``, where the true value exceeds the largest float32.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["NAMES", "k1", "k2", "k3", "get", "log_ratio", "validate_pair", "k3_of_u"]

#: Names of the estimators, in the book's order.
NAMES: tuple[str, ...] = ("k1", "k2", "k3")

_SERIES_RADIUS = 0.5
# Taylor coefficients of exp(-u) - 1 + u = sum_{j>=2} (-u)^j / j!, enough terms for float64 at |u| < 0.5.
_SERIES_TERMS = 20


def _describe_nonfinite(name: str, x: torch.Tensor) -> str | None:
    bad = ~torch.isfinite(x)
    count = int(bad.sum())
    if count == 0:
        return None
    where = [tuple(int(i) for i in idx) for idx in torch.nonzero(bad)[:5].tolist()]
    where_s = (
        ", ".join(str(w[0]) if len(w) == 1 else str(w) for w in where) if x.dim() else "the scalar"
    )
    more = f" (first 5 of {count})" if count > 5 else ""
    kinds = []
    if bool(torch.isnan(x).any()):
        kinds.append("NaN")
    if bool(torch.isinf(x).any()):
        kinds.append("inf")
    return (
        f"{name} has {count} non-finite value(s) ({'/'.join(kinds)}) of {x.numel()}, at index {where_s}{more}; "
        "log-probabilities must be finite"
    )


def validate_pair(
    logp: torch.Tensor,
    logp_ref: torch.Tensor,
    names: tuple[str, str] = ("logp", "logp_ref"),
    *,
    finite: bool = True,
) -> None:
    r"""Check that two log-probability tensors can be combined elementwise (and, if ``finite``, are finite).

    The pair is that of every estimator and coefficient: ``logp`` and ``logp_ref`` are
    :math:`\log\pi_\theta(y)` and :math:`\log\pi_{\mathrm{ref}}(y)` of the same samples, whose
    difference is the log-ratio :math:`u` of :eq:`eq-4-u`; same shape, any shape.

    Raises:
        TypeError: if an argument is not a floating-point ``torch.Tensor`` or the dtypes differ.
        ValueError: if the shapes differ (no broadcasting), or a value is NaN or infinite (the
            message says how many and at which indices).
    """
    for name, x in zip(names, (logp, logp_ref)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor of log-probabilities, got {type(x).__name__}"
            )
        if not torch.is_floating_point(x):
            raise TypeError(
                f"{name} must have a floating dtype (float32 or float64), got {x.dtype}"
            )
    if logp.shape != logp_ref.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have exactly the same shape (no broadcasting); "
            f"got {tuple(logp.shape)} and {tuple(logp_ref.shape)}"
        )
    if logp.dtype != logp_ref.dtype:
        raise TypeError(
            f"{names[0]} and {names[1]} must have the same dtype; got {logp.dtype} and {logp_ref.dtype}"
        )
    for name, x in zip(names, (logp, logp_ref)):
        if not finite:
            break
        message = _describe_nonfinite(name, x.detach())
        if message:
            raise ValueError(message)


def log_ratio(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    r"""Log-ratio :math:`u = \log\pi_\theta(y) - \log\pi_{\mathrm{ref}}(y)` (:eq:`eq-4-u`),
    validated.

    ``logp``, ``logp_ref``: same shape and floating dtype; the result has that shape.
    """
    validate_pair(logp, logp_ref)
    return logp - logp_ref


def k3_of_u(u: torch.Tensor) -> torch.Tensor:
    r""":math:`k_3 = e^{-u} - 1 + u` (:eq:`eq-2-estimators`) of the log-ratio ``u`` (any shape),
    without cancellation.

    Series ``sum_{j>=2} (-u)^j / j!`` (Horner) for ``|u| < 0.5``, ``expm1(-u) + u`` elsewhere. Each branch
    is evaluated on inputs where it is safe, so gradients are finite everywhere the value is.
    """
    small = u.abs() < _SERIES_RADIUS
    us = torch.where(small, u, torch.zeros_like(u))
    ul = torch.where(small, torch.ones_like(u), u)
    # Horner for sum_{j=2}^{N} (-u)^j / j! = (-u)^2 * (1/2! + (-u)/3! * (1 + ...))
    x = -us
    acc = torch.ones_like(us)
    for j in range(_SERIES_TERMS, 2, -1):
        acc = 1.0 + acc * x / j
    series = x * x * acc / 2.0
    return torch.where(small, series, torch.expm1(-ul) + ul)


def k1(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    r""":math:`k_1 = -\log\delta = u` (:eq:`eq-2-estimators`): unbiased for
    :math:`\mathrm{KL}(\pi_\theta\,\|\,\pi_{\mathrm{ref}})` on-policy, can be negative. Shape of
    ``logp``."""
    return log_ratio(logp, logp_ref)


def k2(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    r""":math:`k_2 = \tfrac12(\log\delta)^2 = \tfrac12 u^2` (:eq:`eq-2-estimators`): biased,
    non-negative.
    Shape of ``logp``."""
    u = log_ratio(logp, logp_ref)
    return 0.5 * u * u


def k3(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    r""":math:`k_3 = \delta - 1 - \log\delta = e^{-u} - 1 + u` (:eq:`eq-2-estimators`): unbiased
    on-policy,
    non-negative. Shape of ``logp``.

    Accurate for tiny ``|u|`` (series) and finite for ``|u| <= 50`` in float32 (see :func:`k3_of_u`).
    """
    return k3_of_u(log_ratio(logp, logp_ref))


_REGISTRY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": k1,
    "k2": k2,
    "k3": k3,
}


def get(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    r"""Return the estimator called ``name`` (one of :data:`NAMES`: :func:`k1`, :func:`k2`,
    :func:`k3`).

    The three estimators of :eq:`eq-2-estimators`, as functions of the log-ratio
    :math:`u = \log\pi_\theta - \log\pi_{\mathrm{ref}}`: :math:`k_1 = u`, :math:`k_2 = u^2/2`,
    :math:`k_3 = e^{-u} - 1 + u`. Each takes ``(logp, logp_ref)`` of one shape and returns that
    shape.

    Raises:
        ValueError: if ``name`` is unknown; the message lists the allowed names.
    """
    if isinstance(name, str) and name in _REGISTRY:
        return _REGISTRY[name]
    raise ValueError(f"unknown KL estimator {name!r}; allowed: {', '.join(NAMES)}")
