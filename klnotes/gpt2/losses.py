r"""The trainer's losses (:doc:`chapter 8 </book/08_gpt2_training>`): PPO's clipped reward head, the
KL head of each arm, GRPO's
group advantages, and the fused loss of one minibatch.

Every formula comes from the math core: the PPO head is
:func:`klnotes.core.surrogates.ppo_clip_loss` (:eq:`eq-1-ppo`), the KL head of an arm the per-token
terms of its :class:`~klnotes.core.variants.KLVariant` (:func:`klnotes.core.surrogates.variant_terms`:
:eq:`eq-3-as-loss`, or the clipped ratio head :eq:`eq-6-clip`), reduced over tokens by
:func:`klnotes.core.surrogates.reduce`. With :math:`\rho_t = \pi_\theta(y_t)/\pi_{\mathrm{old}}(y_t)`
the loss of a minibatch is

.. math::

   L = \mathrm{reduce}_t\big({-\min}(\rho_t A,\ \mathrm{clip}(\rho_t, 1-\epsilon, 1+\epsilon)\,A)\big)
       + \mathrm{reduce}_t\,\ell_t^{\mathrm{KL}}.

Shapes: per-token tensors are ``[batch, time]`` with a ``mask`` that is 1 on response tokens.
"""

from __future__ import annotations

import math

import torch

from klnotes.core import estimators, surrogates
from klnotes.gpt2.trainconfig import ARM_VARIANTS, ARMS, LOSS_REDUCTIONS, TrainConfig

__all__ = ["kl_loss", "policy_loss", "group_advantages", "minibatch_loss"]


def kl_loss(
    arm: str,
    logp: torch.Tensor,
    logp_ref: torch.Tensor,
    logp_old: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    *,
    clip_eps: float = 0.2,
    reduction: str = "token-mean",
) -> torch.Tensor:
    r"""The KL head of ``arm`` (:data:`klnotes.gpt2.trainconfig.ARMS`), a scalar to add to the policy loss.

    :math:`\mathrm{reduce}_t\,\ell_t` with :math:`\ell_t` the per-token terms of the arm's variant
    (:func:`klnotes.core.surrogates.variant_terms`: :eq:`eq-3-as-loss`, or the clipped ratio head of
    :eq:`eq-6-clip` with :math:`A_t = -\beta\,\mathrm{sg}(c_t)`).

    Args:
        arm: one of :data:`klnotes.gpt2.trainconfig.ARMS` (see :mod:`klnotes.gpt2.trainer` for each formula).
        logp: ``[batch, time]`` ``log pi_theta`` of the sampled tokens, with gradient.
        logp_ref: ``[batch, time]`` ``log pi_ref``. logp_old: ``[batch, time]`` ``log pi_old`` (sampler).
        mask: ``[batch, time]``, 1 on response tokens (up to and including EOS), 0 on padding.
        beta: KL coefficient. clip_eps: PPO clip range of the ``k1-reward`` and ``*-is`` heads.
        reduction: ``"token-mean"``, ``"seq-mean"`` or ``"seq-sum"`` (:func:`klnotes.core.surrogates.reduce`).

    On-policy (``logp_old == logp``) the gradient is ``beta * reduce_t(c_t grad logp_t)`` with ``c_t`` the
    closed-form coefficient: 1, ``u_t``, ``1 - exp(-u_t)`` for ``k1/k2/k3-loss`` (and the ``-is`` arms),
    ``sum_{s>=t} u_s`` for ``k1-reward``, 0 for ``none``.

    Raises:
        ValueError: unknown arm or reduction (lists the allowed ones); bad shapes, mask or values.
    """
    if arm not in ARMS:
        raise ValueError(f"unknown KL arm {arm!r}; allowed: {', '.join(ARMS)}")
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; allowed: {', '.join(LOSS_REDUCTIONS)}")
    estimators.validate_pair(logp, logp_ref, finite=False)
    estimators.validate_pair(logp, logp_old, names=("logp", "logp_old"), finite=False)
    _check_batch(logp)
    if not (
        isinstance(beta, (int, float))
        and not isinstance(beta, bool)
        and math.isfinite(beta)
        and beta >= 0
    ):
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    mask = surrogates.check_mask(mask, logp)
    variant = ARM_VARIANTS[arm]
    if variant is None:  # zero, but connected to logp so that autograd gives a zero gradient
        return torch.where(mask, logp, torch.zeros_like(logp)).sum() * 0.0
    clip = clip_eps if variant.correction != "none" else None
    terms = surrogates.variant_terms(
        variant, logp, logp_ref, logp_old, mask, beta=beta, clip_eps=clip
    )
    return surrogates.reduce(terms, mask, reduction)


def _check_batch(logp: torch.Tensor) -> None:
    if logp.dim() != 2 or logp.numel() == 0:
        raise ValueError(
            f"logp is empty (shape {tuple(logp.shape)}) or not [batch, time]; need at least one "
            "completion of at least one token"
        )


def policy_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    *,
    reduction: str = "token-mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""PPO's clipped reward head (:eq:`eq-1-ppo`):
    :math:`\mathrm{reduce}_t\,{-\min}\big(\rho_t A,\
    \mathrm{clip}(\rho_t, 1-\epsilon, 1+\epsilon)\,A\big)`.

    Shapes: ``logp``, ``logp_old``, ``mask`` ``[batch, time]``; ``advantages`` ``[batch]`` (one per completion).
    Returns ``(loss, clip_frac)``: the scalar loss and the fraction of response tokens whose ratio is clipped.

    Raises:
        ValueError, TypeError: shapes, dtypes, an empty batch, ``clip_eps`` outside ``(0, 1)``, an unknown reduction.
    """
    estimators.validate_pair(logp, logp_old, names=("logp", "logp_old"), finite=False)
    _check_batch(logp)
    if not (isinstance(clip_eps, (int, float)) and 0 < clip_eps < 1):  # NaN fails too
        raise ValueError(f"clip_eps must be in (0, 1), got {clip_eps!r}")
    if not isinstance(advantages, torch.Tensor) or advantages.shape != logp.shape[:1]:
        got = (
            f"shape {tuple(advantages.shape)}"
            if isinstance(advantages, torch.Tensor)
            else type(advantages).__name__
        )
        raise ValueError(f"advantages must be [batch={logp.shape[0]}], got {got}")
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; allowed: {', '.join(LOSS_REDUCTIONS)}")
    mask = surrogates.check_mask(mask, logp)
    rho = torch.exp(logp - torch.where(mask, logp_old, logp.detach()).detach())
    adv = advantages.to(logp.dtype)[:, None].expand_as(logp)
    terms = surrogates.ppo_clip_loss(rho, adv, clip_eps)
    clipped = ((rho - 1.0).abs() > clip_eps) & mask
    clip_frac = clipped.sum() / mask.sum().clamp_min(1)
    return surrogates.reduce(terms, mask, reduction), clip_frac.detach()


def group_advantages(
    rewards: torch.Tensor, group_size: int, *, scale: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    r"""GRPO advantages :math:`A_i = (r_i - \bar r_g) / (s_g + \epsilon)` (not divided with
    ``scale=False``).

    :math:`\bar r_g`, :math:`s_g`: mean and std of the rewards of completion :math:`i`'s group
    (:eq:`eq-1-grpo`).

    ``rewards``: ``[batch]`` ordered by group (``group_size`` consecutive completions per prompt).
    Returns ``[batch]``. The std is the unbiased sample std, as in TRL.
    """
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
        raise ValueError(
            f"group_size must be an int >= 2 (a group's std needs two rewards), got {group_size!r}"
        )
    if not isinstance(rewards, torch.Tensor):
        raise TypeError(f"rewards must be a torch.Tensor [batch], got {type(rewards).__name__}")
    if rewards.dim() != 1 or rewards.numel() == 0 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be a non-empty [batch] with batch a multiple of group_size={group_size}, "
            f"got shape {tuple(rewards.shape)}"
        )
    bad = (~torch.isfinite(rewards)).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        raise ValueError(f"rewards must be finite, got {float(rewards[i])} at index {i}")
    r = rewards.view(-1, group_size)
    centred = r - r.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (r.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def minibatch_loss(
    logp: torch.Tensor, mb, config: TrainConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""``(loss, kl, clip_frac)`` of a minibatch: ``loss = policy_loss + kl_loss`` in one pass.

    :math:`L = \mathrm{reduce}_t\big(\ell^{\mathrm{PPO}}_t + \ell^{\mathrm{KL}}_t\big)` with
    :math:`\ell^{\mathrm{PPO}}_t = -\min(\rho_t A, \mathrm{clip}(\rho_t, 1-\epsilon, 1+\epsilon) A)`
    (:eq:`eq-1-ppo`) and :math:`\ell^{\mathrm{KL}}_t` the arm's per-token KL term (:eq:`eq-3-as-loss`,
    or :eq:`eq-6-clip` for the corrected heads); :doc:`chapter 8 </book/08_gpt2_training>`.

    The same math core as :func:`policy_loss` and :func:`kl_loss`: the PPO head
    (:func:`klnotes.core.surrogates.ppo_clip_loss`) and the arm's KL head
    (:func:`klnotes.core.surrogates.variant_terms`), with ``rho_t`` computed once for both heads, and
    both
    heads reduced together by :func:`klnotes.core.surrogates.reduce` (every reduction is linear in the
    terms). ``tests/test_trainer_internals.py`` checks values and gradients against
    :func:`policy_loss`
    + :func:`kl_loss` and the per-token gradient against :mod:`klnotes.core.coefficients`, for every arm.
    Shapes: ``logp`` ``[batch, time]`` with gradient; ``mb`` the minibatch, a
    :class:`klnotes.gpt2.rollout.Batch` (its ``logp_old``, ``logp_ref``, ``mask`` ``[batch, time]`` and
    ``advantages`` ``[batch]`` are used); returns three scalars (``kl``, ``clip_frac`` detached).
    """
    mask, variant, eps = mb.mask, ARM_VARIANTS[config.kl], config.clip_eps
    logp_old = torch.where(mask, mb.logp_old.to(logp.dtype), logp.detach())  # padding: ratio 1
    rho = torch.exp(logp - logp_old)
    clip_frac = (((rho.detach() - 1.0).abs() > eps) & mask).sum() / mask.sum().clamp_min(1)
    heads = [
        surrogates.ppo_clip_loss(rho, mb.advantages.to(logp.dtype)[:, None].expand_as(logp), eps)
    ]
    if variant is not None:
        clip = eps if variant.correction != "none" else None
        heads.append(
            surrogates.variant_terms(
                variant,
                logp,
                mb.logp_ref,
                logp_old,
                mask,
                beta=config.beta,
                clip_eps=clip,
                ratio=rho,
            )
        )
    reduced = surrogates.reduce(torch.stack(heads), mask, config.reduction)  # [heads]
    loss = reduced.sum()
    kl = reduced[1].detach() if variant is not None else logp.new_zeros(())
    return loss, kl, clip_frac.detach()
