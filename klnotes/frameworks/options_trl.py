"""TRL's KL options as data (GRPO, RLOO and PPO trainers): its GRPO loss types and the builder of
the :class:`~klnotes.frameworks.kloption.KLOption` its settings select."""

from __future__ import annotations

import torch

from klnotes.core.variants import parse_estimator
from klnotes.frameworks.kloption import (
    FORMULA,
    KLOption,
    as_loss,
    check_bool,
    check_choice,
    check_nonneg,
    in_reward_loss,
    no_kl_option,
    term_variant,
)
from klnotes.frameworks.replicas import trl_per_token_kl
from klnotes.frameworks.sources import VERSIONS

__all__ = ["TRL_LOSS_TYPES", "trl_option", "trl_in_reward_option"]

#: TRL GRPO ``loss_type`` -> how it reduces the per-token loss (text).
TRL_LOSS_TYPES = {
    "dapo": "sum over active tokens / tokens in the global accumulated batch",
    "grpo": "mean over each sequence's tokens, then mean over sequences",
    "bnpo": "sum over active tokens / tokens in the local batch",
    "dr_grpo": "sum over tokens / (batch size x max_completion_length)",
}


def trl_in_reward_option(trainer, beta, kl_estimator, lam, normalize_advantages) -> KLOption:
    """TRL RLOOTrainer (k1 summed over the sequence, in the reward, leave-one-out baseline) or PPOTrainer
    (k1/k3 per token in the reward, GAE, whitened advantages)."""
    fw = "trl"
    flags = (("trainer", trainer), ("beta" if trainer == "rloo" else "kl_coef", beta))
    if trainer == "rloo":
        flags += (("normalize_advantages", normalize_advantages),)
        value = lambda lp, r: lp - r  # noqa: E731
        return KLOption(
            fw,
            VERSIONS[fw],
            flags,
            FORMULA["k1"] + ", summed over the sequence",
            "in reward",
            "log pi_theta via the PPO ratio; the KL value is a detached reward",
            "sequence sum",
            "RLOO: reward - beta * sum_t u_t, leave-one-out baseline",
            "none",
            "PPO ratio, clipped",
            "pi_old (rollout)",
            in_reward_loss(value, "sequence sum"),
            advantage=(fw, "rloo:whiten" if normalize_advantages else "rloo"),
            variants=(
                term_variant(
                    "k1", "in reward", "sequence sum", "PPO ratio, clipped", "pi_old (rollout)"
                ),
            ),
            notes="trl/trainer/rloo_trainer.py: per_token_kl = old - ref, summed, rewards - beta * kl",
        )
    check_choice(fw, "kl_estimator", kl_estimator, ("k1", "k3"))
    flags += (("kl_estimator", kl_estimator), ("lam", lam))
    kind = kl_estimator
    value = lambda lp, r, k=kind: (lp - r) if k == "k1" else torch.exp(r - lp) - 1 - (r - lp)  # noqa: E731
    return KLOption(
        fw,
        VERSIONS[fw],
        flags,
        FORMULA[kind],
        "in reward",
        "log pi_theta via the PPO ratio; the KL value is a detached reward",
        "reward-to-go" if lam == 1 else f"GAE, lam = {lam}",
        "non_score_reward = -kl_coef * kl per token; GAE; advantages whitened",
        "none",
        "PPO ratio, clipped",
        "pi_old (rollout)",
        in_reward_loss(value, "reward-to-go"),
        advantage=(fw, "ppo" if lam == 1 else "ppo:gae"),
        variants=tuple(
            v
            for v in (
                term_variant(
                    parse_estimator(kind),
                    "in reward",
                    "reward-to-go" if lam == 1 else "GAE",
                    "PPO ratio, clipped",
                    "pi_old (rollout)",
                ),
            )
            if v is not None
        ),
        notes="trl PPOTrainer (trl/trainer/ppo_trainer.py in v0.19-v0.26, trl/experimental/ppo after): "
        "non_score_reward = -kl_coef * kl",
    )


def trl_option(
    beta,
    use_bias_correction_kl,
    num_iterations,
    loss_type,
    trainer="grpo",
    kl_estimator="k1",
    lam=1.0,
    normalize_advantages=False,
) -> KLOption:
    """The :class:`KLOption` TRL runs for ``trainer`` (``grpo``: ``beta``,
    ``use_bias_correction_kl``, ``num_iterations``, ``loss_type``; ``rloo``/``ppo``: see
    :func:`trl_in_reward_option`); raises ``ValueError`` on a bad value."""
    fw = "trl"
    check_choice(fw, "trainer", trainer, ("grpo", "rloo", "ppo"))
    coef = check_nonneg(fw, "beta", beta)
    if trainer != "grpo":
        if coef == 0.0:
            return no_kl_option(
                fw,
                (("trainer", trainer), ("beta", beta)),
                notes="a KL coefficient of 0: no KL term",
            )
        return trl_in_reward_option(trainer, beta, kl_estimator, lam, normalize_advantages)
    check_bool(fw, "use_bias_correction_kl", use_bias_correction_kl)
    if (
        not isinstance(num_iterations, int)
        or isinstance(num_iterations, bool)
        or num_iterations < 1
    ):
        raise ValueError(f"trl: num_iterations={num_iterations!r} must be an integer >= 1")
    check_choice(fw, "loss_type", loss_type, tuple(TRL_LOSS_TYPES))
    flags = (
        ("beta", beta),
        ("use_bias_correction_kl", use_bias_correction_kl),
        ("num_iterations", num_iterations),
        ("loss_type", loss_type),
    )
    off = (
        "on-policy (num_iterations = 1)"
        if num_iterations == 1
        else f"{num_iterations} updates per batch"
    )
    if coef == 0.0:
        return no_kl_option(
            fw,
            flags,
            default=(use_bias_correction_kl and num_iterations == 1 and loss_type == "dapo"),
            notes="beta = 0 (TRL's default since v0.19) loads no reference model: no KL term",
        )
    if use_bias_correction_kl:
        return KLOption(
            fw,
            VERSIONS[fw],
            flags,
            "(e^{-u} - 1 + u) * exp(log pi_theta - log pi_old)",
            "as loss",
            "both factors: k3 and the importance ratio (DeepSeek-V3.2)",
            "own token",
            TRL_LOSS_TYPES[loss_type],
            "none",
            "differentiable ratio, unclipped",
            "pi_theta",
            as_loss(trl_per_token_kl, ratio=True),
            notes=f"{off}; the default from trl 1.10.0 (commit 6672ba32); False from its addition "
            "in v0.26.0 (Dec 2025) to 1.9.2",
        )
    return KLOption(
        fw,
        VERSIONS[fw],
        flags,
        FORMULA["k3"],
        "as loss",
        "log pi_theta through k3 itself",
        "own token",
        TRL_LOSS_TYPES[loss_type],
        "none",
        "none",
        "pi_theta",
        as_loss(trl_per_token_kl),
        variants=(term_variant("k3", "as loss", "own token"),),
        notes=f"{off}; DeepSeekMath's GRPO KL term (TRL's default until use_bias_correction_kl)",
    )
