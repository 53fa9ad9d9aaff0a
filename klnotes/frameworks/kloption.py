"""The KL option type shared by every framework: :class:`KLOption`, the per-token loss builders
(a KL value in the reward or as a loss), the book's name of each term (:func:`term_variant`) and
the checks of flag values the per-framework builders use (:mod:`~klnotes.frameworks.options`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from klnotes.core.surrogates import reward_to_go
from klnotes.core.variants import ESTIMATORS, KLVariant, label
from klnotes.frameworks.replicas import sequence_sum
from klnotes.frameworks.sources import SOURCES, VERSIONS, Source

__all__ = [
    "KLOption",
    "TokenLoss",
    "CREDIT",
    "CREDIT_LEVELS",
    "DETACHED_RATIOS",
    "FORMULA",
    "no_kl_option",
    "in_reward_loss",
    "as_loss",
    "sum_losses",
    "term_variant",
    "check_choice",
    "check_bool",
    "check_nonneg",
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


def in_reward_loss(value: Callable, credit: str) -> TokenLoss:
    """PPO-style: reward ``-value(pi_old)`` (detached, rollout time), credited, times the ratio."""
    assign = CREDIT[credit]

    def token_loss(logp, ref, old, mask):
        reward = -value(old.detach(), ref).detach()
        advantage = assign(reward, mask)
        return -torch.exp(logp - old.detach()) * advantage * mask

    return token_loss


def as_loss(value: Callable, *, ratio: bool = False) -> TokenLoss:
    """GRPO-style: ``value(pi_theta)`` differentiated; optionally times ``exp(logp - old)``."""

    def token_loss(logp, ref, old, mask):
        loss = value(logp, ref)
        if ratio:
            loss = loss * torch.exp(logp - old.detach())
        return loss * mask

    return token_loss


def sum_losses(*losses: TokenLoss) -> TokenLoss:
    """One per-token loss that is the sum of ``losses`` (each ``[batch, time]``)."""

    def token_loss(logp, ref, old, mask):
        return sum(f(logp, ref, old, mask) for f in losses)

    return token_loss


#: Per-token value of each estimator in plain text, :math:`u = \log\pi_\theta - \log\pi_{\mathrm{ref}}`.
FORMULA = dict(k1="u = log pi_theta - log pi_ref", abs="|u|", k2="u^2 / 2", k3="e^{-u} - 1 + u")

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


def check_choice(framework: str, name: str, value, allowed) -> None:
    """Raise ``ValueError`` naming ``value`` and the ``allowed`` ones when it is not among them."""
    if value not in allowed:
        shown = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{framework}: {name}={value!r} is not a known value; allowed: {shown}")


def check_bool(framework: str, name: str, value) -> bool:
    """``value`` when it is a bool, else ``ValueError`` naming it."""
    if not isinstance(value, bool):
        raise ValueError(f"{framework}: {name}={value!r} must be True or False")
    return value


def check_nonneg(framework: str, name: str, value) -> float:
    """``value`` as a float when it is a number >= 0 (not a bool), else ``ValueError`` naming it."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{framework}: {name}={value!r} must be a number >= 0")
    return float(value)
