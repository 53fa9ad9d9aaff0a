"""Each framework's KL options as data: :class:`KLOption` and the builders that turn flag values into one."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from klnotes.core.surrogates import reward_to_go
from klnotes.core.variants import ESTIMATOR_ALIASES, ESTIMATORS, KLVariant, label, parse_estimator
from klnotes.frameworks.replicas import (
    openrlhf_compute_approx_kl,
    sequence_sum,
    trl_per_token_kl,
    verl_kl_penalty,
    verl_kl_penalty_forward,
)
from klnotes.frameworks.sources import SOURCES, VERSIONS, Source

__all__ = [
    "KLOption",
    "no_kl_option",
    "term_variant",
    "verl_estimator",
    "CREDIT_LEVELS",
    "DETACHED_RATIOS",
    "TokenLoss",
    "FRAMEWORKS",
    "VERL_KINDS",
    "VERL_LOSS_KINDS",
    "VERL_ADV",
    "OPENRLHF_ADV",
    "TRL_LOSS_TYPES",
    "FORMULA",
    "CREDIT",
    "flag_space",
    "spec",
    "option",
    "FrameworkSpec",
]

#: ``(logp, logp_ref, logp_old, mask) -> [batch, time]``: a framework's per-token KL loss.
TokenLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class KLOption:
    r"""One KL option of one framework, as data.

    Attributes:
        framework: ``"verl"``, ``"openrlhf"``, ``"trl"`` or ``"klnotes"`` (the TRL plug-in).
        version: where the code was read (see :data:`SOURCES`).
        flags: the flag values, as the framework spells them, e.g.
            ``(("actor_rollout_ref.actor.use_kl_loss", True), ...)``.
        formula: the per-token value, plain text.
        placement: ``"in reward"``, ``"as loss"``, ``"in reward + as loss"``, ``"none"`` or
            ``"not implemented"``.
        gradient_to: what receives the gradient.
        credit: how the term reaches each token: ``"own token"``, ``"reward-to-go"`` or
            ``"sequence sum"`` (the same sequence total on every token).
        aggregation: how the per-token loss is reduced, as the framework does it (text).
        clamp: clamps applied to the value (text; their effect on the coefficient is computed).
        ratio: ``"none"``, ``"PPO ratio, clipped"`` or ``"differentiable ratio, unclipped"``.
        coefficient_from: ``"pi_theta"`` (recomputed each step) or ``"pi_old (rollout)"``.
        token_loss: ``(logp, logp_ref, logp_old, mask) -> [batch, time]`` per-token loss with beta = 1,
            the framework's formula replicated in torch (``None`` when there is no KL term).
        sum_tokens: the exact analysis sums the per-token loss over a sequence (``True``) or
            averages it (``False``, what token-mean aggregations do for equal lengths).
        default: these are the framework's default flag values.
        notes: anything else a practitioner should know.
        advantage: ``(framework, estimator key)`` of :data:`klnotes.frameworks.grouped.ESTIMATORS` when
            the KL sits in the reward and an advantage estimator treats it (``()`` otherwise).
        variants: the :class:`~klnotes.core.variants.KLVariant` of each KL term
            (:func:`term_variant`), in the order of ``placement``; a term whose gradient is no
            variant's (verl's ``abs``, TRL's differentiated :math:`k_3\rho`, ...) has none, so
            ``variants`` may be shorter.
    """

    framework: str
    version: str
    flags: tuple[tuple[str, object], ...]
    formula: str
    placement: str
    gradient_to: str
    credit: str
    aggregation: str
    clamp: str
    ratio: str
    coefficient_from: str
    token_loss: TokenLoss | None = field(default=None, compare=False, repr=False)
    sum_tokens: bool = False
    default: bool = False
    advantage: tuple[str, str] = ()
    notes: str = ""
    variants: tuple[KLVariant, ...] = ()

    @property
    def variant(self) -> KLVariant | None:
        """The one :class:`~klnotes.core.variants.KLVariant` of an option with one KL term that is a
        variant, else ``None`` (no term, a term that is no variant, or two terms)."""
        return self.variants[0] if len(self.variants) == 1 else None

    @property
    def label(self) -> str:
        """The book's name of the KL term(s) (:func:`klnotes.core.variants.label`, joined by ``" + "``),
        ``"-"`` when there is none."""
        return " + ".join(label(v) for v in self.variants) or "-"

    @property
    def sources(self) -> tuple[Source, ...]:
        """Where the framework's code was read (:data:`klnotes.frameworks.sources.SOURCES`)."""
        return SOURCES[self.framework]

    def flag_string(self) -> str:
        """The flags as ``name=value, ...``."""
        return ", ".join(f"{k}={v}" for k, v in self.flags)


#: How a per-token KL reward reaches the tokens: credit name -> ``(reward, mask) -> credited``
#: (:func:`klnotes.core.surrogates.reward_to_go`, :eq:`eq-5-reward-to-go`; or the sequence sum).
CREDIT = {"reward-to-go": reward_to_go, "sequence sum": sequence_sum}


def no_kl_option(framework: str, flags: tuple, **fields) -> KLOption:
    """The :class:`KLOption` of ``framework`` at ``flags`` when they turn the KL term off (a zero
    coefficient): every description ``"-"``, placement ``"none"``, no per-token loss; ``fields`` set
    ``default`` and ``notes``."""
    return KLOption(
        framework,
        VERSIONS[framework],
        flags,
        "-",
        "none",
        "-",
        "-",
        "-",
        "-",
        "-",
        "-",
        None,
        **fields,
    )


def _in_reward(value: Callable, credit: str) -> TokenLoss:
    """PPO-style: reward ``-value(pi_old)`` (detached, rollout time), credited, times the ratio."""
    assign = CREDIT[credit]

    def token_loss(logp, ref, old, mask):
        reward = -value(old.detach(), ref).detach()
        advantage = assign(reward, mask)
        return -torch.exp(logp - old.detach()) * advantage * mask

    return token_loss


def _as_loss(value: Callable, *, ratio: bool = False) -> TokenLoss:
    """GRPO-style: ``value(pi_theta)`` differentiated; optionally times ``exp(logp - old)``."""

    def token_loss(logp, ref, old, mask):
        loss = value(logp, ref)
        if ratio:
            loss = loss * torch.exp(logp - old.detach())
        return loss * mask

    return token_loss


def _sum_losses(*losses: TokenLoss) -> TokenLoss:
    def token_loss(logp, ref, old, mask):
        return sum(f(logp, ref, old, mask) for f in losses)

    return token_loss


# ---------------------------------------------------------------------------------------------
# Flags: defaults, allowed values, and the option each combination builds.
# ---------------------------------------------------------------------------------------------

#: verl ``kl_penalty`` names -> the estimator they compute (``"abs"`` is :math:`|u|`, not a
#: :math:`k_n`; ``"full"`` raises ``NotImplementedError`` in verl).
VERL_KINDS = {
    **{name: parse_estimator(name) for name in ESTIMATOR_ALIASES},
    "abs": "abs",
    "full": "full",
}
#: verl ``kl_loss_type`` names, :data:`VERL_KINDS` plus the straight-through ``"+"`` forms.
VERL_LOSS_KINDS = {
    **VERL_KINDS,
    **{k + "+": (v if v == "k2" else v + "+") for k, v in VERL_KINDS.items() if k != "full"},
}
#: verl v0.9.0 ``AdvantageEstimator`` (core_algos.py:88-113) -> how it credits token rewards.
VERL_ADV = {
    "gae": "reward-to-go",
    "grpo": "sequence sum",
    "grpo_vectorized": "sequence sum",
    "gdpo": "sequence sum",
    "grpo_passk": "sequence sum",
    "reinforce_plus_plus_baseline": "sequence sum",
    "rloo": "sequence sum",
    "rloo_vectorized": "sequence sum",
    "opo": "sequence sum",
    "reinforce_plus_plus": "reward-to-go",
    "remax": "reward-to-go",
    "gpg": "sequence sum",
    "optimal_token_baseline": "reward-to-go",
    "tir_optimal_token_baseline": "reward-to-go",
}
#: OpenRLHF ``--algo.advantage.estimator`` values.
OPENRLHF_ADV = ("gae", "reinforce", "rloo", "reinforce_baseline", "group_norm", "dr_grpo")
#: TRL GRPO ``loss_type`` -> how it reduces the per-token loss (text).
TRL_LOSS_TYPES = {
    "dapo": "sum over active tokens / tokens in the global accumulated batch",
    "grpo": "mean over each sequence's tokens, then mean over sequences",
    "bnpo": "sum over active tokens / tokens in the local batch",
    "dr_grpo": "sum over tokens / (batch size x max_completion_length)",
}
#: Per-token value of each estimator in plain text, :math:`u = \log\pi_\theta - \log\pi_{\mathrm{ref}}`.
FORMULA = {
    "k1": "u = log pi_theta - log pi_ref",
    "abs": "|u|",
    "k2": "u^2 / 2",
    "k3": "e^{-u} - 1 + u",
}


def verl_estimator(kind: str) -> str:
    """The estimator of a verl ``kl_penalty``/``kl_loss_type`` name: ``"k1"``/``"k2"``/``"k3"``
    (:func:`klnotes.core.variants.parse_estimator`, a trailing ``"+"`` dropped), or verl's own
    ``"abs"`` (:math:`|u|`) and ``"full"`` (not implemented), which are no :math:`k_n`.

    Raises:
        ValueError: a name outside :data:`VERL_LOSS_KINDS`; the message lists the allowed ones.
    """
    if kind not in VERL_LOSS_KINDS:
        allowed = ", ".join(VERL_LOSS_KINDS)
        raise ValueError(f"verl: KL type {kind!r} is not known; allowed: {allowed}")
    base = kind.rstrip("+")
    return base if base in ("abs", "full") else parse_estimator(base)


#: :attr:`KLOption.credit` -> :attr:`KLVariant.level <klnotes.core.variants.KLVariant.level>`.
CREDIT_LEVELS: dict[str, str] = {
    "own token": "token",
    "reward-to-go": "token-rtg",
    "sequence sum": "sequence",
}
#: :attr:`KLOption.ratio` values that multiply a detached coefficient by the importance ratio.
DETACHED_RATIOS: tuple[str, ...] = ("PPO ratio, clipped", "importance ratio, unclipped")


def term_variant(
    estimator: str,
    placement: str,
    credit: str,
    ratio: str = "none",
    coefficient_from: str = "pi_theta",
) -> KLVariant | None:
    r"""The :class:`~klnotes.core.variants.KLVariant` of one KL term of an option, or ``None`` when its
    gradient is no variant's.

    ``placement`` ``"in reward"``/``"as loss"``; level from ``credit`` (:data:`CREDIT_LEVELS`);
    correction ``"none"`` without a ratio, ``"ratio"`` for a detached coefficient at
    :math:`\pi_\theta` times :math:`\rho=\pi_\theta/\pi_{\mathrm{old}}` and
    ``"stale-ratio"`` for the coefficient of :math:`\pi_{\mathrm{old}}` (the rollout) times
    :math:`\rho` (:eq:`eq-6-correction`). ``None`` for an estimator that is no :math:`k_n`
    (verl's ``abs``, ``full``), a credit outside :data:`CREDIT_LEVELS` (GAE with
    :math:`\lambda<1`), a differentiated ratio (its gradient has the extra term
    :math:`k_n\rho\,\nabla\log\pi_\theta`), and a per-token :math:`k_2`/:math:`k_3` summed
    over the sequence (:math:`\sum_t k_n(u_t) \ne k_n(U)`; for :math:`k_1` the two agree).
    """
    if estimator not in ESTIMATORS or credit not in CREDIT_LEVELS:
        return None
    level = CREDIT_LEVELS[credit]
    if level == "sequence" and estimator != "k1":
        return None
    if ratio == "none":
        correction = "none"
    elif ratio in DETACHED_RATIOS:
        correction = "stale-ratio" if coefficient_from.startswith("pi_old") else "ratio"
    else:
        return None
    place = {"in reward": "reward", "as loss": "loss"}[placement]
    if place == "loss" and level == "token-rtg" and correction == "none":
        return None
    return KLVariant(estimator, place, level, correction)


def _choice(framework: str, name: str, value, allowed) -> None:
    if value not in allowed:
        shown = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{framework}: {name}={value!r} is not a known value; allowed: {shown}")


def _bool(framework: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{framework}: {name}={value!r} must be True or False")
    return value


def _nonneg(framework: str, name: str, value) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{framework}: {name}={value!r} must be a number >= 0")
    return float(value)


def _verl(
    use_kl_in_reward,
    kl_penalty,
    adv_estimator,
    use_kl_loss,
    kl_loss_type,
    norm_adv_by_std_in_grpo=True,
) -> KLOption:
    fw = "verl"
    _bool(fw, "use_kl_in_reward", use_kl_in_reward)
    _bool(fw, "norm_adv_by_std_in_grpo", norm_adv_by_std_in_grpo)
    _bool(fw, "use_kl_loss", use_kl_loss)
    _choice(fw, "kl_penalty", kl_penalty, tuple(VERL_LOSS_KINDS))
    _choice(fw, "kl_loss_type", kl_loss_type, tuple(VERL_LOSS_KINDS))
    _choice(fw, "adv_estimator", adv_estimator, tuple(VERL_ADV))
    flags, losses, parts, formulas, grads, clamps, ratios, froms, credits = (
        [],
        [],
        [],
        [],
        [],
        [],
        [],
        [],
        [],
    )
    implemented = True
    advantage = ()
    terms = []
    if use_kl_in_reward:
        kind = verl_estimator(kl_penalty)
        credit = VERL_ADV[adv_estimator]
        terms.append(
            term_variant(kind, "in reward", credit, "PPO ratio, clipped", "pi_old (rollout)")
        )
        flags += [
            ("algorithm.use_kl_in_reward", True),
            ("algorithm.kl_penalty", kl_penalty),
            ("algorithm.adv_estimator", adv_estimator),
        ]
        if adv_estimator in ("grpo", "grpo_passk"):
            flags.append(("algorithm.norm_adv_by_std_in_grpo", norm_adv_by_std_in_grpo))
        nostd = adv_estimator in ("grpo", "grpo_passk") and not norm_adv_by_std_in_grpo
        advantage = (fw, adv_estimator + (":nostd" if nostd else ""))
        parts.append("in reward")
        credits.append(credit)
        if kind == "full":
            implemented = False
        else:
            losses.append(
                _in_reward(lambda lp, r, k=kind: verl_kl_penalty_forward(lp, r, k), credit)
            )
            formulas.append(FORMULA[kind])
            grads.append("log pi_theta via the PPO ratio; the KL value is a detached reward")
            ratios.append("PPO ratio, clipped")
            froms.append("pi_old (rollout)")
            if kind == "k3":
                clamps.append("x = clamp(-u, -20, 20); value clamp [-10, 10]")
    if use_kl_loss:
        kind = VERL_LOSS_KINDS[kl_loss_type]
        # straight-through ("+"): the value of k_n, the gradient of k2 as loss
        terms.append(
            term_variant(
                "k2" if kind.endswith("+") else verl_estimator(kl_loss_type), "as loss", "own token"
            )
        )
        flags += [
            ("actor_rollout_ref.actor.use_kl_loss", True),
            ("actor_rollout_ref.actor.kl_loss_type", kl_loss_type),
        ]
        parts.append("as loss")
        credits.append("own token")
        if kind == "full":
            implemented = False
        else:
            losses.append(_as_loss(lambda lp, r, k=kind: verl_kl_penalty(lp, r, k)))
            base = kind.rstrip("+")
            if kind.endswith("+"):
                formulas.append(f"value {FORMULA[base]}, gradient of u^2/2 (straight-through)")
                grads.append(
                    "log pi_theta through u^2/2 (straight-through; the value is not differentiated)"
                )
            else:
                formulas.append(FORMULA[base])
                grads.append("log pi_theta through the estimator itself")
            ratios.append("none")
            froms.append("pi_theta")
            if base == "k3":
                clamps.append("x = clamp(-u, -20, 20); value clamp [-10, 10]")
    if not use_kl_in_reward and not use_kl_loss:
        return no_kl_option(
            fw,
            (("algorithm.use_kl_in_reward", False), ("actor_rollout_ref.actor.use_kl_loss", False)),
            default=True,
            notes="verl's default: no KL term (the reference model is not even loaded)",
        )
    notes = []
    if use_kl_loss:
        notes.append(
            "GRPO example scripts set use_kl_loss=True, kl_loss_type=low_var_kl, kl_loss_coef=0.001"
        )
    if any(
        str(k).endswith("+")
        for k in (kl_penalty if use_kl_in_reward else "", kl_loss_type if use_kl_loss else "")
    ):
        notes.append(
            "'+' types work from verl v0.8.0 (PR #6058); earlier versions raise NotImplementedError"
        )
    if not implemented:
        notes.append("'full' raises NotImplementedError in verl")
    return KLOption(
        fw,
        VERSIONS[fw],
        tuple(flags),
        "; ".join(formulas) if formulas else "not implemented",
        " + ".join(parts) if implemented else "not implemented",
        "; ".join(grads) or "-",
        " + ".join(credits),
        "actor.loss_agg_mode (default token-mean) over the PPO mini-batch (verl/workers/utils/losses.py)",
        "; ".join(clamps) or "none",
        " + ".join(ratios) or "-",
        " + ".join(froms) or "-",
        _sum_losses(*losses) if implemented else None,
        notes="; ".join(notes),
        advantage=advantage,
        variants=tuple(t for t in terms if t is not None) if implemented else (),
    )


def _openrlhf(init_kl_coef, kl_estimator, use_kl_loss, advantage_estimator) -> KLOption:
    fw = "openrlhf"
    coef = _nonneg(fw, "init_kl_coef", init_kl_coef)
    _choice(fw, "kl_estimator", kl_estimator, ESTIMATORS)
    _bool(fw, "use_kl_loss", use_kl_loss)
    _choice(fw, "advantage_estimator", advantage_estimator, OPENRLHF_ADV)
    # Current (v0.10.2+) spellings; OPENRLHF_FLAG_ALIASES gives the older ones (--init_kl_coef, ...).
    flags = (
        ("--algo.kl.init_coef", init_kl_coef),
        ("--algo.kl.estimator", kl_estimator),
        ("--algo.kl.use_loss", use_kl_loss),
        ("--algo.advantage.estimator", advantage_estimator),
    )
    value = lambda lp, r, k=kl_estimator: openrlhf_compute_approx_kl(lp, r, k)  # noqa: E731
    default = (
        coef == 0.01 and kl_estimator == "k1" and not use_kl_loss and advantage_estimator == "gae"
    )
    if coef == 0.0:
        return no_kl_option(
            fw,
            flags,
            notes="--algo.kl.init_coef (was --init_kl_coef) <= 0 turns the KL term off",
        )
    clamp = "value clamp [-10, 10]"
    if use_kl_loss:
        return KLOption(
            fw,
            VERSIONS[fw],
            flags,
            FORMULA[kl_estimator],
            "as loss",
            "log pi_theta through the estimator itself",
            "own token",
            "token mean over the whole optimizer step (aggregate_loss, since v0.10.3/v0.10.4; "
            "v0.10.2 and earlier: masked mean "
            "per micro-batch), times --algo.kl.init_coef",
            clamp,
            "none",
            "pi_theta",
            _as_loss(value),
            default=False,
            variants=(term_variant(parse_estimator(kl_estimator), "as loss", "own token"),),
            notes="GRPO example scripts: --algo.kl.use_loss --algo.kl.estimator k3 (was --use_kl_loss --kl_estimator "
            "k3; k2 in REINFORCE-baseline scripts); the CLI recommends k2 or k3 as loss"
            + (
                "; k3 is computed in float32 with no inner clamp: exp(-u) overflows below u = -88.7 and the "
                "gradient is NaN there (the outer clamp zeroes it times inf)"
                if kl_estimator == "k3"
                else ""
            ),
        )
    notes = (
        "KL computed once at rollout from the actor's log-probs; reward-to-go returns (gamma = 1)"
    )
    if advantage_estimator == "gae":
        notes += (
            "; with gae a critic baseline and --algo.advantage.lambd (was --lambd; default 1 since "
            "March 2025) give the reward-to-go minus a baseline"
        )
    return KLOption(
        fw,
        VERSIONS[fw],
        flags,
        FORMULA[kl_estimator],
        "in reward",
        "log pi_theta via the PPO ratio; the KL value is a detached reward",
        "reward-to-go",
        "per-token reward -init_kl_coef * kl, cumulative returns, PPO loss masked mean",
        clamp,
        "PPO ratio, clipped",
        "pi_old (rollout)",
        _in_reward(value, "reward-to-go"),
        default=default,
        notes=notes,
        advantage=(fw, advantage_estimator),
        variants=(
            term_variant(
                parse_estimator(kl_estimator),
                "in reward",
                "reward-to-go",
                "PPO ratio, clipped",
                "pi_old (rollout)",
            ),
        ),
    )


def _trl_in_reward(trainer, beta, kl_estimator, lam, normalize_advantages) -> KLOption:
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
            _in_reward(value, "sequence sum"),
            advantage=(fw, "rloo:whiten" if normalize_advantages else "rloo"),
            variants=(
                term_variant(
                    "k1", "in reward", "sequence sum", "PPO ratio, clipped", "pi_old (rollout)"
                ),
            ),
            notes="trl/trainer/rloo_trainer.py: per_token_kl = old - ref, summed, rewards - beta * kl",
        )
    _choice(fw, "kl_estimator", kl_estimator, ("k1", "k3"))
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
        _in_reward(value, "reward-to-go"),
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


def _trl(
    beta,
    use_bias_correction_kl,
    num_iterations,
    loss_type,
    trainer="grpo",
    kl_estimator="k1",
    lam=1.0,
    normalize_advantages=False,
) -> KLOption:
    fw = "trl"
    _choice(fw, "trainer", trainer, ("grpo", "rloo", "ppo"))
    coef = _nonneg(fw, "beta", beta)
    if trainer != "grpo":
        if coef == 0.0:
            return no_kl_option(
                fw,
                (("trainer", trainer), ("beta", beta)),
                notes="a KL coefficient of 0: no KL term",
            )
        return _trl_in_reward(trainer, beta, kl_estimator, lam, normalize_advantages)
    _bool(fw, "use_bias_correction_kl", use_bias_correction_kl)
    if (
        not isinstance(num_iterations, int)
        or isinstance(num_iterations, bool)
        or num_iterations < 1
    ):
        raise ValueError(f"trl: num_iterations={num_iterations!r} must be an integer >= 1")
    _choice(fw, "loss_type", loss_type, tuple(TRL_LOSS_TYPES))
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
            _as_loss(trl_per_token_kl, ratio=True),
            notes=f"{off}; the default in trl 1.16.0 (it was False when added in Dec 2025)",
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
        _as_loss(trl_per_token_kl),
        variants=(term_variant("k3", "as loss", "own token"),),
        notes=f"{off}; DeepSeekMath's GRPO KL term (TRL's default until use_bias_correction_kl)",
    )


def _klnotes(kl, level, clip) -> KLOption:
    from klnotes import trl_plugin

    fw = "klnotes"
    _choice(fw, "kl", kl, trl_plugin.KL_NAMES)
    _choice(fw, "level", level, trl_plugin.LEVELS)
    _bool(fw, "clip", clip)
    variant = trl_plugin.kl_variant(kl, level)
    credit = next(c for c, lv in CREDIT_LEVELS.items() if lv == variant.level)

    def token_loss(logp, ref, old, mask):
        return trl_plugin.principled_kl_token_loss(kl, logp, ref, old, mask, level=level, clip=clip)

    formula = {"k1_in_reward": "u per token, in reward", "k2_as_loss": "U^2/2, U = sum_t u_t"}[kl]
    if level == "token":
        formula = "u per token, own token only" if kl == "k1_in_reward" else "u_t^2 / 2 per token"
    return KLOption(
        fw,
        VERSIONS[fw],
        (("kl", kl), ("level", level), ("clip", clip)),
        formula,
        "in reward (KL head)",
        "log pi_theta via the PPO ratio; coefficient recomputed from pi_theta, detached",
        credit,
        "sum over each sequence's tokens, mean over sequences",
        "none",
        "PPO ratio, clipped" if clip else "importance ratio, unclipped",
        "pi_theta",
        token_loss,
        sum_tokens=True,
        default=(kl == "k1_in_reward" and level == "sequence" and clip),
        # the plug-in's detached coefficient at pi_theta times the ratio: correction "ratio"
        variants=(replace(variant, correction="ratio"),),
        notes="klnotes.trl_plugin.PrincipledKLGRPOTrainer",
    )


@dataclass(frozen=True)
class FrameworkSpec:
    """How one framework's flags become a :class:`KLOption`.

    Attributes:
        builder: keyword flags -> :class:`KLOption`.
        defaults: the framework's default flag values.
        space: the flag combinations (over the defaults) that the audit table lists.
    """

    builder: Callable[..., KLOption]
    defaults: dict
    space: tuple  # flag combinations listed by table()


def _verl_space():
    rows = [{}]
    for kind in ("k1", "abs", "k2", "k3", "full"):
        for adv in ("gae", "grpo", "rloo") if kind == "k1" else ("gae",):
            rows.append(dict(use_kl_in_reward=True, kl_penalty=kind, adv_estimator=adv))
        if kind == "k1":
            rows.append(
                dict(
                    use_kl_in_reward=True,
                    kl_penalty=kind,
                    adv_estimator="grpo",
                    norm_adv_by_std_in_grpo=False,
                )
            )
    for kind in ("k1", "abs", "k2", "k3", "full", "k1+", "abs+", "k3+"):
        rows.append(dict(use_kl_loss=True, kl_loss_type=kind))
    return tuple(rows)


#: Framework name -> its :class:`FrameworkSpec` (builder, default flags, table rows).
FRAMEWORKS: dict[str, FrameworkSpec] = {
    "verl": FrameworkSpec(
        _verl,
        dict(
            use_kl_in_reward=False,
            kl_penalty="kl",
            adv_estimator="gae",
            use_kl_loss=False,
            kl_loss_type="low_var_kl",
            norm_adv_by_std_in_grpo=True,
        ),
        _verl_space(),
    ),
    "openrlhf": FrameworkSpec(
        _openrlhf,
        dict(init_kl_coef=0.01, kl_estimator="k1", use_kl_loss=False, advantage_estimator="gae"),
        tuple(
            [{}, dict(init_kl_coef=0.0)]
            + [dict(kl_estimator=k, advantage_estimator="reinforce") for k in ESTIMATORS]
            + [dict(use_kl_loss=True, kl_estimator=k) for k in ESTIMATORS]
        ),
    ),
    "trl": FrameworkSpec(
        _trl,
        dict(
            beta=0.0,
            use_bias_correction_kl=True,
            num_iterations=1,
            loss_type="dapo",
            trainer="grpo",
            kl_estimator="k1",
            lam=0.95,
            normalize_advantages=False,
        ),
        (
            {},
            dict(beta=0.04),
            dict(beta=0.04, use_bias_correction_kl=False),
            dict(trainer="rloo", beta=0.05),
            dict(trainer="ppo", beta=0.05, lam=1.0),
        ),
    ),
    "klnotes": FrameworkSpec(
        _klnotes,
        dict(kl="k1_in_reward", level="sequence", clip=True),
        ({}, dict(kl="k2_as_loss"), dict(level="token")),
    ),
}


def flag_space(framework: str) -> dict:
    """Default flag values of ``framework`` (the keyword arguments :func:`audit` accepts)."""
    return dict(spec(framework).defaults)


def spec(framework: str) -> FrameworkSpec:
    """The :class:`FrameworkSpec` of ``framework`` (case-insensitive).

    Raises:
        ValueError: an unknown framework; the message lists the known ones.
    """
    key = framework.lower() if isinstance(framework, str) else framework
    if key not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; known: {', '.join(FRAMEWORKS)}")
    return FRAMEWORKS[key]


def option(framework: str, **flags) -> KLOption:
    """The :class:`KLOption` that ``framework`` runs with these flags (others at their defaults).

    Raises:
        ValueError: unknown framework, unknown flag name, or a flag value the framework does not
            accept; the message lists the known ones.
    """
    fw = spec(framework)
    unknown = sorted(set(flags) - set(fw.defaults))
    if unknown:
        raise ValueError(f"{framework}: unknown flag(s) {unknown}; known: {', '.join(fw.defaults)}")
    return fw.builder(**{**fw.defaults, **flags})
