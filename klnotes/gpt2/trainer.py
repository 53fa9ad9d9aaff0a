r"""One GRPO/PPO-style policy-gradient trainer whose KL term is a parameter.

Each step (book chapter 8):

1. **Rollout** (:func:`rollout`): pick ``prompts_per_step`` prompts, sample ``group_size``
   completions of each from ``pi_old`` (the current policy, KV cache, temperature ``tau``), score them
   with the task's reward; one no-grad forward pass of the reference gives ``log pi_ref`` and, with
   the policy's distributions kept from sampling, the exact per-position KL over the whole vocabulary.
2. **Advantages**: group-normalised, ``A_i = (r_i - mean_group r) / (std_group r + 1e-4)`` (GRPO).
3. **Updates**: the batch is split into ``updates_per_batch`` minibatches, one optimizer step each,
   so that from the second on ``pi_theta != pi_old`` (off-policy). The loss of a minibatch is

       L = reduce_t( -min(rho_t A, clip(rho_t, 1-eps, 1+eps) A) ) + KL head      rho_t = pi_theta/pi_old

   with the KL head :func:`kl_loss` of the arm (:data:`ARMS`; each arm is a
   :class:`~klnotes.core.variants.KLVariant`, :data:`ARM_VARIANTS`, whose per-token terms are
   :func:`klnotes.core.surrogates.variant_terms`: the trainer has no formula of its own):

   - ``none``: no KL term;
   - ``k1-loss``, ``k2-loss``, ``k3-loss``: ``beta * reduce_t k_n(u_t)``, differentiated, *no* ratio (the
     common "as loss" implementation; biased off-policy);
   - ``k1-reward``: PPO's per-token penalty in the reward with reward-to-go, coefficient
     ``c_t = sum_{s>=t} (log pi_old - log pi_ref)(y_s)`` fixed at rollout (it is part of the reward),
     through the ratio and clipping: ``-min(rho_t A_t, clip(rho_t) A_t)``, ``A_t = -beta c_t``;
   - ``k2-loss-is``, ``k3-loss-is``: the paper's off-policy correction (:eq:`eq-6-correction`,
     clipped as :eq:`eq-6-clip`): the "as loss" coefficient ``c_t = d k_n / d u`` at the
     current policy, detached, times ``rho_t``, clipped.

   ``u_t = log pi_theta(y_t|s_t) - log pi_ref(y_t|s_t)``; ``reduce_t`` is the named reduction of
   :func:`klnotes.core.surrogates.reduce` (default ``"token-mean"``, as TRL's ``dapo`` loss).

4. **Metrics** (:data:`METRICS`), of the rollout batch, i.e. of ``pi_old``:
   ``kl_token_exact`` (mean over response tokens of ``KL(pi_old(.|s_t) || pi_ref(.|s_t))`` summed over
   the vocabulary), ``kl_seq_exact`` (mean over completions of the sum of those per-position KLs: by the
   chain rule an unbiased estimate of the sequence KL with no sampling noise within a position),
   ``kl_seq_estimate`` (mean of the sampled sequence log-ratio ``sum_t u_t``, the k1 Monte Carlo
   estimate), ``logprob_diff`` (mean ``u_t`` over tokens: the paper's "Logprob Diff"), ``entropy``,
   ``response_length``, ``frac_abs_log_ratio_gt_1`` (fraction of tokens with ``|u_t| > 1``; reviewer 4),
   ``reward``, and of the updates: ``loss``, ``kl_loss``, ``clip_frac``; ``seconds`` per step.

Cost per step (the benchmark ``benchmarks/bench_trainer.py`` compares it with a floor of sampling plus
one forward/backward per minibatch): sampling runs in inference mode; one reference forward pass;
per minibatch one forward pass, one loss with both heads sharing ``rho_t`` (no input validation on
the rollout's own tensors), one backward pass, gradient clipping and a fused AdamW step; the metrics
stay on the device until one host sync per rollout and one per step of updates.

Everything random is drawn from one ``torch.Generator`` seeded with ``config.seed`` (models run in
``eval()`` mode: no dropout), so a run is a deterministic function of its config on a given machine,
and :func:`train` resumes from a checkpoint to exactly the uninterrupted result.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from klnotes.core import estimators, surrogates, variants
from klnotes.gpt2 import _runio
from klnotes.gpt2 import checkpoint as _checkpoint
from klnotes.gpt2.checkpoint import CHECKPOINT, CONFIG_FILE, LOCK_FILE, METRICS_FILE
from klnotes.gpt2.checkpoint import config_dict as _config_dict
from klnotes.gpt2.checkpoint import weights_finite as _weights_finite
from klnotes.gpt2.policies import Policy
from klnotes.gpt2.tasks import Task

__all__ = [
    "ARMS",
    "ARM_VARIANTS",
    "ARM_LABELS",
    "METRICS",
    "TrainConfig",
    "Batch",
    "kl_loss",
    "policy_loss",
    "group_advantages",
    "completion_logits",
    "cache_keyword",
    "token_logprobs",
    "sample",
    "rollout",
    "train_step",
    "train",
    "load_metrics",
    "TrainingDiverged",
    "CHECKPOINT",
    "METRICS_FILE",
]

#: The KL arms (see the module docstring): the ``kl=`` names of stored runs, each an alias of a
#: :class:`~klnotes.core.variants.KLVariant` (:data:`ARM_VARIANTS`).
ARMS: tuple[str, ...] = (
    "none",
    "k1-loss",
    "k2-loss",
    "k3-loss",
    "k1-reward",
    "k2-loss-is",
    "k3-loss-is",
)
#: The KL variant of each arm (:func:`klnotes.core.variants.parse` of its name; ``None``: no KL term).
ARM_VARIANTS: dict[str, variants.KLVariant | None] = {
    arm: None if arm == "none" else variants.parse(arm) for arm in ARMS
}
#: The book's label of each arm (:func:`klnotes.core.variants.label` of its variant), e.g.
#: ``"k3 as loss + IS"``.
ARM_LABELS: dict[str, str] = {
    arm: "none" if v is None else variants.label(v) for arm, v in ARM_VARIANTS.items()
}
#: Columns of the metrics table, in order.
METRICS: tuple[str, ...] = (
    "step",
    "reward",
    "kl_token_exact",
    "kl_seq_exact",
    "kl_seq_estimate",
    "logprob_diff",
    "entropy",
    "response_length",
    "frac_abs_log_ratio_gt_1",
    "loss",
    "kl_loss",
    "clip_frac",
    "seconds",
)
_REDUCTIONS = tuple(r for r in surrogates.REDUCTIONS if r != "none")
# Largest seed torch.Generator.manual_seed takes; largest count; smallest temperature (below it
# logits / tau overflow float32 for ordinary logits).
_MAX_SEED, _MAX_INT, _MIN_TEMPERATURE = 2**63 - 1, 2**31 - 1, 1e-2


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of :func:`train`. Defaults suit the tiny CPU model.

    Attributes:
        kl: the KL arm, one of :data:`ARMS`.
        beta: KL coefficient (>= 0).
        group_size: completions per prompt (G >= 2, for group-normalised advantages).
        prompts_per_step: distinct prompts per step; batch size = ``prompts_per_step * group_size``.
        max_new_tokens: longest completion; sampling stops at EOS.
        min_new_tokens: EOS is not *sampled* before this many tokens (log-probabilities stay those of the
            unconstrained policy); 0 (default) = plain sampling. For benchmarks with fixed lengths.
        updates_per_batch: minibatches per generated batch, one optimizer step each (must divide the
            batch size); the first is on-policy, the others off-policy.
        clip_eps: PPO clip range epsilon, in (0, 1).
        lr: AdamW learning rate (no weight decay, constant).
        max_grad_norm: gradient-norm clip (``None``: none).
        steps: number of steps (rollout + updates).
        temperature: sampling temperature tau >= 0.01; all log-probabilities are of ``softmax(logits / tau)``.
        scale_rewards: divide group-centred rewards by the group's standard deviation (GRPO).
        reduction: how per-token losses are reduced (:data:`klnotes.core.surrogates.REDUCTIONS` but ``none``).
        seed: seed of the run's generator, in ``[0, 2**63 - 1]``.
        checkpoint_every: save a checkpoint every this many steps when ``run_dir`` is given (0: only at
            the end).
    """

    kl: str = "k2-loss"
    beta: float = 0.1
    group_size: int = 8
    prompts_per_step: int = 4
    max_new_tokens: int = 16
    min_new_tokens: int = 0
    updates_per_batch: int = 2
    clip_eps: float = 0.2
    lr: float = 1e-3
    max_grad_norm: float | None = 1.0
    steps: int = 50
    temperature: float = 1.0
    scale_rewards: bool = True
    reduction: str = "token-mean"
    seed: int = 0
    checkpoint_every: int = 10

    def __post_init__(self):
        if self.kl not in ARMS:
            raise ValueError(
                f"TrainConfig.kl={self.kl!r} is not a known arm; allowed: {', '.join(ARMS)}"
            )
        if self.reduction not in _REDUCTIONS:
            raise ValueError(
                f"TrainConfig.reduction={self.reduction!r}; allowed: {', '.join(_REDUCTIONS)}"
            )
        ints = dict(
            group_size=2,
            prompts_per_step=1,
            max_new_tokens=1,
            min_new_tokens=0,
            updates_per_batch=1,
            steps=0,
            seed=0,
            checkpoint_every=0,
        )
        for field, low in ints.items():
            value = getattr(self, field)
            high = _MAX_SEED if field == "seed" else _MAX_INT
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(
                    f"TrainConfig.{field} must be an int >= {low} (and <= {high}), got {value!r}"
                )
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"TrainConfig.min_new_tokens={self.min_new_tokens} exceeds max_new_tokens={self.max_new_tokens}"
            )
        if self.batch_size % self.updates_per_batch:
            raise ValueError(
                f"TrainConfig.updates_per_batch={self.updates_per_batch} must divide the batch size "
                f"prompts_per_step * group_size = {self.batch_size}"
            )
        floats = dict(
            beta=(0.0, math.inf, True),
            lr=(0.0, math.inf, False),
            temperature=(_MIN_TEMPERATURE, math.inf, True),
            clip_eps=(0.0, 1.0, False),
        )
        for field, (low, high, closed) in floats.items():
            value = getattr(self, field)
            ok = (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
            )
            ok = ok and (low <= value if closed else low < value) and value < high
            if not ok:
                bound = f"[{low}, {high})" if closed else f"({low}, {high})"
                raise ValueError(f"TrainConfig.{field} must be a number in {bound}, got {value!r}")
        if self.max_grad_norm is not None and not (
            isinstance(self.max_grad_norm, (int, float))
            and not isinstance(self.max_grad_norm, bool)
            and self.max_grad_norm > 0
        ):  # NaN fails "> 0"
            raise ValueError(
                f"TrainConfig.max_grad_norm must be a number > 0 or None, got {self.max_grad_norm!r}"
            )
        if not isinstance(self.scale_rewards, bool):
            raise ValueError(
                f"TrainConfig.scale_rewards must be True or False, got {self.scale_rewards!r}"
            )

    @property
    def batch_size(self) -> int:
        """Completions per step, ``prompts_per_step * group_size``."""
        return self.prompts_per_step * self.group_size


# --- the losses ---------------------------------------------------------------------------------


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
    r"""The KL head of ``arm`` (:data:`ARMS`), a scalar to add to the policy loss.

    :math:`\mathrm{reduce}_t\,\ell_t` with :math:`\ell_t` the per-token terms of the arm's variant
    (:func:`klnotes.core.surrogates.variant_terms`: :eq:`eq-3-as-loss`, or the clipped ratio head of
    :eq:`eq-6-clip` with :math:`A_t = -\beta\,\mathrm{sg}(c_t)`).

    Args:
        arm: one of :data:`ARMS` (see the module docstring for each formula).
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
    if reduction not in _REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; allowed: {', '.join(_REDUCTIONS)}")
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
    if reduction not in _REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; allowed: {', '.join(_REDUCTIONS)}")
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


# --- sampling and log-probabilities -------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _forward_keywords(model_class) -> frozenset[str]:
    return frozenset(inspect.signature(model_class.forward).parameters)


def cache_keyword(model) -> str:
    """The name of ``model.forward``'s KV-cache argument: ``"cache"`` (``transformers`` >= 5) or
    ``"past_key_values"`` (earlier versions)."""
    return "cache" if "cache" in _forward_keywords(type(model)) else "past_key_values"


def _keep_last(model, n: int) -> dict:
    """Keyword computing the LM head on the last ``n`` positions only, where the model supports it."""
    return {"logits_to_keep": n} if "logits_to_keep" in _forward_keywords(type(model)) else {}


def _positions(attention: torch.Tensor) -> torch.Tensor:
    return (attention.cumsum(dim=1) - 1).clamp_min(0)


def completion_logits(
    model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor
) -> torch.Tensor:
    """``[batch, time, vocab]`` logits predicting each completion token, from one forward pass.

    The input is ``prompt_ids [batch, P]`` (left-padded, ``prompt_mask`` 1 on real tokens) followed by
    ``completion_ids [batch, time]``; position ids count real tokens only, as during :func:`sample`.
    """
    ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention = torch.cat([prompt_mask, torch.ones_like(completion_ids)], dim=1)
    width = completion_ids.size(1)
    out = model(
        input_ids=ids,
        attention_mask=attention,
        position_ids=_positions(attention),
        use_cache=False,
        **_keep_last(model, width + 1),
    )
    return out.logits[:, -(width + 1) : -1]


def token_logprobs(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    r""":math:`\log\pi_\theta(y_t\mid s_t) = \log\mathrm{softmax}(z_t/\tau)_{y_t}` of the
    completion tokens,
    ``[batch, time]`` (:eq:`eq-5-log-ratios`), differentiable; float32 at least (float64 for a
    float64 model)."""
    return _logprobs_of(
        completion_logits(model, prompt_ids, prompt_mask, completion_ids),
        completion_ids,
        temperature,
    )


def _logprobs_of(
    logits: torch.Tensor, completion_ids: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``[batch, time]`` log-probabilities of ``completion_ids`` from ``[batch, time, vocab]`` logits,
    float32 at least."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if temperature != 1.0:
        logits = logits / temperature
    return logits.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(
        logits, dim=-1
    )


@torch.no_grad()
def sample(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    generator: torch.Generator,
    temperature: float = 1.0,
    min_new_tokens: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample completions with a KV cache.

    Args:
        prompt_ids, prompt_mask: ``[batch, P]`` left-padded prompts.
        generator: the only source of randomness (on the model's device).

    Returns:
        ``(completion_ids [batch, T], mask [batch, T] bool, logprobs [batch, T, vocab] float32)`` with
        ``T <= max_new_tokens`` (sampling stops when every completion has produced EOS): token ``t`` of
        a completion is followed by padding once EOS was sampled; ``mask`` is 1 up to and including EOS;
        ``logprobs`` are ``log softmax(logits / tau)`` of ``pi_old`` at each position (EOS not
        suppressed, even where ``min_new_tokens`` kept it from being sampled).
    """
    batch, prompt_width = prompt_ids.shape
    keyword = cache_keyword(model)
    # The loop runs in inference mode (no autograd bookkeeping on its ~10 small ops per token and on
    # the model's); the results are stacked outside it, so callers get ordinary tensors. On a GPU the
    # model runs under autocast; log-probabilities are float32.
    from klnotes.gpt2 import devices

    with torch.inference_mode(), devices.autocast(prompt_ids.device):
        # Attention masks and positions of every step, made once; step t uses views of them.
        attention_all = torch.cat([prompt_mask, prompt_mask.new_ones(batch, max_new_tokens)], dim=1)
        prompt_positions = _positions(prompt_mask)
        positions = prompt_positions[:, -1:] + torch.arange(
            1, max_new_tokens + 1, device=prompt_ids.device
        )
        out = model(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            position_ids=prompt_positions,
            use_cache=True,
            **_keep_last(model, 1),
        )
        cache, logits = out[keyword], out.logits[:, -1]
        done = torch.zeros(batch, dtype=torch.bool, device=prompt_ids.device)
        tokens, dones, logprobs = [], [], []
        for t in range(max_new_tokens):
            logits = logits.float()
            lp = torch.log_softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)
            weights = lp.exp()
            if t < min_new_tokens:
                weights.select(1, eos_id).zero_()
            token = torch.multinomial(weights, 1, generator=generator)[:, 0].masked_fill_(
                done, pad_id
            )
            tokens.append(token)
            dones.append(done)  # done before this token: the token is padding
            logprobs.append(lp)
            done = done | (token == eos_id)
            if t + 1 == max_new_tokens or (
                (t + 1) % 8 == 0 and bool(done.all())
            ):  # one host sync per 8 tokens
                break
            out = model(
                input_ids=token[:, None],
                attention_mask=attention_all[:, : prompt_width + t + 1],
                position_ids=positions[:, t : t + 1],
                use_cache=True,
                **{keyword: cache},
            )
            cache, logits = out[keyword], out.logits[:, -1]
        del cache, out
    ids, mask, lps = torch.stack(tokens, 1), ~torch.stack(dones, 1), torch.stack(logprobs, 1)
    # Trim trailing all-padding columns (completions that all ended before the last step taken).
    width = int(mask.any(dim=0).nonzero().max()) + 1
    if width == ids.size(1):
        return ids, mask, lps
    return ids[:, :width], mask[:, :width], lps[:, :width]


@dataclass(frozen=True)
class Batch:
    """A rollout: ``B = prompts_per_step * group_size`` completions, grouped consecutively by prompt.

    Fields (``T`` = longest completion):

    - ``prompt_ids``, ``prompt_mask``: ``[B, P]`` left-padded prompts (mask long 0/1);
    - ``completion_ids``: ``[B, T]``, padding after EOS; ``mask``: ``[B, T]`` bool, 1 up to and including EOS;
    - ``logp_old``, ``logp_ref``: ``[B, T]`` float32 log-probabilities of the sampled tokens under
      ``pi_old`` (the sampler) and ``pi_ref``, 0 on padding;
    - ``kl_exact``: ``[B, T]`` exact ``KL(pi_old(.|s_t) || pi_ref(.|s_t))`` summed over the vocabulary,
      0 on padding; ``entropy``: ``[B, T]`` entropy of ``pi_old(.|s_t)``, 0 on padding;
    - ``rewards``, ``advantages``: ``[B]`` float32; ``texts``: the decoded completions.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    mask: torch.Tensor
    logp_old: torch.Tensor
    logp_ref: torch.Tensor
    kl_exact: torch.Tensor
    entropy: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    texts: tuple[str, ...]

    def select(self, index: torch.Tensor) -> "Batch":
        """The rows ``index`` (a minibatch)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        cpu_index = index.tolist()
        return Batch(
            **{
                k: (tuple(v[i] for i in cpu_index) if k == "texts" else v[index.to(v.device)])
                for k, v in fields.items()
            }
        )

    def metrics(self) -> dict[str, float]:
        """The rollout's metrics (see :data:`METRICS`), as Python floats."""
        m = self.mask.float()
        n_tokens = m.sum().clamp_min(1.0)
        u = (self.logp_old - self.logp_ref) * m
        values = torch.stack(
            [
                self.rewards.float().mean(),
                (self.kl_exact * m).sum() / n_tokens,
                (self.kl_exact * m).sum(dim=1).mean(),
                u.sum(dim=1).mean(),
                u.sum() / n_tokens,
                (self.entropy * m).sum() / n_tokens,
                m.sum(dim=1).mean(),
                ((u.abs() > 1.0) & self.mask).float().sum() / n_tokens,
            ]
        ).tolist()  # one host sync
        names = (
            "reward",
            "kl_token_exact",
            "kl_seq_exact",
            "kl_seq_estimate",
            "logprob_diff",
            "entropy",
            "response_length",
            "frac_abs_log_ratio_gt_1",
        )
        return dict(zip(names, values))


def _encode_prompts(
    tokenizer, prompts: Sequence[str], device, repeat: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` ``[len(prompts) * repeat, P]`` left-padded to the longest prompt, each prompt repeated
    ``repeat`` times consecutively (what ``tokenizer(..., padding=True)`` gives with left padding for the
    repeated list, from one tokenizer call on the distinct prompts and one tensor copy)."""
    distinct = list(dict.fromkeys(prompts))
    known = dict(zip(distinct, tokenizer(distinct, add_special_tokens=False)["input_ids"]))
    rows = [known[p] for p in prompts for _ in range(repeat)]
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    return ids.to(device), mask.to(device)


def rollout(
    policy: Policy,
    reference: Policy,
    task: Task,
    prompts: Sequence[str],
    config: TrainConfig,
    *,
    generator: torch.Generator,
) -> Batch:
    """Sample ``config.group_size`` completions of each prompt from ``policy``, score and annotate them.

    One no-grad forward pass of ``reference`` over all completions gives ``logp_ref`` and, against the
    policy's distributions kept from sampling, the exact per-position KL. Returns a :class:`Batch`.
    """
    tokenizer, model = policy.tokenizer, policy.model
    device = policy.device
    prompt_ids, prompt_mask = _encode_prompts(tokenizer, prompts, device, repeat=config.group_size)
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    ids, mask, logprobs = sample(
        model,
        prompt_ids,
        prompt_mask,
        max_new_tokens=config.max_new_tokens,
        eos_id=eos_id,
        pad_id=pad_id,
        generator=generator,
        temperature=config.temperature,
        min_new_tokens=config.min_new_tokens,
    )
    texts = tuple(
        tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)
    )  # pad_id after EOS
    from klnotes.gpt2 import devices

    # the reference's logits (autocast on a GPU); what follows, outside, gives ordinary float32 tensors
    with torch.inference_mode(), devices.autocast(device):
        logits = completion_logits(reference.model, prompt_ids, prompt_mask, ids)
    with torch.no_grad():
        logits = logits.float()
        ref_lp = torch.log_softmax(
            logits if config.temperature == 1.0 else logits / config.temperature, dim=-1
        )
        p = logprobs.exp()
        kl_exact = (p * (logprobs - ref_lp)).sum(
            -1
        )  # summed difference: no cancellation at small KL
        entropy = (p * logprobs).sum(-1).neg_()
        index = ids.unsqueeze(-1)
        per_token = torch.stack(
            [
                logprobs.gather(-1, index).squeeze(-1),
                ref_lp.gather(-1, index).squeeze(-1),
                kl_exact,
                entropy,
            ]
        )
        logp_old, logp_ref, kl_exact, entropy = per_token.masked_fill_(~mask, 0.0).unbind(
            0
        )  # 0 on padding
        del p, ref_lp, logprobs, logits
    rewards = task.score(texts).to(device=device, dtype=torch.float32)
    advantages = group_advantages(rewards, config.group_size, scale=config.scale_rewards)
    return Batch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=ids,
        mask=mask,
        logp_old=logp_old,
        logp_ref=logp_ref,
        kl_exact=kl_exact,
        entropy=entropy,
        rewards=rewards,
        advantages=advantages,
        texts=texts,
    )


# --- training -----------------------------------------------------------------------------------


def _minibatch_loss(
    logp: torch.Tensor, mb: Batch, config: TrainConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, kl, clip_frac)`` of a minibatch: ``loss = policy_loss + kl_loss`` in one pass.

    The same math core as :func:`policy_loss` and :func:`kl_loss`: the PPO head
    (:func:`klnotes.core.surrogates.ppo_clip_loss`) and the arm's KL head
    (:func:`klnotes.core.surrogates.variant_terms`), with ``rho_t`` computed once for both heads, and
    both
    heads reduced together by :func:`klnotes.core.surrogates.reduce` (every reduction is linear in the
    terms). ``tests/test_trainer_internals.py`` checks values and gradients against
    :func:`policy_loss`
    + :func:`kl_loss` and the per-token gradient against :mod:`klnotes.core.coefficients`, for every arm.
    Shapes: ``logp`` ``[batch, time]`` with gradient; returns three scalars (``kl``, ``clip_frac`` detached).
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


def _make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """AdamW (no weight decay) on the trainable parameters: the fused kernel where the device supports it
    (one kernel for all parameters instead of a Python loop over them), else the default implementation."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


class TrainingDiverged(RuntimeError):
    """Training produced a non-finite loss, gradient norm, weights or rollout (raised by :func:`train`,
    which names the step, the arm and the last good checkpoint; the weights are left as they were before
    the offending optimizer step, and no checkpoint with non-finite weights is written)."""


def _check_update(loss: torch.Tensor, norm: torch.Tensor, minibatch: int) -> None:
    """Raise :class:`TrainingDiverged` unless ``loss`` and the gradient norm are finite (one host sync)."""
    values = torch.stack([loss.detach().float(), norm.detach().float().to(loss.device)])
    if not bool(torch.isfinite(values).all()):
        loss_value, norm_value = values.tolist()
        raise TrainingDiverged(
            f"minibatch {minibatch}: loss = {loss_value}, gradient norm = {norm_value}"
        )


def _grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """Total 2-norm of the gradients (``torch.nn.utils.get_total_norm`` where it exists: torch >= 2.6)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(grads, foreach=True)
    return torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
    )


def train_step(
    policy: Policy,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    *,
    generator: torch.Generator,
) -> dict[str, float]:
    """The ``updates_per_batch`` minibatch updates on one rollout. Returns mean ``loss``, ``kl_loss``, ``clip_frac``.

    Each update: one forward pass of the minibatch (:func:`token_logprobs`), the loss
    ``policy_loss + kl_loss``, one backward pass, gradient-norm clipping, a check that the loss and the
    gradient norm are finite (one host sync), one optimizer step; the metrics stay on the device until
    one host sync at the end.

    Raises:
        TrainingDiverged: a non-finite loss or gradient norm (before the optimizer step that would use it).
    """
    from klnotes.gpt2 import devices

    model = policy.model
    order = torch.randperm(
        config.batch_size,
        generator=torch.Generator().manual_seed(
            int(torch.randint(2**31 - 1, (1,), generator=generator, device=generator.device))
        ),
    )
    params = list(model.parameters())
    totals = []
    for index in order.chunk(config.updates_per_batch):
        mb = batch.select(index)
        with devices.autocast(
            policy.device, training=True
        ):  # bfloat16 on Ampere+; float32 on a T4 and the CPU
            logits = completion_logits(model, mb.prompt_ids, mb.prompt_mask, mb.completion_ids)
        logp = _logprobs_of(
            logits, mb.completion_ids, config.temperature
        )  # float32 outside autocast
        try:
            loss, kl, clip_frac = _minibatch_loss(logp, mb, config)
        except ValueError as err:  # the estimators reject non-finite log-probabilities
            if "non-finite" not in str(err):
                raise
            raise TrainingDiverged(f"minibatch {len(totals)}: {err}") from err
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.max_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm, foreach=True)
        else:
            norm = _grad_norm(params)
        _check_update(
            loss, norm, len(totals)
        )  # before the step: non-finite updates never reach the weights
        optimizer.step()
        totals.append(torch.stack([loss.detach(), kl, clip_frac.to(loss.dtype)]))
    loss, kl, clip_frac = (torch.stack(totals).float().mean(dim=0)).tolist()  # one host sync
    return {"loss": loss, "kl_loss": kl, "clip_frac": clip_frac}


def _save_checkpoint(
    run_dir: Path, step: int, policy: Policy, optimizer, generator, config, rows
) -> Path:
    """:func:`klnotes.gpt2.checkpoint.save` of the run after ``step`` steps; returns the checkpoint's path.

    Raises:
        TrainingDiverged: non-finite weights (never written).
    """
    if not _weights_finite(policy.model):
        raise TrainingDiverged("non-finite weights after the update (not checkpointed)")
    return _checkpoint.save(
        run_dir, step, policy.model, optimizer, generator, config, rows, METRICS, policy.device.type
    )


def load_metrics(run_dir: str | os.PathLike, *, steps: int | None = None):
    """The metrics table saved by :func:`train` in ``run_dir`` (a ``pandas.DataFrame``, :data:`METRICS` columns),
    validated: every column, steps ``0, 1, ...`` in order (``steps`` of them if given), finite values
    (:func:`klnotes.gpt2.checkpoint.load_metrics`).

    Raises:
        FileNotFoundError: no ``metrics.csv`` in ``run_dir``.
        ValueError: a damaged file (cut short, missing rows, non-finite values); the message names it.
    """
    return _checkpoint.load_metrics(run_dir, METRICS, steps=steps)


def _make_generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def train(
    policy: Policy,
    reference: Policy,
    task: Task,
    config: TrainConfig = TrainConfig(),
    *,
    run_dir: str | os.PathLike | None = None,
    progress: bool = True,
):
    """Fine-tune ``policy`` in place on ``task`` with the KL arm ``config.kl`` against ``reference``.

    Step ``s`` (0-based) samples a batch from the policy as it is after ``s`` steps, logs its metrics and
    updates the policy. With ``run_dir``, a checkpoint (model, optimizer, generator state, metrics so far)
    is saved every ``config.checkpoint_every`` steps and at the end, and a later call with the same
    ``run_dir`` and config (``steps`` may grow) resumes from it, reproducing the uninterrupted run.

    Crash safety: ``checkpoint.pt`` (the only checkpoint kept; it holds the metric rows too) is replaced
    atomically, so a run killed at any instant resumes, with no clean-up, from its last checkpoint to
    exactly the uninterrupted result; ``metrics.csv`` is a copy rewritten from it. The run folder is
    locked while training (``.lock``): a second ``train`` on it fails at once, naming the holder's pid.
    Before each optimizer step the loss and gradient norm are checked, and after it the weights: a
    divergence stops training with :class:`TrainingDiverged`, and no checkpoint has non-finite weights.

    Args:
        policy: the model trained (its parameters are changed in place).
        reference: the frozen reference (its gradients are turned off).
        task: prompts and reward (:class:`klnotes.gpt2.tasks.Task`); needs ``prompts_per_step`` prompts or more.
        config: :class:`TrainConfig`.
        run_dir: folder for checkpoints and ``metrics.csv`` (created), or ``None``.
        progress: show a ``tqdm`` progress bar.

    Returns:
        ``pandas.DataFrame`` with one row per step and the columns :data:`METRICS`.

    Raises:
        TypeError: wrong argument types. ValueError: too few prompts; prompts plus completions longer than
            the model's positions; a run_dir holding another config, a damaged checkpoint (named, with what
            to do), or a checkpoint saved on another device. klnotes.gpt2._runio.LockedError: another process is
            training in ``run_dir``. TrainingDiverged: a non-finite loss, gradient norm, rollout or weights
            (names the step, the arm and the last good checkpoint).

    Warns:
        RuntimeWarning: resuming with another torch thread count than the checkpoint was saved with.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    for name, value in (("policy", policy), ("reference", reference)):
        if not isinstance(value, Policy):
            raise TypeError(
                f"{name} must be a klnotes.gpt2.policies.Policy, got {type(value).__name__}"
            )
    if not isinstance(task, Task):
        raise TypeError(f"task must be a klnotes.gpt2.tasks.Task, got {type(task).__name__}")
    if config.prompts_per_step > len(task.prompts):
        raise ValueError(
            f"prompts_per_step={config.prompts_per_step} exceeds the task's {len(task.prompts)} prompts"
        )
    if reference.model is policy.model:
        raise ValueError("reference and policy share one model; load the reference separately")
    limit = getattr(policy.model.config, "n_positions", None) or getattr(
        policy.model.config, "max_position_embeddings", None
    )
    longest = max(
        len(ids)
        for ids in policy.tokenizer(list(task.prompts), add_special_tokens=False)["input_ids"]
    )
    if limit is not None and longest + config.max_new_tokens > limit:
        raise ValueError(
            f"longest prompt ({longest} tokens) + max_new_tokens ({config.max_new_tokens}) exceeds the "
            f"model's {limit} positions"
        )
    if run_dir is not None and not isinstance(run_dir, (str, os.PathLike)):
        raise TypeError(
            f"run_dir must be a folder path or None, got {type(run_dir).__name__}: {run_dir!r}"
        )
    folder = Path(run_dir) if run_dir is not None else None
    if folder is None:
        return _train(policy, reference, task, config, None, progress)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(
            f"run_dir {str(folder)!r} exists and is not a folder; pass a folder path"
        )
    folder.mkdir(parents=True, exist_ok=True)
    with _runio.lock(
        folder / LOCK_FILE, what=f"run folder {str(folder)!r}"
    ):  # a second writer fails at once
        _runio.remove_stale_temporaries(
            folder, (CHECKPOINT, METRICS_FILE, CONFIG_FILE)
        )  # left by a killed run
        return _train(policy, reference, task, config, folder, progress)


def _train(
    policy: Policy,
    reference: Policy,
    task: Task,
    config: TrainConfig,
    folder: Path | None,
    progress: bool,
):
    """:func:`train` after its checks, with ``run_dir`` (``folder``) locked."""
    import pandas as pd

    from klnotes._progress import progress_bar

    reference.model.requires_grad_(False)
    reference.model.eval()
    policy.model.eval()  # no dropout: sampling and updates are deterministic functions of the generator
    device = policy.device
    optimizer = _make_optimizer(policy.model, config.lr)
    generator = _make_generator(device, config.seed)
    rows: list[dict] = []
    start = 0
    saved = None  # the last good checkpoint (for the divergence message)
    if folder is not None:
        loaded = _checkpoint.load(folder, config, device, METRICS)
        if loaded is not None:
            state, rows = loaded
            # CPU first (torch.load above): the generator state must stay a CPU tensor; weights and optimizer
            # state are moved to the parameters' device by load_state_dict.
            _checkpoint.restore(folder / CHECKPOINT, state, policy.model, optimizer, generator)
            start = int(state["step"])
            saved = (folder / CHECKPOINT, start)
            # metrics.csv may be stale (killed between the two writes) or damaged
            _checkpoint.write_metrics(folder, rows, METRICS)
        _runio.atomic_write(
            folder / CONFIG_FILE,
            lambda f: f.write(json.dumps(_config_dict(config), indent=1)),
            binary=False,
        )
    n_prompts = len(task.prompts)
    bar = progress_bar(
        range(start, config.steps),
        initial=start,
        total=config.steps,
        disable=not progress,
        desc=f"train {config.kl}",
        leave=False,
    )
    for step in bar:
        began = time.perf_counter()
        chosen = torch.randperm(
            n_prompts,
            generator=torch.Generator().manual_seed(
                int(torch.randint(2**31 - 1, (1,), generator=generator, device=generator.device))
            ),
        )
        prompts = [task.prompts[i] for i in chosen[: config.prompts_per_step].tolist()]
        try:
            try:
                batch = rollout(policy, reference, task, prompts, config, generator=generator)
            except (
                RuntimeError
            ) as err:  # e.g. torch.multinomial on NaN probabilities from non-finite weights
                if (
                    isinstance(err, TrainingDiverged)
                    or _weights_finite(policy.model)
                    and "probab" not in str(err)
                ):
                    raise
                raise TrainingDiverged(f"the rollout failed ({str(err)[:120]})") from err
            metrics = batch.metrics()
            if not all(math.isfinite(v) for v in metrics.values()):
                raise TrainingDiverged(
                    "non-finite rollout metrics "
                    + ", ".join(f"{k} = {v}" for k, v in metrics.items() if not math.isfinite(v))
                )
            updates = train_step(policy, batch, optimizer, config, generator=generator)
            if not _weights_finite(policy.model):
                raise TrainingDiverged("non-finite weights after the update")
        except TrainingDiverged as err:
            bar.close()
            last = (
                f"last good checkpoint: {str(saved[0])!r} (after {saved[1]} steps)"
                if saved
                else "no checkpoint saved yet"
                if folder is not None
                else "no checkpoint (run_dir=None)"
            )
            raise TrainingDiverged(
                f"training diverged at step {step} (arm {config.kl!r}, lr={config.lr:g}, "
                f"max_grad_norm={config.max_grad_norm}): {err}; {last}. Lower lr, set max_grad_norm, or change the "
                "seed, in a new run_dir"
            ) from err
        row = {"step": step, **metrics, **updates, "seconds": time.perf_counter() - began}
        rows.append({k: row[k] for k in METRICS})
        bar.set_postfix(reward=f"{row['reward']:.3f}", kl=f"{row['kl_seq_exact']:.3f}")
        done = step + 1
        if folder is not None and (
            (config.checkpoint_every and done % config.checkpoint_every == 0)
            or done == config.steps
        ):
            saved = (
                _save_checkpoint(folder, done, policy, optimizer, generator, config, rows),
                done,
            )
    bar.close()
    frame = pd.DataFrame(rows, columns=list(METRICS))
    frame["step"] = frame["step"].astype(int)
    return frame
