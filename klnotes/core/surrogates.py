r"""The two implementation styles of a KL term as surrogate losses, for tokens and sequences, on- and off-policy.

Notation: ``logp = log pi_theta(y_t | s_t)``, ``logp_ref = log pi_ref(y_t | s_t)`` and
``logp_old = log pi_old(y_t | s_t)`` are log-probabilities of the sampled tokens, ``[batch, time]``
(or any shape for the elementwise functions); ``mask`` is ``[batch, time]``, bool or 0/1 float, 1 on
response tokens. ``sg`` is stop-gradient (``.detach()``), ``u_t = logp_t - logp_ref_t`` and
``U = sum_t mask_t u_t`` is the sequence log-ratio. All losses are to be *minimized*; their gradient
is the KL term's gradient (multiply by ``beta`` and add to the policy loss).

Elementwise surrogates (book eq-3-in-reward, eq-3-as-loss):

.. math::

    \mathrm{in\_reward}(k_n) &= \mathrm{sg}\big(k_n(u)\big)\,\log\pi_\theta
        &&\text{gradient } k_n(u)\,\nabla_\theta\log\pi_\theta \\
    \mathrm{as\_loss}(k_n) &= k_n(u)
        &&\text{gradient } \tfrac{\partial k_n}{\partial u}\,\nabla_\theta\log\pi_\theta

Token level (one term per token; the first line is PPO's per-token KL penalty, summed as a
reward-to-go) versus sequence level (one term per sequence, ``[batch]``), with
:math:`U = \sum_t u_t`:

.. math::

    \mathrm{in\_reward\_to\_go}(k_n)_t &= \mathrm{sg}\Big(\sum_{s\ge t} k_n(u_s)\Big)\,\log\pi_\theta(y_t\mid s_t), \\
    \mathrm{sequence\_in\_reward}(k_n) &= \mathrm{sg}\big(k_n(U)\big) \sum_t \log\pi_\theta(y_t\mid s_t), \\
    \mathrm{sequence\_as\_loss}(k_n) &= k_n(U).

Reductions (named, with an explicit mask): ``"token-mean"`` = sum of masked terms / number of tokens;
``"seq-mean"`` = mean over sequences of (sum over the sequence / its length) (GRPO);
``"seq-sum"`` = mean over sequences of the sum over the sequence (unbiased for sequence objectives);
``"none"`` = the masked ``[batch, time]`` terms.

Off-policy (samples from ``pi_old``), the correction of {cite:t}`liu2025rethinking`: the detached
coefficient ``c`` of the implementation times the importance ratio ``rho = exp(logp - logp_old)``,
optionally clipped as a PPO head ``-min(rho A, clip(rho, 1-eps, 1+eps) A)`` with ``A = -beta sg(c)``
(plus a reward advantage for the combined head). See :func:`off_policy_kl`.
"""

from __future__ import annotations

import torch

from klnotes.core import coefficients, estimators, variants
from klnotes.core.estimators import validate_pair

__all__ = [
    "REDUCTIONS",
    "LEVELS",
    "in_reward",
    "as_loss",
    "surrogate",
    "check_mask",
    "reduce",
    "reward_to_go",
    "sequence_log_ratio",
    "in_reward_to_go",
    "sequence_in_reward",
    "sequence_as_loss",
    "kl_loss",
    "importance_ratio",
    "ppo_clip_loss",
    "off_policy_kl",
    "variant_terms",
    "per_sequence",
]

#: Named reductions of per-token terms ``[batch, time]`` with a mask.
REDUCTIONS: tuple[str, ...] = ("token-mean", "seq-mean", "seq-sum", "none")
#: Levels of :func:`kl_loss`: per token, per token with reward-to-go ("in reward" only), per sequence.
LEVELS: tuple[str, ...] = ("token", "token-rtg", "sequence")


# --- elementwise --------------------------------------------------------------------------------


def in_reward(name: str, logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    r""":math:`k_n` in reward: :math:`\mathrm{sg}(k_n(u))\,\log\pi_\theta` (:eq:`eq-3-in-reward`).

    Its gradient is :math:`k_n(u)\,\nabla_\theta\log\pi_\theta`: coefficient :math:`k_n`. Any shape;
    the result has ``logp``'s shape.
    """
    return estimators.get(name)(logp, logp_ref).detach() * logp


def as_loss(name: str, logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    r""":math:`k_n` as loss: :math:`k_n(u)`, differentiated (:eq:`eq-3-as-loss`).

    Coefficient :math:`\partial k_n/\partial u`. Any shape; the result has ``logp``'s shape.
    """
    return estimators.get(name)(logp, logp_ref)


def surrogate(label: str, logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    r"""Elementwise surrogate of an implementation label, e.g. ``surrogate("k3 as loss", logp, logp_ref)``.

    .. math::

        s_{k_n\ \text{in reward}} = \mathrm{sg}\big(k_n(u)\big)\,\log\pi_\theta, \qquad
        s_{k_n\ \text{as loss}} = k_n(u), \qquad u = \log\pi_\theta - \log\pi_{\mathrm{ref}}

    :func:`in_reward` or :func:`as_loss` (:eq:`eq-3-in-reward`, :eq:`eq-3-as-loss`); any shape.

    Raises:
        ValueError: unknown label (lists :data:`klnotes.core.coefficients.IMPLEMENTATIONS`).
    """
    name, style = coefficients.parse_implementation(label)
    return (
        in_reward(name, logp, logp_ref) if style == "in_reward" else as_loss(name, logp, logp_ref)
    )


# --- masks, reductions, reward-to-go ------------------------------------------------------------


def check_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    r"""Validate a ``[batch, time]`` mask against ``like`` and return it as a bool tensor (1 =
    response token).

    The mask :math:`m_{bt}` of :func:`reduce`: :math:`m_{bt} = 1` for the :math:`t`-th response
    token of sequence :math:`b` (:math:`t \le L_b`), 0 on padding; sums over :math:`t` of
    :eq:`eq-5-log-ratios` run over :math:`m_{bt} = 1`.

    Raises:
        TypeError: mask not a tensor. ValueError: not 2-D, shape differs from ``like``, or values not 0/1.
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor [batch, time], got {type(mask).__name__}")
    if mask.dim() != 2:
        raise ValueError(f"mask must be 2-D [batch, time], got shape {tuple(mask.shape)}")
    if mask.shape != like.shape:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} must equal the values' shape {tuple(like.shape)}"
        )
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must contain only 0 and 1 (or be bool)")
        mask = mask != 0
    return mask


def _masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, x, torch.zeros_like(x))


def reduce(values: torch.Tensor, mask: torch.Tensor, reduction: str = "token-mean") -> torch.Tensor:
    r"""Reduce per-token terms ``values [..., batch, time]`` with ``mask [batch, time]``.

    ``"token-mean"`` is GRPO's :math:`\frac{1}{\lvert y\rvert}\sum_t` of :eq:`eq-1-grpo` pooled over the
    batch; how the reduction changes what a per-token term optimizes is
    :doc:`chapter 5 </book/05_sequences>`'s subject (:eq:`eq-5-log-ratios`).

    With :math:`m` the mask and :math:`x` the terms (:math:`B` sequences):

    .. math::

        \text{token-mean} = \frac{\sum_{b,t} m_{bt} x_{bt}}{\sum_{b,t} m_{bt}}, \quad
        \text{seq-mean} = \frac1B \sum_b \frac{\sum_t m_{bt} x_{bt}}{\sum_t m_{bt}}, \quad
        \text{seq-sum} = \frac1B \sum_b \sum_t m_{bt} x_{bt}

    (empty sequences count 0); ``"none"``: :math:`m x` (``values``' shape). Leading dimensions
    ``...`` (several heads at once) are kept: the result is ``[...]``. Padded positions never
    contribute, whatever their value (NaN included).

    Raises:
        ValueError: unknown reduction (lists :data:`REDUCTIONS`), bad mask.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; allowed: {', '.join(REDUCTIONS)}")
    like = values if values.dim() <= 2 else values[(0,) * (values.dim() - 2)]
    mask = check_mask(mask, like)
    x = _masked(values, mask)
    if reduction == "none":
        return x
    m = mask.to(values.dtype)
    if reduction == "token-mean":
        return x.sum(dim=(-2, -1)) / m.sum().clamp_min(1.0)
    per_seq = x.sum(dim=-1)
    if reduction == "seq-mean":
        per_seq = per_seq / m.sum(dim=1).clamp_min(1.0)
    return per_seq.mean(dim=-1)


def reward_to_go(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""Reward-to-go :math:`G_{bt} = m_{bt} \sum_{s\ge t} m_{bs} x_{bs}` (:eq:`eq-5-reward-to-go`).
    ``[batch, time]``.

    Undiscounted return of per-token values (gamma = 1), zero on padding.
    """
    mask = check_mask(mask, values)
    x = _masked(values, mask)
    rtg = torch.flip(torch.cumsum(torch.flip(x, dims=[1]), dim=1), dims=[1])
    return _masked(rtg, mask)


# --- token and sequence level -------------------------------------------------------------------


def _masked_pair(logp, logp_ref, mask):
    validate_pair(logp, logp_ref, finite=False)
    mask = check_mask(mask, logp)
    logp, logp_ref = _masked(logp, mask), _masked(logp_ref, mask)
    validate_pair(logp, logp_ref)
    return logp, logp_ref, mask


def sequence_log_ratio(
    logp: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    r"""The sequence log-ratio :math:`U_b = \sum_t m_{bt}\,u_{bt}` (:eq:`eq-5-log-ratios`),
    ``[batch]``.

    Inputs ``[batch, time]``.
    """
    logp, logp_ref, mask = _masked_pair(logp, logp_ref, mask)
    return (logp - logp_ref).sum(dim=1)


def in_reward_to_go(
    name: str, logp: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    r"""Per-token :math:`k_n` in reward with reward-to-go:
    :math:`\mathrm{sg}\big(\sum_{s\ge t} k_n(u_s)\big)\,\log\pi_\theta(y_t\mid s_t)`.

    ``[batch, time]`` (:eq:`eq-5-reward-to-go`, :eq:`eq-1-ppo`).

    Summed over ``t`` it is PPO's per-token KL penalty with returns (gamma = lambda = 1); for ``k1`` its
    expected gradient is exactly the sequence reverse-KL gradient (chapter 5).
    """
    logp, logp_ref, mask = _masked_pair(logp, logp_ref, mask)
    k = estimators.get(name)(logp, logp_ref)
    return _masked(reward_to_go(k, mask).detach() * logp, mask)


def sequence_in_reward(
    name: str, logp: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    r"""Sequence-level :math:`k_n` in reward:
    :math:`\mathrm{sg}(k_n(U))\sum_t m_t\log\pi_\theta(y_t\mid s_t)`, ``[batch]``.

    With :math:`k_1` its expected gradient is the sequence reverse-KL gradient
    (:eq:`eq-5-seq-gradient`).
    Inputs ``[batch, time]``.
    """
    logp, logp_ref, mask = _masked_pair(logp, logp_ref, mask)
    seq_logp, seq_ref = logp.sum(dim=1), logp_ref.sum(dim=1)
    return estimators.get(name)(seq_logp, seq_ref).detach() * seq_logp


def sequence_as_loss(
    name: str, logp: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    r"""Sequence-level :math:`k_n` as loss: :math:`k_n(U)`, :math:`U` the sequence log-ratio
    (:eq:`eq-5-log-ratios`), ``[batch]``. Inputs ``[batch, time]``."""
    logp, logp_ref, mask = _masked_pair(logp, logp_ref, mask)
    return estimators.get(name)(logp.sum(dim=1), logp_ref.sum(dim=1))


def _reduce_sequences(per_seq: torch.Tensor, mask: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_seq
    lengths = mask.sum(dim=1).to(per_seq.dtype)
    if reduction == "seq-sum":
        return per_seq.mean()
    if reduction == "seq-mean":
        return (per_seq / lengths.clamp_min(1.0)).mean()
    return per_seq.sum() / lengths.sum().clamp_min(1.0)


def kl_loss(
    label: str,
    logp: torch.Tensor,
    logp_ref: torch.Tensor,
    mask: torch.Tensor,
    *,
    level: str = "token",
    reduction: str = "token-mean",
) -> torch.Tensor:
    r"""KL term of an implementation (``"k2 as loss"``, ...) on ``[batch, time]`` log-probs, reduced.

    With :math:`u_t` and :math:`U = \sum_t u_t` of :eq:`eq-5-log-ratios` and :math:`s` the
    elementwise :func:`surrogate`:

    .. math::

        \ell^{\text{token}}_t = s(u_t), \qquad
        \ell^{\text{token-rtg}}_t = \mathrm{sg}\Big(\sum_{s\ge t} k_n(u_s)\Big)\log\pi_\theta(y_t\mid s_t),
        \qquad \ell^{\text{sequence}} = s(U)

    The on-policy surrogates of chapters 3 and 5 (:eq:`eq-3-in-reward`, :eq:`eq-3-as-loss`,
    :eq:`eq-5-reward-to-go`) at a level, reduced by :func:`reduce`.

    ``level="token"``: elementwise :func:`surrogate` per token; ``"token-rtg"``: :func:`in_reward_to_go`
    ("in reward" labels only); ``"sequence"``: :func:`sequence_in_reward` / :func:`sequence_as_loss`
    (``[batch]``; ``reduction`` then means ``seq-sum`` = batch mean, ``seq-mean`` = batch mean of
    per-length values, ``token-mean`` = sum / number of tokens, ``none`` = the ``[batch]`` values).

    Returns:
        A scalar (or ``[batch, time]`` / ``[batch]`` for ``reduction="none"``) to add, times beta, to the loss.

    Raises:
        ValueError: unknown label, level or reduction (lists the allowed values); "as loss" with
            ``level="token-rtg"``; bad mask, shapes or non-finite values.
    """
    name, style = coefficients.parse_implementation(label)
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; allowed: {', '.join(LEVELS)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; allowed: {', '.join(REDUCTIONS)}")
    if level == "token":
        lp, lr, mask = _masked_pair(logp, logp_ref, mask)
        return reduce(surrogate(label, lp, lr), mask, reduction)
    if level == "token-rtg":
        if style != "in_reward":
            raise ValueError(
                f"level='token-rtg' applies to 'in reward' implementations only, got {label!r}"
            )
        terms = in_reward_to_go(name, logp, logp_ref, mask)
        return reduce(terms, check_mask(mask, logp), reduction)
    fn = sequence_in_reward if style == "in_reward" else sequence_as_loss
    per_seq = fn(name, logp, logp_ref, mask)
    return _reduce_sequences(per_seq, check_mask(mask, logp), reduction)


def per_sequence(
    variant: str | variants.KLVariant,
    logp: torch.Tensor,
    logp_ref: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    r"""On-policy per-sequence surrogate ``[batch]`` of a variant (correction ``"none"``).

    :math:`\sum_t m_t\,s(u_t)` at level ``"token"``, :math:`\sum_t m_t\,\mathrm{sg}(\sum_{s\ge t}
    k_n(u_s))\log\pi_\theta(y_t\mid s_t)` at ``"token-rtg"``, :math:`s(U)` at ``"sequence"``
    (:func:`kl_loss` with ``reduction="none"``, summed over tokens); its token coefficients
    :math:`\partial/\partial\log\pi_\theta(y_t\mid s_t)` are chapter 7's :math:`C_t`
    (:eq:`eq-7-expected`). Inputs ``[batch, time]``.

    Raises:
        ValueError: a variant with an off-policy correction (use :func:`variant_terms`), an unknown
            spelling, bad mask or shapes.
    """
    v = variants.parse(variant)
    if v.correction != "none":
        raise ValueError(
            f"per_sequence takes on-policy variants (correction 'none'), got {v.label!r}"
        )
    out = kl_loss(v.implementation, logp, logp_ref, mask, level=v.level, reduction="none")
    return out if v.level == "sequence" else out.sum(dim=-1)


# --- off-policy ---------------------------------------------------------------------------------


def importance_ratio(logp: torch.Tensor, logp_old: torch.Tensor) -> torch.Tensor:
    r"""Importance ratio
    :math:`\rho = \pi_\theta/\pi_{\mathrm{old}} = e^{\log\pi_\theta - \log\pi_{\mathrm{old}}}`
    (:eq:`eq-6-correction`).

    Differentiable in ``logp``; ``logp_old`` detached. Same shape as ``logp``.
    """
    validate_pair(logp, logp_old, names=("logp", "logp_old"))
    return torch.exp(logp - logp_old.detach())


def ppo_clip_loss(ratio: torch.Tensor, advantage: torch.Tensor, eps: float) -> torch.Tensor:
    r"""PPO's clipped surrogate as a loss (:eq:`eq-6-clip`), elementwise:

    .. math:: \ell = -\min\big(\rho A,\ \mathrm{clip}(\rho, 1-\epsilon, 1+\epsilon)\,A\big)

    ``ratio`` and ``advantage`` have the same shape; ``advantage`` is detached.

    Raises:
        ValueError: ``eps`` not in (0, 1), or shapes differ.
    """
    if not 0.0 < float(eps) < 1.0:
        raise ValueError(f"clip eps must be in (0, 1), got {eps!r}")
    if ratio.shape != advantage.shape:
        raise ValueError(
            f"ratio and advantage shapes differ: {tuple(ratio.shape)} vs {tuple(advantage.shape)}"
        )
    a = advantage.detach()
    return -torch.minimum(ratio * a, torch.clamp(ratio, 1.0 - eps, 1.0 + eps) * a)


def _ratio_head(
    rho: torch.Tensor,
    c: torch.Tensor,
    beta: float,
    clip_eps: float | None,
    advantage: torch.Tensor | None = None,
) -> torch.Tensor:
    """The importance-weighted KL head with advantage ``A = A_r - beta sg(c)`` (``A_r`` = 0 when
    ``advantage`` is None): ``-rho A``, or PPO-clipped (:func:`ppo_clip_loss`) when ``clip_eps``
    is given (:eq:`eq-6-correction`, :eq:`eq-6-clip`, :eq:`eq-6-combined`)."""
    adv = -float(beta) * c.detach()
    if advantage is not None:
        adv = adv + advantage.detach()
    if clip_eps is None:
        return -rho * adv
    return ppo_clip_loss(rho, adv, clip_eps)


def off_policy_kl(
    label: str,
    logp: torch.Tensor,
    logp_ref: torch.Tensor,
    logp_old: torch.Tensor,
    *,
    beta: float = 1.0,
    clip_eps: float | None = None,
    advantage: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Off-policy corrected KL term, elementwise, samples from :math:`\pi_{\mathrm{old}}`
    (:eq:`eq-6-correction`):

    .. math:: \ell = \beta\,\mathrm{sg}(c)\,\rho, \qquad \rho = \pi_\theta/\pi_{\mathrm{old}}

    clipped as :eq:`eq-6-clip`, or combined with a reward advantage as :eq:`eq-6-combined`.

    ``c = sg(coefficient(label, u))`` is the implementation's closed-form gradient coefficient at the
    current policy, ``rho = exp(logp - sg(logp_old))``.

    - ``clip_eps=None``, ``advantage=None``: ``beta * c * rho``. Expected gradient under ``pi_old``
      equals the on-policy gradient of the implementation, exactly.
    - ``clip_eps=eps``: the KL head ``-min(rho A, clip(rho, 1-eps, 1+eps) A)`` with ``A = -beta c``
      (decoupled head; add the reward's own PPO loss separately).
    - ``advantage=A_r``: the combined head, ``A = A_r - beta c`` (clipped if ``clip_eps`` is given,
      else ``-rho A``).

    Shapes: ``logp``, ``logp_ref``, ``logp_old`` (and ``advantage``) equal, any shape; result the same.
    Reduce with :func:`reduce`. Sequence level: pass summed log-probs ``[batch]``.

    Raises:
        ValueError: unknown label, bad clip eps, mismatched shapes, non-finite values.
    """
    name, style = coefficients.parse_implementation(label)
    validate_pair(logp, logp_ref)
    rho = importance_ratio(logp, logp_old)
    c = coefficients.closed_form(name, style, (logp - logp_ref).detach())
    if advantage is not None and advantage.shape != logp.shape:
        raise ValueError(
            f"advantage shape {tuple(advantage.shape)} must equal logp's {tuple(logp.shape)}"
        )
    return _ratio_head(rho, c, beta, clip_eps, advantage)


def variant_terms(
    variant: str | variants.KLVariant,
    logp: torch.Tensor,
    logp_ref: torch.Tensor,
    logp_old: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float = 1.0,
    clip_eps: float | None = None,
    ratio: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Per-token KL terms ``[batch, time]`` of a token-level :class:`~klnotes.core.variants.KLVariant`.

    The trainer's KL head (:func:`klnotes.gpt2.trainer.kl_loss`); samples from :math:`\pi_{old}`,
    :math:`u_t = \log\pi_\theta - \log\pi_{ref}`, :math:`\rho_t = \pi_\theta/\pi_{old}`, :math:`c`
    the
    closed-form coefficient (:func:`klnotes.core.coefficients.closed_form`, :eq:`eq-3-coefficient`):

    - correction ``"none"``: :math:`\beta\,s(u_t)` with ``s`` the elementwise :func:`surrogate`
      (level ``"token"``), or :math:`\beta\,\mathrm{sg}(\sum_{s\ge t} k_n(u_s))\log\pi_\theta`
      (``"token-rtg"``, :func:`in_reward_to_go`);
    - ``"ratio"`` / ``"stale-ratio"`` (:eq:`eq-6-correction`): the PPO head
      :math:`-\min(\rho_t A_t, \mathrm{clip}(\rho_t, 1-\epsilon, 1+\epsilon) A_t)` with
      :math:`A_t = -\beta\,\mathrm{sg}(c_t)` (or :math:`\beta\,\mathrm{sg}(c_t)\rho_t` when
      ``clip_eps`` is None), :math:`c_t` at :math:`u_t` (``"ratio"``) or at the sampler's
      :math:`u^{old}_t = \log\pi_{old} - \log\pi_{ref}` (``"stale-ratio"``), summed as a
      reward-to-go for ``"token-rtg"``.

    Padding (``mask`` 0) contributes 0: ``logp_ref`` and ``logp_old`` are replaced there by ``logp``
    (``u = 0``, ``rho = 1``). On-policy (``logp_old == logp``) the gradient of every variant is
    :math:`\beta\,c_t\,\nabla\log\pi_\theta` (with :math:`c_t` summed to go for ``"token-rtg"``).

    Args:
        variant: a token-level variant, or its label / any spelling :func:`klnotes.core.variants.parse`
            reads.
        logp: ``[batch, time]`` with gradient. logp_ref, logp_old: ``[batch, time]`` (detached
            here).
        mask: ``[batch, time]``, bool or 0/1. beta: KL coefficient. clip_eps: PPO clip range or
            None.
        ratio: ``rho`` if the caller has it already (``exp(logp - logp_old)`` on response tokens,
            1 on padding); computed here otherwise.

    Returns:
        ``[batch, time]``; reduce with :func:`reduce`.

    Raises:
        ValueError: a sequence-level variant (no per-token terms), unknown spelling, bad mask,
            non-finite log-ratios.
    """
    v = variants.parse(variant)
    if v.level == "sequence":
        raise ValueError(
            f"variant_terms gives per-token terms; {v.label!r} is sequence level (use kl_loss)"
        )
    mask = check_mask(mask, logp)
    detached = logp.detach()
    lr = torch.where(mask, logp_ref.detach().to(logp.dtype), detached)
    lo = torch.where(mask, logp_old.detach().to(logp.dtype), detached)
    if v.correction == "none":
        if v.level == "token-rtg":
            return float(beta) * in_reward_to_go(v.estimator, logp, lr, mask)
        return float(beta) * surrogate(v.implementation, logp, lr)
    at = detached if v.correction == "ratio" else lo  # the current policy, or the sampler
    c = coefficients.closed_form(v.estimator, v.style, at - lr)
    if v.level == "token-rtg":
        c = reward_to_go(c, mask)
    rho = torch.exp(logp - lo) if ratio is None else ratio
    return _ratio_head(rho, c, beta, clip_eps)
