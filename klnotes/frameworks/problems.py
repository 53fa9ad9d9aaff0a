"""The exact test problems of the audit: a length-3 autoregressive policy (vocabulary 3) with its
reference, older sampling policies, and the exact gradients of the objectives an option can follow."""

from __future__ import annotations

from functools import lru_cache

import torch

from klnotes.analysis import exact

__all__ = [
    "OBJECTIVES",
    "OTHER",
    "PROBLEMS",
    "objective_gradients",
    "sequence_problem",
    "single_step_problem",
    "off_policy_problem",
]

#: Objectives an option's on-policy expected gradient can follow (see :func:`classify_objective`).
OBJECTIVES: tuple[str, ...] = (
    "sequence reverse KL",
    "per-token reverse KL",
    "sequence forward KL",
    "per-token forward KL",
    "nothing",
)
#: The verdict when a gradient matches no objective of :data:`OBJECTIVES`.
OTHER = "none of these"


def objective_gradients(
    space: exact.SequenceSpace, theta: torch.Tensor, ref: torch.Tensor
) -> dict[str, torch.Tensor]:
    r"""Exact gradients (w.r.t. tabular logits ``theta`` ``[P, V]``) of the objectives in :data:`OBJECTIVES`
    (:func:`klnotes.analysis.exact.objective_gradient`; per-token objectives hold the prefix weights fixed).

    The targets :math:`g^\star` of the audit: gradients of the sequence KLs :eq:`eq-5-seq-rkl`,
    :eq:`eq-5-seq-fkl` and of the token-level ones :eq:`eq-5-tok-rkl`, :eq:`eq-5-tok-fkl` at
    :math:`\theta' = \theta`.
    """
    return {name: exact.objective_gradient(space, theta, ref, name) for name in OBJECTIVES[:4]}


@lru_cache(maxsize=1)
def sequence_problem(seed: int = 0):
    """Tiny autoregressive problem (vocabulary 3, length 3, float64): ``(policy, theta, ref, targets)``
    with ``targets`` the exact gradients of :data:`OBJECTIVES` (:func:`objective_gradients`)."""
    pol = exact.SequenceSpace(vocab=3, length=3)
    gen = torch.Generator().manual_seed(seed)
    theta = 0.6 * torch.randn(*pol.tabular_shape, generator=gen, dtype=torch.float64)
    ref = 0.6 * torch.randn(*pol.tabular_shape, generator=gen, dtype=torch.float64)
    return pol, theta, ref, objective_gradients(pol, theta, ref)


@lru_cache(maxsize=8)
def single_step_problem(seed: int = 1, step: float = 0.03):
    """Categorical policy (5 outcomes), reference, and ``pi_old`` = logits ``theta + step * z``."""
    pol = exact.SequenceSpace(vocab=5, length=1)
    gen = torch.Generator().manual_seed(seed)
    theta = 0.6 * torch.randn(1, 5, generator=gen, dtype=torch.float64)
    ref = 0.6 * torch.randn(1, 5, generator=gen, dtype=torch.float64)
    old = theta + step * torch.randn(1, 5, generator=gen, dtype=torch.float64)
    return pol, theta, ref, old


@lru_cache(maxsize=8)
def off_policy_problem(step: float = 0.03, seed: int = 2):
    """The length-3 problem of :func:`sequence_problem` with a sampling policy ``pi_old``: tabular
    logits ``theta + step * z``, ``z ~ N(0, 1)`` ``[P, V]`` from ``seed``. Returns ``(space, theta, ref, old)``."""
    pol, theta, ref, _ = sequence_problem()
    gen = torch.Generator().manual_seed(seed)
    old = theta + float(step) * torch.randn(*pol.tabular_shape, generator=gen, dtype=torch.float64)
    return pol, theta, ref, old


#: The exact problems the audit solves: a short sequence and a single step.
PROBLEMS: tuple[str, ...] = ("sequence", "single step")
