r"""Gradient coefficients: closed forms, and extraction of the coefficient of any surrogate by autograd.

Every KL implementation studied in the book has a per-sample gradient of the form
:math:`c(y)\,\nabla_\theta\log\pi_\theta(y)` (eq-3-coefficient); the scalar :math:`c` is its
*gradient coefficient*. With :math:`u = \log\pi_\theta(y) - \log\pi_{\mathrm{ref}}(y)` and
:math:`\delta = e^{-u}`:

==============  ============================  =====================================================
implementation  surrogate (per sample)        coefficient :math:`c(u)`
==============  ============================  =====================================================
k1 in reward    ``sg(k1) * logp``             :math:`u`
k2 in reward    ``sg(k2) * logp``             :math:`u^2/2`
k3 in reward    ``sg(k3) * logp``             :math:`e^{-u} - 1 + u`
k1 as loss      ``k1``                        :math:`1`
k2 as loss      ``k2``                        :math:`u` (equals k1 in reward: Liu et al.'s Theorem 5.1)
k3 as loss      ``k3``                        :math:`1 - e^{-u} = 1 - \delta` (``-expm1(-u)``)
==============  ============================  =====================================================

"k_n in reward" has coefficient :math:`k_n`; "k_n as loss" has coefficient
:math:`\partial k_n / \partial \log\pi_\theta` (the paper's :math:`k_{n'}`). :func:`from_surrogate`
computes the coefficient of *any* surrogate by autograd, so a new
estimator is classified in one call; :func:`identify` names the closed form it matches.
"""

from __future__ import annotations

from typing import Callable

import torch

from klnotes.core import estimators, variants
from klnotes.core.estimators import validate_pair

__all__ = [
    "STYLES",
    "IMPLEMENTATIONS",
    "parse_implementation",
    "closed_form",
    "coefficient",
    "from_surrogate",
    "identify",
]

#: The two implementation styles: ``sg(k_n) * logp`` ("in_reward") and ``k_n`` differentiated ("as_loss").
STYLES: tuple[str, ...] = ("in_reward", "as_loss")

#: The six elementwise implementations, labelled by :func:`klnotes.core.variants.label` as in the book
#: and the plotting palette.
IMPLEMENTATIONS: tuple[str, ...] = tuple(
    variants.label(variants.KLVariant(name, placement))
    for name, placement in (
        ("k1", "reward"),
        ("k1", "loss"),
        ("k2", "loss"),
        ("k3", "loss"),
        ("k2", "reward"),
        ("k3", "reward"),
    )
)


def parse_implementation(label: str | variants.KLVariant) -> tuple[str, str]:
    r"""``"k2 as loss"`` (or ``"k2_as_loss"``, or its :class:`~klnotes.core.variants.KLVariant`) ->
    ``("k2", "as_loss")``.

    The style is where the estimate enters the loss: ``"in_reward"``,
    :math:`\mathrm{sg}(k_n)\log\pi_\theta` (:eq:`eq-3-in-reward`), or ``"as_loss"``,
    :math:`k_n` differentiated (:eq:`eq-3-as-loss`).

    Read by :func:`klnotes.core.variants.parse`; only the six elementwise implementations (level
    ``"token"``, no correction) have a closed-form coefficient here (:eq:`eq-3-coefficient`).

    Raises:
        ValueError: if ``label`` is not one of :data:`IMPLEMENTATIONS` (spaces or underscores).
    """
    try:
        variant = variants.parse(label)
    except (ValueError, TypeError):
        variant = None
    if variant is None or variant.level != "token" or variant.correction != "none":
        raise ValueError(f"unknown implementation {label!r}; allowed: {', '.join(IMPLEMENTATIONS)}")
    return variant.estimator, variant.style


def _check_style(name: str, style: str) -> None:
    estimators.get(name)  # raises ValueError listing the estimator names
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; allowed: {', '.join(STYLES)}")


def closed_form(name: str, style: str, u: torch.Tensor) -> torch.Tensor:
    r"""Closed-form gradient coefficient :math:`c(u)` of ``name`` (k1/k2/k3) used in ``style``
    (:eq:`eq-3-coefficient`).

    .. math::

        c_{\text{in reward}}(u) = k_n(u), \qquad
        c_{\text{as loss}}(u) = \frac{\partial k_n}{\partial u} \in \{1,\ u,\ 1 - e^{-u}\}

    (:eq:`eq-3-in-reward`, :eq:`eq-3-as-loss`). ``u``: tensor of any shape, returned shape
    identical.
    Differentiable in ``u``.

    Raises:
        ValueError: unknown name or style (lists the allowed ones), or non-finite ``u``.
        TypeError: ``u`` not a floating tensor.
    """
    _check_style(name, style)
    validate_pair(u, u, names=("u", "u"))
    if style == "in_reward":
        return estimators.get(name)(u, torch.zeros_like(u))
    if name == "k1":
        return torch.ones_like(u)
    if name == "k2":
        return u.clone()
    return -torch.expm1(-u)


def coefficient(label: str | variants.KLVariant, u: torch.Tensor) -> torch.Tensor:
    r"""Closed-form coefficient of an implementation (``"k3 as loss"``) at log-ratios ``u``.

    :math:`c(u) = k_n(u)` in reward, :math:`\partial k_n/\partial u` as loss
    (:eq:`eq-3-coefficient`).
    ``u``: any shape; the result has its shape.
    """
    name, style = parse_implementation(label)
    return closed_form(name, style, u)


def from_surrogate(
    surrogate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    logp: torch.Tensor,
    logp_ref: torch.Tensor,
    *,
    elementwise: bool = True,
) -> torch.Tensor:
    r"""Gradient coefficient of a surrogate loss, by autograd:
    :math:`c = \partial s / \partial\log\pi_\theta`.

    The surrogate's per-sample gradient is :math:`c\,\nabla_\theta\log\pi_\theta`
    (:eq:`eq-3-coefficient`).

    ``surrogate(logp, logp_ref)`` is called with a fresh leaf copy of ``logp`` (gradients enabled)
    and a detached ``logp_ref``; the result is the gradient of ``surrogate(...).sum()`` with respect
    to that leaf, i.e. for an elementwise surrogate the per-sample derivative ``d s_i / d logp_i``.
    Examples: ``lambda lp, lr: k2(lp, lr)`` ("k2 as loss") gives ``u``;
    ``lambda lp, lr: k3(lp, lr).detach() * lp`` ("k3 in reward") gives ``k3``.

    Args:
        surrogate: callable ``(logp, logp_ref) -> tensor``; with ``elementwise=True`` (default) it must
            return ``logp``'s shape. With ``elementwise=False`` any output shape is allowed (e.g. a
            per-sequence loss ``[batch]`` from ``[batch, time]`` inputs) and its sum is differentiated.
        logp, logp_ref: log-probabilities of the sampled actions, same shape and dtype, finite.

    Returns:
        Detached tensor of ``logp``'s shape and dtype (zeros where the surrogate does not depend on logp).

    Raises:
        TypeError: ``surrogate`` not callable or not returning a tensor; bad input tensors.
        ValueError: mismatched shapes or non-finite inputs; an elementwise surrogate returning the
            wrong shape.
    """
    if not callable(surrogate):
        raise TypeError(
            f"surrogate must be callable (logp, logp_ref) -> tensor, got {type(surrogate).__name__}"
        )
    validate_pair(logp, logp_ref)
    leaf = logp.detach().clone().requires_grad_(True)
    ref = logp_ref.detach()
    with torch.enable_grad():
        out = surrogate(leaf, ref)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"surrogate must return a torch.Tensor, got {type(out).__name__}")
        if elementwise and out.shape != logp.shape:
            raise ValueError(
                f"an elementwise surrogate must return logp's shape {tuple(logp.shape)}, got {tuple(out.shape)}; "
                "pass elementwise=False for a surrogate that aggregates"
            )
        if not out.requires_grad:
            return torch.zeros_like(logp).detach()
        (grad,) = torch.autograd.grad(out.sum(), leaf, allow_unused=True)
    if grad is None:
        return torch.zeros_like(logp).detach()
    return grad.detach()


def identify(
    surrogate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    u: torch.Tensor | None = None,
    *,
    atol: float = 1e-10,
) -> tuple[str, ...]:
    r"""Name the implementations whose closed-form coefficient (:eq:`eq-3-coefficient`) the
    surrogate's equals.

    Two surrogates are told apart by their coefficient alone: equal :math:`c(u)` means equal
    expected gradients :math:`\mathbb{E}_{y\sim\pi_\theta}[c(y)\,\nabla_\theta\log\pi_\theta(y)]`
    (:eq:`eq-3-coefficient`); chapter 3's "Classifying a new estimator"
    (:doc:`/book/03_unified_framework`). ``u``: ``[n]``, float64 by default.

    The coefficient is computed by :func:`from_surrogate` at log-ratios ``u`` (default: 201 points in
    ``[-5, 5]``, float64, ``logp_ref = 0``) and compared with every entry of :data:`IMPLEMENTATIONS`.

    Returns:
        The matching labels in :data:`IMPLEMENTATIONS` order, e.g. ``("k1 in reward", "k2 as loss")``
        for ``c = u`` (they share it); ``()`` for a coefficient none of them has.
    """
    if u is None:
        u = torch.linspace(-5.0, 5.0, 201, dtype=torch.float64)
    c = from_surrogate(surrogate, u, torch.zeros_like(u))
    matches = []
    for label in IMPLEMENTATIONS:
        ref = coefficient(label, u)
        if torch.allclose(c, ref, rtol=0.0, atol=atol * max(1.0, float(ref.abs().max()))):
            matches.append(label)
    return tuple(matches)
