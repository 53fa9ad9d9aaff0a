"""The frameworks' per-token KL formulas, replicated in torch (``logp``, ``ref``: ``[batch, time]``).

tests/upstream/ keeps the frameworks' own functions verbatim; tests/test_frameworks.py checks that these
replicas equal them in value and gradient."""

from __future__ import annotations

import torch

__all__ = [
    "verl_kl_penalty_forward",
    "verl_kl_penalty",
    "openrlhf_compute_approx_kl",
    "trl_per_token_kl",
    "sequence_sum",
]


def verl_kl_penalty_forward(logp: torch.Tensor, ref: torch.Tensor, kind: str) -> torch.Tensor:
    r"""verl ``core_algos.kl_penalty_forward``: ``kl``/``k1`` = ``u``, ``abs`` = ``|u|``,
    ``mse``/``k2`` = ``u^2/2``, ``low_var_kl``/``k3`` = ``clamp(e^x - x - 1, -10, 10)`` with
    ``x = clamp(ref - logp, -20, 20)``. ``full`` raises ``NotImplementedError`` as in verl.

    .. math:: k_1 = u, \quad \lvert u\rvert, \quad k_2 = \tfrac12 u^2, \quad
        \mathrm{clamp}\big(e^{x} - x - 1, -10, 10\big),\ x = \mathrm{clamp}(-u, -20, 20)

    with :math:`u = \log\pi_\theta - \log\pi_{\mathrm{ref}}` (the estimators of :eq:`eq-2-estimators`;
    clamps drawn in :numref:`fig-9-clamps`); ``logp``, ``ref``: ``[batch, time]``, same shape out.
    """
    if kind in ("kl", "k1"):
        return logp - ref
    if kind == "abs":
        return (logp - ref).abs()
    if kind in ("mse", "k2"):
        return 0.5 * (logp - ref).square()
    if kind in ("low_var_kl", "k3"):
        x = torch.clamp(ref - logp, min=-20, max=20)
        return torch.clamp(torch.exp(x) - x - 1, min=-10, max=10)
    raise NotImplementedError(f"verl kl_penalty {kind!r} is not implemented")


def verl_kl_penalty(logp: torch.Tensor, ref: torch.Tensor, kind: str) -> torch.Tensor:
    r"""verl ``core_algos.kl_penalty``: a trailing ``+`` keeps the value of ``kind`` but
    back-propagates the gradient of k2 (straight-through).

    .. math:: \ell = k_2(u) - \mathrm{sg}\big(k_2(u)\big) + \mathrm{sg}\big(k(u)\big)

    value :math:`k(u)`, coefficient :math:`u` (:eq:`eq-9-coefficient`); without ``+`` the value of
    :func:`verl_kl_penalty_forward`. Shapes as there.
    """
    base = kind[:-1] if kind.endswith("+") else kind
    forward = verl_kl_penalty_forward(logp, ref, base)
    if not kind.endswith("+") or kind in ("mse", "k2"):
        return forward
    backward = 0.5 * (logp - ref).square()
    return backward - backward.detach() + forward.detach()


def openrlhf_compute_approx_kl(
    logp: torch.Tensor, ref: torch.Tensor, kl_estimator: str
) -> torch.Tensor:
    r"""OpenRLHF ``compute_approx_kl``: k1 ``u``, k2 ``u^2/2``, k3 ``e^{-u} - 1 + u``, then clamped to
    ``[-10, 10]`` (OpenRLHF casts to float32 first; dtype is left alone here).

    .. math:: \mathrm{clamp}\big(k_n(u), -10, 10\big), \qquad
        k_1 = u,\ k_2 = \tfrac12 u^2,\ k_3 = e^{-u} - 1 + u

    (:eq:`eq-2-estimators`; :numref:`fig-9-clamps`); ``logp``, ``ref``: ``[batch, time]``.
    """
    log_ratio = logp - ref
    if kl_estimator == "k2":
        log_ratio = log_ratio**2 / 2.0
    elif kl_estimator == "k3":
        log_ratio = (-log_ratio).exp() - 1 - (-log_ratio)
    elif kl_estimator != "k1":
        raise ValueError(f"unknown kl_estimator {kl_estimator!r}")
    return log_ratio.clamp(min=-10, max=10)


def trl_per_token_kl(logp: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    r"""TRL ``GRPOTrainer._compute_loss``: ``exp(ref - logp) - (ref - logp) - 1`` (k3, no clamp).

    .. math:: k_3 = e^{-u} - 1 + u, \qquad u = \log\pi_\theta - \log\pi_{\mathrm{ref}}

    the :math:`k_3` of :eq:`eq-2-estimators` that GRPO adds as a loss (:eq:`eq-1-grpo`); ``[batch,
    time]`` in and out.
    """
    return torch.exp(ref - logp) - (ref - logp) - 1


def sequence_sum(r: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""``A_t = sum_s r_s mask_s`` on every token (an outcome-style advantage, as in GRPO).

    .. math:: A_t = \sum_s r_s\,m_s \quad (m_t = 1)

    the sum of the sequence's token rewards (a KL reward :math:`-\beta u_s` among them) on every
    response token, where a reward-to-go (:math:`G_t` of :eq:`eq-5-reward-to-go`) sums
    :math:`s \ge t` only; ``r``, ``mask``: ``[batch, time]``.
    """
    return (r * mask).sum(-1, keepdim=True) * mask
