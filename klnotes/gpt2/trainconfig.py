"""The trainer's configuration (:doc:`chapter 8 </book/08_gpt2_training>`): the KL arms, the metrics
it logs, and :class:`TrainConfig`.

An arm is the ``kl=`` name of a run (``"k2-loss"``, ``"k3-loss-is"``, ...), each an alias of a
:class:`~klnotes.core.variants.KLVariant` (:data:`ARM_VARIANTS`) whose label the book prints
(:data:`ARM_LABELS`). :class:`TrainConfig` holds every hyperparameter of
:func:`klnotes.gpt2.trainer.train`, validated when it is made; the results store hashes its fields
(:func:`klnotes.gpt2.store.config_id`) to recognise stale stored runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from klnotes.core import surrogates, variants
from klnotes.gpt2._checks import MAX_INT, MAX_SEED, check_int_fields, check_number_fields

__all__ = [
    "ARMS",
    "ARM_VARIANTS",
    "ARM_LABELS",
    "ROLLOUT_METRICS",
    "METRICS",
    "LOSS_REDUCTIONS",
    "TrainConfig",
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
#: The metrics of a rollout batch, i.e. of ``pi_old`` (:meth:`klnotes.gpt2.rollout.Batch.metrics`).
ROLLOUT_METRICS: tuple[str, ...] = (
    "reward",
    "kl_token_exact",
    "kl_seq_exact",
    "kl_seq_estimate",
    "logprob_diff",
    "entropy",
    "response_length",
    "frac_abs_log_ratio_gt_1",
)
#: Columns of the metrics table, in order: the step, the rollout's metrics, the updates' mean
#: ``loss``, ``kl_loss`` and ``clip_frac``, and the step's wall-clock ``seconds``.
METRICS: tuple[str, ...] = ("step", *ROLLOUT_METRICS, "loss", "kl_loss", "clip_frac", "seconds")
#: The reductions a training loss accepts: :data:`klnotes.core.surrogates.REDUCTIONS` but ``"none"``.
LOSS_REDUCTIONS: tuple[str, ...] = tuple(r for r in surrogates.REDUCTIONS if r != "none")
# The smallest temperature (below it logits / tau overflow float32 for ordinary logits).
_MIN_TEMPERATURE = 1e-2


@dataclass(frozen=True)
class TrainConfig:
    r"""Hyperparameters of :func:`klnotes.gpt2.trainer.train`. Defaults suit the tiny CPU model.

    :doc:`Chapter 8 </book/08_gpt2_training>`: ``beta`` is the :math:`\beta` of the objective
    :eq:`eq-1-objective`, ``clip_eps`` the
    :math:`\epsilon` of PPO's clip (:eq:`eq-1-ppo`), ``group_size`` the group of GRPO's advantages
    (:eq:`eq-1-grpo`).

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
        if self.reduction not in LOSS_REDUCTIONS:
            raise ValueError(
                f"TrainConfig.reduction={self.reduction!r}; allowed: {', '.join(LOSS_REDUCTIONS)}"
            )
        ints = dict(group_size=2, prompts_per_step=1, max_new_tokens=1, min_new_tokens=0)
        ints.update(updates_per_batch=1, steps=0, seed=0, checkpoint_every=0)
        bounds = {k: (low, MAX_SEED if k == "seed" else MAX_INT) for k, low in ints.items()}
        check_int_fields("TrainConfig", self, bounds)
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
        check_number_fields("TrainConfig", self, floats)
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
