"""Importance-weighted KL terms off-policy: a differentiable weight or a detached one (chapter 6).

Samples come from ``pi_old``; ``w = pi_theta / pi_old`` (``exp(logp - sg(logp_old))``) is the
importance weight and ``u = log pi_theta - log pi_ref``. Two ways of putting ``w`` on a KL term
appear in the literature:

- a **differentiable** weight times the estimator's value, ``w * k_n(u)`` (Zhang et al. 2025's RPG
  view, DeepSeek-V3.2's ``w * k3``): since ``E_old[w f] = E_theta[f]`` as a function of theta, the
  gradient is that of ``E_theta[k_n]``, whatever that expectation is;
- a **detached** weight times the term, ``sg(w) * k_n(u)`` (the book's eq-6-correction, the
  correction Liu et al. 2025 propose): the expected gradient is the implementation's *on-policy*
  gradient, ``E_theta[k_n'(u) grad log pi]``.

:data:`FORMS` lists the forms and :data:`FOLLOWS` the gradient each one has (checked exactly in
the tests and in chapter 6). :func:`unnormalized_kl` is the generalized KL of nonnegative measures,
whose ``pi_theta``-integrand ``k3`` is (RPG's "k3 is exactly the unnormalized KL").
"""

from __future__ import annotations

from typing import Callable

import torch

from klnotes.analysis.exact import check_logits
from klnotes.core import estimators

__all__ = [
    "FORMS",
    "FOLLOWS",
    "weighted_kl",
    "sequence_weighted_surrogate",
    "unnormalized_kl",
    "expected_k2_gradient",
]

#: The weighted forms: ``"w*kn"`` (differentiable weight) and ``"sg(w)*kn"`` (detached weight).
FORMS: tuple[str, ...] = ("w*k1", "w*k2", "w*k3", "sg(w)*k1", "sg(w)*k2", "sg(w)*k3")

#: The exact expected gradient of each form on ``pi_old``'s samples (single step, or sequence level
#: with the sequence weight): ``"reverse KL"`` (grad KL(pi_theta || pi_ref)), ``"forward KL"``
#: (grad KL(pi_ref || pi_theta)), ``"E[k2]"`` (grad of E_theta[u^2/2], not a KL), ``"nothing"`` (zero).
FOLLOWS: dict[str, str] = {
    "w*k1": "reverse KL",
    "w*k2": "E[k2]",
    "w*k3": "reverse KL",
    "sg(w)*k1": "nothing",
    "sg(w)*k2": "reverse KL",
    "sg(w)*k3": "forward KL",
}


def weighted_kl(
    form: str, logp: torch.Tensor, logp_ref: torch.Tensor, logp_old: torch.Tensor
) -> torch.Tensor:
    r"""The weighted KL term ``form`` elementwise (any equal shapes): :math:`w\,k_n(u)` or
    :math:`\mathrm{sg}(w)\,k_n(u)`, :math:`w = \pi_\theta/\pi_{\mathrm{old}}`
    (:eq:`eq-6-correction`).

    Raises:
        ValueError: unknown form (lists :data:`FORMS`), mismatched shapes, non-finite values.
    """
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; allowed: {', '.join(FORMS)}")
    estimators.validate_pair(logp, logp_ref)
    estimators.validate_pair(logp, logp_old, names=("logp", "logp_old"))
    w = torch.exp(logp - logp_old.detach())
    if form.startswith("sg(w)"):
        w = w.detach()
    return w * estimators.get(form[-2:])(logp, logp_ref)


def sequence_weighted_surrogate(form: str) -> Callable:
    r"""Per-sequence ``f(logp, logp_ref, logp_old, mask) -> [N]`` for :func:`klnotes.analysis.exact.expected_gradient`:
    :func:`weighted_kl` of the summed log-probabilities (the sequence weight ``prod_t w_t`` and the
    sequence log-ratio ``U``).

    .. math:: f = W\,k_n(U) \ \text{or}\ \mathrm{sg}(W)\,k_n(U), \qquad
        W = \prod_t w_t, \quad U = \sum_t u_t

    (:eq:`eq-6-correction` at sequence level, :eq:`eq-5-log-ratios`); ``mask``: ``[N, L]``.
    """
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; allowed: {', '.join(FORMS)}")

    def f(logp, logp_ref, logp_old, mask):
        m = mask.to(logp.dtype)
        return weighted_kl(form, (logp * m).sum(-1), (logp_ref * m).sum(-1), (logp_old * m).sum(-1))

    return f


def unnormalized_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    r"""Generalized KL of nonnegative measures ``p``, ``q`` (``[..., V]``, positive entries, not
    necessarily summing to 1): :math:`\sum_y p\log(p/q) + \sum_y (q - p)`. Equals the KL
    (:eq:`eq-1-kl`) when both sum to 1.

    Raises:
        ValueError: shapes differ or an entry is not positive and finite.
    """
    if p.shape != q.shape:
        raise ValueError(
            f"p and q must have the same shape, got {tuple(p.shape)} and {tuple(q.shape)}"
        )
    for name, x in (("p", p), ("q", q)):
        if not bool(torch.isfinite(x).all()) or bool((x <= 0).any()):
            raise ValueError(f"{name} must have positive, finite entries; min {float(x.min()):.3g}")
    return (p * (p.log() - q.log())).sum(-1) + (q - p).sum(-1)


def expected_k2_gradient(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    r""":math:`\nabla_{\text{logits}}\,\mathbb{E}_{y\sim\pi_\theta}[u(y)^2/2]` for a categorical
    policy (``[..., V]``, float64),
    differentiating through the sampling distribution too: what ``w * k2`` follows.

    The gradient that ``w * k2`` follows in :doc:`chapter 6 </book/06_off_policy>`:
    :math:`\mathbb{E}_{\pi_{\mathrm{old}}}[w\,k_2] = \mathbb{E}_{\pi_\theta}[k_2]` as a function of
    :math:`\theta` (:eq:`eq-2-estimators`), unlike :eq:`eq-6-correction`'s detached weight.

    Raises:
        TypeError, ValueError: ``logits`` or ``ref_logits`` not a finite ``[..., V]`` tensor (named).
    """
    check_logits("logits", logits)
    check_logits("ref_logits", ref_logits)
    leaf = logits.detach().to(torch.float64).clone().requires_grad_(True)
    with torch.enable_grad():
        logp = torch.log_softmax(leaf, -1)
        u = logp - torch.log_softmax(ref_logits.detach().to(torch.float64), -1)
        (g,) = torch.autograd.grad((logp.exp() * 0.5 * u.square()).sum(), leaf)
    return g
