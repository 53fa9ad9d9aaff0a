""":doc:`Chapter 7 </book/07_gpt2_gradients>`: each KL implementation's gradient against the
principled one, on a real transformer.

Setting. A causal language model ``pi_theta`` (GPT-2), a frozen reference ``pi_ref`` and one prompt
``x``; responses are ``y = (y_1, ..., y_L)`` of a fixed length ``L`` over the model's whole vocabulary
(no early stop). With ``u_t = log pi_theta(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)`` and the
sequence log-ratio ``U = sum_t u_t``, the principled gradient is the gradient of the sequence reverse KL

    g* = grad KL(pi_theta || pi_ref) = E_{y ~ pi_theta}[ U(y) sum_t grad log pi_theta(y_t | .) ]   (eq-7-principled)

Every implementation of the KL term is a surrogate ``s(logp, logp_ref)`` of the per-token
log-probabilities ``logp [N, L]``; its per-sample gradient is ``sum_t C_t grad logp_t`` with the
*token coefficients* ``C_t = d s / d logp_t`` (:doc:`chapter 3 </book/03_unified_framework>`'s
coefficient, one per token). Its expected
gradient under a sampling distribution with weights ``w_i`` is therefore one vector-Jacobian product

    g = sum_i w_i sum_t C_it grad logp_it                                                    (eq-7-expected)

- exact: ``y`` runs over all ``V^L`` responses and ``w_i = pi_sampler(y_i)`` (detached);
- Monte Carlo: ``y_i ~ pi_sampler`` and ``w_i = 1/N``.

Off-policy (samples from ``pi_old != pi_theta``): no correction uses ``C`` as is (the common bug);
``correction="token"`` multiplies ``C_t`` by the per-token ratio ``rho_t = pi_theta/pi_old`` (what a
PPO-style KL head does); ``correction="sequence"`` by the sequence ratio ``R = prod_t rho_t``, which
makes the expectation exactly the on-policy one.

All gradients are with respect to all parameters of ``pi_theta``, flattened into one vector ``[D]``.
Comparisons: cosine similarity, relative norm ``|g| / |g*|`` and relative error ``|g - g*| / |g*|``.


The estimators live in :mod:`klnotes.gpt2.gradients` and the responses in
:mod:`klnotes.gpt2.responses`; this module holds the comparison (:func:`compare`), the path of
policies between the reference and a moved policy (:func:`interpolate`, :eq:`eq-7-path`) and the
sweep along it that :doc:`chapter 7 </book/07_gpt2_gradients>` plots (:func:`sweep`). The public
names of both are importable from
here too.
"""

from __future__ import annotations

import copy
import functools
import math
from typing import Sequence

import pandas as pd
import torch

from klnotes._progress import progress_bar
from klnotes.core import variants
from klnotes.gpt2.gradients import (
    CORRECTIONS,
    IMPLEMENTATIONS,
    PRINCIPLED,
    BatchGram,
    GradientSet,
    dot64,
    exact_gradients,
    exact_kl_gradient,
    flat_grad,
    get_implementation,
    sampled_gradients,
    token_coefficients,
    trainer_head_gradients,
)
from klnotes.gpt2.responses import enumerate_responses, sample_responses, token_logprobs

__all__ = [
    "IMPLEMENTATIONS",
    "PRINCIPLED",
    "CORRECTIONS",
    "get_implementation",
    "enumerate_responses",
    "token_logprobs",
    "sample_responses",
    "token_coefficients",
    "flat_grad",
    "BatchGram",
    "GradientSet",
    "exact_gradients",
    "exact_kl_gradient",
    "trainer_head_gradients",
    "sampled_gradients",
    "compare",
    "interpolate",
    "perturb",
    "parameter_distance",
    "sweep",
]


_ZERO_REL = 1e-9


def _metrics(g: torch.Tensor, target: torch.Tensor) -> tuple[float, float, float]:
    g, target = g.double(), target.double()
    tn = float(target.norm())
    gn = float(g.norm())
    # A gradient that is zero up to rounding (k1 as loss, exactly) has no direction: cosine NaN.
    cos = float(g @ target) / (gn * tn) if gn > _ZERO_REL * tn and tn > 0 else float("nan")
    if tn == 0.0:  # a zero target (the policy at its reference): no relative measure
        return cos, float("nan"), float("nan")
    return cos, gn / tn, float((g - target).norm()) / tn


def _gram_metrics(gg: float, tt: float, gt: float) -> tuple[float, float]:
    """Cosine and relative norm from ``|g|^2``, ``|t|^2`` and ``<g, t>`` (the rules of :func:`_metrics`)."""
    gn, tn = math.sqrt(max(gg, 0.0)), math.sqrt(max(tt, 0.0))
    cos = gt / (gn * tn) if gn > _ZERO_REL * tn and tn > 0 else float("nan")
    return cos, (gn / tn if tn > 0 else float("nan"))


def _jackknife_rows(gram: BatchGram) -> list[tuple[float, float]]:
    """``(cosine, rel_norm)`` of the leave-one-out means, from the Gram matrices alone.

    With sums ``S = sum_i b_i``, ``T = sum_i t_i``: ``|S - b_j|^2 = |S|^2 - 2 <S, b_j> + |b_j|^2``,
    ``<S - b_j, T - t_j> = <S, T> - <S, t_j> - <b_j, T> + <b_j, t_j>`` (the ``1/(B-1)`` cancels).
    """
    own, cross, tgt = gram.own, gram.cross, gram.target
    s_s, t_t, s_t = float(own.sum()), float(tgt.sum()), float(cross.sum())
    out = []
    for j in range(own.shape[0]):
        gg = s_s - 2.0 * float(own[j].sum()) + float(own[j, j])
        tt = t_t - 2.0 * float(tgt[j].sum()) + float(tgt[j, j])
        gt = s_t - float(cross[:, j].sum()) - float(cross[j].sum()) + float(cross[j, j])
        out.append(_gram_metrics(gg, tt, gt))
    return out


def compare(gradients: GradientSet, *, target: str = PRINCIPLED) -> pd.DataFrame:
    r"""Compare every gradient in ``gradients`` with ``gradients.grads[target]``.

    :math:`\cos = \frac{\langle g, g^*\rangle}{\|g\|\,\|g^*\|}`, ``rel_norm`` :math:`= \|g\|/\|g^*\|`,
    ``rel_error`` :math:`= \|g - g^*\|/\|g^*\|` with :math:`g^*` the principled gradient
    :eq:`eq-7-principled` (:doc:`chapter 7 </book/07_gpt2_gradients>`).

    Returns a frame with one row per label (the target excluded) and columns ``implementation``,
    ``cosine``, ``rel_norm`` (``|g|/|g*|``), ``rel_error`` (``|g - g*|/|g*|``), ``kl``; for Monte Carlo
    sets also ``cosine_lo``, ``cosine_hi``, ``rel_norm_lo``, ``rel_norm_hi`` (95% jackknife intervals
    over the batches). A gradient of norm below ``1e-9 |g*|`` (zero up to rounding) has cosine NaN.
    Monte Carlo sets are compared through their Gram matrices (``gradients.gram``), so they need not
    keep every mean vector; with ``B`` batches, the cosine of the means is
    ``1' cross 1 / sqrt(1' own 1 * 1' target 1)``.

    Raises:
        KeyError: ``target`` not in the set (lists the labels).
        ValueError: a Monte Carlo set compared with another target than the one of its Gram matrices.
    """
    if target not in gradients.grads:
        raise KeyError(
            f"target {target!r} not among the gradients; have: {', '.join(gradients.grads)}"
        )
    rows = []
    if gradients.exact:
        tgt = gradients.grads[target]
        for label, g in gradients.grads.items():
            if label == target:
                continue
            cos, rel, err = _metrics(g, tgt)
            rows.append(
                {
                    "implementation": label,
                    "cosine": cos,
                    "rel_norm": rel,
                    "rel_error": err,
                    "kl": gradients.kl,
                }
            )
        return pd.DataFrame(rows)
    for label, gram in gradients.gram.items():
        if gram.target_label != target:
            raise ValueError(
                f"Monte Carlo gradients can only be compared with {gram.target_label!r}, got target {target!r}"
            )
        n = gram.own.shape[0]
        t_t = float(gram.target.sum())
        cos, rel = _gram_metrics(float(gram.own.sum()), t_t, float(gram.cross.sum()))
        err = math.sqrt(gram.diff_sq) / (math.sqrt(t_t) / n) if t_t > 0 else float("nan")
        row = {
            "implementation": label,
            "cosine": cos,
            "rel_norm": rel,
            "rel_error": err,
            "kl": gradients.kl,
        }
        loo = _jackknife_rows(gram)
        for k, name in ((0, "cosine"), (1, "rel_norm")):
            vals = torch.tensor([v[k] for v in loo], dtype=torch.float64)
            se = math.sqrt((n - 1) / n * float(((vals - vals.mean()) ** 2).sum()))
            lo, hi = row[name] - 1.96 * se, row[name] + 1.96 * se
            row[f"{name}_lo"], row[f"{name}_hi"] = (
                (max(lo, -1.0), min(hi, 1.0)) if name == "cosine" else (lo, hi)
            )
        rows.append(row)
    return pd.DataFrame(rows)


# --- moving a policy away from its reference ----------------------------------------------------


@torch.no_grad()
def interpolate(
    reference: torch.nn.Module, target: torch.nn.Module, alpha: float
) -> torch.nn.Module:
    r"""A copy of ``reference`` with parameters
    :math:`\theta_{\mathrm{ref}} + \alpha\,(\theta_1 - \theta_{\mathrm{ref}})` (:eq:`eq-7-path`).

    ``alpha = 0`` is the reference, ``1`` the target, ``> 1`` extrapolates. Both models must have
    the same architecture. The copy is trainable (``requires_grad`` on), whatever the reference's flags.

    Raises:
        ValueError: parameter names or shapes differ.
    """
    ref_params = dict(reference.named_parameters())
    tgt_params = dict(target.named_parameters())
    if ref_params.keys() != tgt_params.keys() or any(
        ref_params[k].shape != tgt_params[k].shape for k in ref_params
    ):
        raise ValueError("reference and target must have the same parameter names and shapes")
    out = copy.deepcopy(reference)
    for name, p in out.named_parameters():
        p.copy_(ref_params[name] + float(alpha) * (tgt_params[name] - ref_params[name]))
    return out.requires_grad_(True)


@torch.no_grad()
def perturb(model: torch.nn.Module, scale: float, *, seed: int = 0) -> torch.nn.Module:
    r"""A copy of ``model`` with every parameter moved by ``scale * std(param) * N(0, 1)`` noise (seeded).

    :math:`\theta' = \theta + s\,\sigma(\theta)\,\varepsilon`, :math:`\varepsilon \sim \mathcal N(0, 1)`
    per entry, :math:`\sigma` each tensor's standard deviation (:doc:`chapter 7 </book/07_gpt2_gradients>`).

    A random direction away from the reference; ``scale`` is relative to each tensor's own spread
    (tensors with zero spread, e.g. fresh biases, get ``scale * 0.02``).
    """
    gen = torch.Generator().manual_seed(int(seed))
    out = copy.deepcopy(model)
    for p in out.parameters():
        spread = float(p.std()) if p.numel() > 1 else 0.0
        spread = spread if spread > 0 else 0.02
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.device, p.dtype)
        p.add_(float(scale) * spread * noise)
    return out


@torch.no_grad()
def parameter_distance(a: torch.nn.Module, b: torch.nn.Module) -> float:
    r"""Euclidean distance between two models' flattened parameters.

    :math:`\|\theta_a - \theta_b\|_2` (:doc:`chapter 7 </book/07_gpt2_gradients>`'s distance along :eq:`eq-7-path`).
    """
    return math.sqrt(
        sum(float(((p - q) ** 2).sum()) for p, q in zip(a.parameters(), b.parameters()))
    )


def sweep(
    reference: torch.nn.Module,
    target: torch.nn.Module,
    alphas: Sequence[float],
    prompt: torch.Tensor,
    length: int,
    *,
    old_lag: float | None = None,
    implementations: Sequence[str | variants.KLVariant] | None = None,
    corrections: Sequence[str | None] = CORRECTIONS,
    n_samples: int | None = None,
    n_batches: int = 4,
    seed: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """Compare gradients along the path ``theta(alpha) = theta_ref + alpha (theta_target - theta_ref)``.

    The points are those of :eq:`eq-7-path`; at each, :func:`compare` of the gradients
    :eq:`eq-7-expected` with :eq:`eq-7-principled` (:doc:`chapter 7 </book/07_gpt2_gradients>`).

    For each ``alpha`` the policy is :func:`interpolate` ``(reference, target, alpha)``; with
    ``old_lag`` the sampler is ``pi_old = theta(alpha - old_lag)`` (the policy a few updates earlier,
    as in PPO's inner loop). ``n_samples=None`` enumerates exactly; otherwise Monte Carlo.

    Returns the rows of :func:`compare` for every ``alpha`` with extra columns ``alpha``,
    ``kl_se`` and ``param_distance`` (to the reference); off-policy also ``offpolicy_bias``
    ``= |g_off - g_on| / |g*|``, the distance of each gradient from the on-policy expected gradient of
    the same implementation (the bias due to sampling from ``pi_old`` alone). The x-axis of
    :doc:`chapter 7 </book/07_gpt2_gradients>` is ``kl``.
    """
    frames = []
    for alpha in progress_bar(list(alphas), disable=not progress, desc="distance"):
        policy = interpolate(reference, target, alpha)
        old = None if old_lag is None else interpolate(reference, target, alpha - old_lag)
        if n_samples is None:
            gs = exact_gradients(
                policy,
                reference,
                prompt,
                length,
                implementations=implementations,
                old=old,
                corrections=corrections,
            )
            frame = compare(gs)
            if old is not None:
                frame["offpolicy_bias"] = _offpolicy_bias(
                    gs, policy, reference, prompt, length, implementations
                )
        else:
            # Monte Carlo: only Gram matrices and a few means are kept
            # (memory O(n_batches D), not O(labels n_batches D)).
            sample = functools.partial(
                sampled_gradients,
                policy,
                reference,
                prompt,
                length,
                n_samples,
                n_batches=n_batches,
                implementations=implementations,
            )
            # the on-policy means the off-policy ones are measured against (own samples)
            on = None if old is None else sample(seed=seed + 1, keep_grads=True)
            means = None if on is None else {k: v for k, v in on.grads.items() if k != PRINCIPLED}
            gs = sample(old=old, corrections=corrections, seed=seed, distances_to=means)
            frame = compare(gs)
            if on is not None:
                scale = math.sqrt(dot64(on.grads[PRINCIPLED], on.grads[PRINCIPLED]))
                frame["offpolicy_bias"] = [
                    gs.distances[label] / scale for label in frame["implementation"]
                ]
            del on
        frame["alpha"] = float(alpha)
        frame["kl_se"] = gs.kl_se
        frame["param_distance"] = parameter_distance(policy, reference)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _offpolicy_bias(gs, policy, reference, prompt, length, implementations) -> list[float]:
    """``|g_off - g_on| / |g*|`` per row of ``compare(gs)`` (exact sets): each off-policy gradient against
    the on-policy expected gradient of the same implementation, relative to the principled norm."""
    on = exact_gradients(policy, reference, prompt, length, implementations=implementations)
    scale = float(on.grads[PRINCIPLED].double().norm())
    out = []
    for label, g in gs.grads.items():
        if label == PRINCIPLED:
            continue
        ref = on.grads[label.split(" | ")[0]]
        out.append(float((g.double() - ref.double()).norm()) / scale)
    return out
