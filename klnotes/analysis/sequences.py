"""Token level versus sequence level, on- and off-policy: analysis helpers for chapters 5 and 6.

Everything is exact: expectations are sums over all ``V^L`` sequences of a tiny autoregressive
policy (:mod:`klnotes.analysis.exact`), in float64. Notation: ``u_t = log pi_theta(y_t|s_t) - log pi_ref(y_t|s_t)``,
``U = sum_t u_t``, ``G_t = sum_{s>=t} u_s`` (reward-to-go, eq-5-reward-to-go), ``pi_old`` the policy
that sampled the batch, ``rho = pi_theta / pi_old``.

Chapter 5 (on-policy): an :class:`Implementation` is a KL surrogate of :mod:`klnotes.core.surrogates`
applied at a level (per token, per token with reward-to-go, per sequence) and aggregated per
sequence by a sum or a mean over its tokens; :func:`expected_gradient` is its exact expected
gradient, compared with the objectives of :mod:`klnotes.analysis.exact` by :func:`gradient_table`,
:func:`bias_sweep` and :func:`position_errors`.

Chapter 6 (off-policy): an :class:`OffPolicyVariant` is a KL term computed on ``pi_old``'s samples
with or without the correction of {cite:t}`liu2025rethinking` (coefficient times ratio, eq-6-correction,
optionally PPO-clipped) at sequence or token level; :func:`simulate_updates` takes several optimizer
steps from ``pi_old`` and measures each variant's exact off-policy bias after every step.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from klnotes.analysis import exact
from klnotes.core import coefficients, surrogates, variants
from klnotes.core.estimators import validate_pair

__all__ = [
    "PER_SEQUENCE",
    "Implementation",
    "IMPLEMENTATIONS",
    "implementation_surrogate",
    "future_surrogate",
    "expected_gradient",
    "compare",
    "gradient_table",
    "bias_sweep",
    "tabular_logits",
    "optimal_logits",
    "train_exact",
    "prefix_lengths",
    "position_errors",
    "token_kl_under",
    "CORRECTIONS",
    "OFF_LEVELS",
    "OffPolicyVariant",
    "off_policy_surrogate",
    "clip_active",
    "active_clip_mass",
    "clipped_surrogate_reference",
    "reward_surrogate",
    "combined_surrogate",
    "simulate_updates",
]

SequenceSurrogate = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

#: Aggregation of per-token terms into one loss per sequence: ``"sum"`` (seq-sum) or ``"mean"``
#: (GRPO's ``1/|y|``, seq-mean).
PER_SEQUENCE: tuple[str, ...] = ("sum", "mean")


# --- chapter 5: implementations at token and sequence level ------------------------------------


@dataclass(frozen=True)
class Implementation:
    r"""A KL implementation on sequences (chapter 5): a variant (``variant``) and how a sequence's
    terms are aggregated.

    With :math:`u_t`, :math:`U` of :eq:`eq-5-log-ratios`, :math:`G_t` of :eq:`eq-5-reward-to-go`
    and :math:`s` the elementwise surrogate of :eq:`eq-3-in-reward` / :eq:`eq-3-as-loss`, the
    per-sequence loss is

    .. math::

        \sum_t s(u_t)\ \ (\text{token}), \qquad
        \sum_t \mathrm{sg}\Big(\sum_{s\ge t} k_n(u_s)\Big)\log\pi_\theta(y_t\mid s_t)\ \ (\text{token-rtg}),
        \qquad s(U)\ \ (\text{sequence}),

    divided by :math:`\lvert y\rvert` for ``per_sequence="mean"``.

    Attributes:
        label: one of :data:`klnotes.core.coefficients.IMPLEMENTATIONS`, e.g. ``"k2 as loss"``.
        level: ``"token"`` (the surrogate on each token's own log-ratio), ``"token-rtg"`` ("in reward"
            labels only: coefficient = reward-to-go of the per-token estimator), ``"sequence"`` (the
            surrogate on ``U``); see :data:`klnotes.core.surrogates.LEVELS`.
        per_sequence: ``"sum"`` over the tokens of a sequence, or ``"mean"`` (divide by its length).

    Raises:
        ValueError: unknown label, level or aggregation (lists the allowed ones); ``token-rtg`` with an
            "as loss" label.
    """

    label: str
    level: str = "token"
    per_sequence: str = "sum"

    def __post_init__(self):
        _, style = coefficients.parse_implementation(self.label)
        if self.level not in surrogates.LEVELS:
            raise ValueError(
                f"unknown level {self.level!r}; allowed: {', '.join(surrogates.LEVELS)}"
            )
        if self.per_sequence not in PER_SEQUENCE:
            raise ValueError(
                f"unknown per_sequence {self.per_sequence!r}; allowed: {', '.join(PER_SEQUENCE)}"
            )
        if self.level == "token-rtg" and style != "in_reward":
            raise ValueError(
                f"level='token-rtg' applies to 'in reward' implementations only, got {self.label!r}"
            )

    @property
    def variant(self) -> variants.KLVariant:
        """The :class:`~klnotes.core.variants.KLVariant` of ``label`` at ``level`` (no correction)."""
        v = variants.parse(self.label)
        return variants.KLVariant(v.estimator, v.placement, self.level)


#: The implementations chapter 5 compares, by the name the chapter uses.
IMPLEMENTATIONS: dict[str, Implementation] = {
    "k1 in reward, reward-to-go": Implementation("k1 in reward", "token-rtg"),
    "k1 in reward, sequence": Implementation("k1 in reward", "sequence"),
    "k2 as loss, sequence": Implementation("k2 as loss", "sequence"),
    "k1 in reward, own token": Implementation("k1 in reward", "token"),
    "k2 as loss, per token": Implementation("k2 as loss", "token"),
    "k3 as loss, per token": Implementation("k3 as loss", "token"),
    "k3 as loss, per token, seq-mean (GRPO)": Implementation("k3 as loss", "token", "mean"),
    "k3 as loss, sequence": Implementation("k3 as loss", "sequence"),
    "k1 as loss, per token": Implementation("k1 as loss", "token"),
}


def implementation_surrogate(impl: Implementation) -> SequenceSurrogate:
    r"""Per-sequence loss ``f(logp, logp_ref, logp_old, mask) -> [N]`` of ``impl`` (for :mod:`klnotes.analysis.exact`).

    .. math:: f(y) = \sum_t s(u_t), \qquad
        \sum_t \mathrm{sg}\Big(\sum_{s\ge t} k_n(u_s)\Big)\log\pi_\theta(y_t\mid s_t), \qquad s(U)

    for the levels ``"token"``, ``"token-rtg"`` and ``"sequence"``.

    The loss of :class:`Implementation` (:eq:`eq-5-log-ratios`, :eq:`eq-5-reward-to-go`),
    :doc:`chapter 5 </book/05_sequences>`.

    ``level="token"``: ``sum_t s(u_t)`` (or ``(1/|y|) sum_t``); ``"token-rtg"``: ``sum_t sg(sum_{s>=t}
    k_n(u_s)) log pi(y_t|s_t)``; ``"sequence"``: ``s(U)`` (divided by ``|y|`` for ``"mean"``), where
    ``s`` is the elementwise surrogate of the label. Built on :func:`klnotes.core.surrogates.kl_loss`.
    Inputs ``[N, L]``; ``logp_old`` is unused (on-policy forms).
    """
    if not isinstance(impl, Implementation):
        raise TypeError(f"impl must be an Implementation, got {type(impl).__name__}")

    variant = impl.variant

    def f(logp, logp_ref, logp_old, mask):
        per = surrogates.per_sequence(variant, logp, logp_ref, mask)
        if impl.per_sequence == "mean":
            per = per / mask.sum(-1).to(per.dtype).clamp_min(1.0)
        return per

    f.__name__ = f"{impl.label.replace(' ', '_')}__{impl.level}__{impl.per_sequence}"
    return f


def future_surrogate(
    logp: torch.Tensor, logp_ref: torch.Tensor, logp_old: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    r"""The term per-token losses miss (:eq:`eq-5-future`), ``[N]``:
    :math:`\sum_t \mathrm{sg}\big(\sum_{s>t} u_s\big)\log\pi_\theta(y_t\mid s_t)`.

    It is "k1 in reward, reward-to-go" minus "k1 in reward, own token": the credit a token gets for
    the log-ratios of the tokens that follow it.
    """
    validate_pair(logp, logp_ref, finite=False)
    m = surrogates.check_mask(mask, logp)
    u_t = torch.where(m, logp - logp_ref, torch.zeros_like(logp)).detach()
    later = surrogates.reward_to_go(u_t, m) - u_t
    return torch.where(m, later * logp, torch.zeros_like(logp)).sum(-1)


def expected_gradient(
    space: exact.SequenceSpace, impl, policy, ref, behaviour=None
) -> torch.Tensor:
    r"""Exact expected gradient of an :class:`Implementation` (or a sequence surrogate), ``[P, V]`` float64.

    .. math:: g = \sum_y \pi_b(y)\,\nabla_\theta f_\theta(y)

    (:eq:`eq-4-expected-gradient` for :math:`\pi_b = \pi_\theta`; :eq:`eq-6-naive` off-policy).

    ``E_{y ~ pi_b}[grad f(y)]`` with ``pi_b = pi_theta`` (``behaviour=None``) or ``pi_old``; tabular
    logits ``policy``, ``ref``, ``behaviour`` of shape ``[P, V]``.
    """
    f = implementation_surrogate(impl) if isinstance(impl, Implementation) else impl
    return exact.expected_gradient(space, f, policy, ref, behaviour=behaviour)


def compare(g: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    r"""``rel_error = |g - g*| / |g*|``, ``cosine = <g, g*> / (|g| |g*|)`` and the
    least-squares ``scale = <g, g*> / |g*|^2`` of ``g`` against ``target``. A ``g`` below ``1e-12 |g*|``
    counts as zero (cosine 0).

    .. math:: \mathrm{rel} = \frac{\lVert g - g^\star\rVert}{\lVert g^\star\rVert}, \quad
        \cos = \frac{\langle g, g^\star\rangle}{\lVert g\rVert\,\lVert g^\star\rVert}, \quad
        \mathrm{scale} = \frac{\langle g, g^\star\rangle}{\lVert g^\star\rVert^2}

    :math:`g^\star` usually the sequence reverse-KL gradient of :eq:`eq-5-seq-gradient`.
    """
    g, t = exact.flatten(g), exact.flatten(target)
    tn, gn = float(t.norm()), float(g.norm())
    if tn == 0.0:
        raise ValueError("target gradient is zero; relative error is undefined")
    dot = float((g * t).sum())
    return {
        "rel_error": float((g - t).norm()) / tn,
        "cosine": dot / (gn * tn) if gn > 1e-12 * tn else 0.0,
        "scale": dot / tn**2,
    }


def gradient_table(
    space: exact.SequenceSpace,
    policy: torch.Tensor,
    ref: torch.Tensor,
    impls: Mapping[str, Implementation] | None = None,
    objectives: Sequence[str] = exact.OBJECTIVES,
):
    r"""``pandas.DataFrame``: one row per implementation, ``rel_error`` against each objective's exact
    gradient (columns named after :data:`klnotes.analysis.exact.OBJECTIVES`), the ``cosine`` with the sequence
    reverse-KL gradient, and ``norm`` of its expected gradient (on-policy).

    The objectives are the sequence KLs :eq:`eq-5-seq-rkl`, :eq:`eq-5-seq-fkl` and the token-level
    ones :eq:`eq-5-tok-rkl`, :eq:`eq-5-tok-fkl`; each cell is :func:`compare`'s
    :math:`\lVert g - g^\star\rVert/\lVert g^\star\rVert` (:doc:`chapter 5 </book/05_sequences>`).
    """
    import pandas as pd

    impls = IMPLEMENTATIONS if impls is None else impls
    targets = {name: exact.objective_gradient(space, policy, ref, name) for name in objectives}
    seq = exact.objective_gradient(space, policy, ref, "sequence reverse KL")
    rows = []
    for name, impl in impls.items():
        g = expected_gradient(space, impl, policy, ref)
        row = {"implementation": name, "norm": float(g.norm())}
        for obj, t in targets.items():
            row[obj] = compare(g, t)["rel_error"]
        row["cosine"] = compare(g, seq)["cosine"]
        rows.append(row)
    return pd.DataFrame(rows)


def bias_sweep(
    space: exact.SequenceSpace,
    ref: torch.Tensor,
    distances: Sequence[float],
    impls: Mapping[str, Implementation] | None = None,
    *,
    seed: int = 0,
):
    r"""Bias of each implementation as the policy moves away from the reference along one direction.

    :func:`compare`'s :math:`\lVert g - g^\star\rVert/\lVert g^\star\rVert` against
    :math:`g^\star` of :eq:`eq-5-seq-gradient` at each distance: the curves of
    :numref:`fig-5-bias-sweep`.

    The policy is ``exact.perturb(ref, d, seed=seed)`` (logits ``ref + d z``). Returns a tidy
    ``pandas.DataFrame`` with columns ``distance``, ``kl`` (exact sequence ``KL(pi_theta || pi_ref)``),
    ``implementation``, ``rel_error``, ``cosine`` (against the sequence reverse-KL gradient).
    """
    import pandas as pd

    impls = IMPLEMENTATIONS if impls is None else impls
    rows = []
    for d in distances:
        if not float(d) > 0:
            raise ValueError(
                f"distances must be positive (at 0 the target gradient vanishes), got {d!r}"
            )
        policy = exact.perturb(ref, float(d), seed=seed)
        kl = float(exact.sequence_kl(space, policy, ref))
        target = exact.objective_gradient(space, policy, ref, "sequence reverse KL")
        for name, impl in impls.items():
            c = compare(expected_gradient(space, impl, policy, ref), target)
            rows.append(
                {
                    "distance": float(d),
                    "kl": kl,
                    "implementation": name,
                    "rel_error": c["rel_error"],
                    "cosine": c["cosine"],
                }
            )
    return pd.DataFrame(rows)


def tabular_logits(space: exact.SequenceSpace, probs: torch.Tensor) -> torch.Tensor:
    r"""Tabular logits ``[P, V]`` of the autoregressive policy whose sequence distribution is ``probs [N]``.

    .. math:: \mathrm{logits}[s, v] = \log\sum_{y \succ (s, v)} p(y), \qquad
        \pi(v\mid s) = \frac{e^{\mathrm{logits}[s, v]}}{\sum_{v'} e^{\mathrm{logits}[s, v']}}

    (:math:`y \succ (s, v)`: the sequences that extend prefix :math:`s` by :math:`v`); used for the
    optimum of :eq:`eq-1-objective` (:func:`optimal_logits`).

    ``logits[s, v] = log P(prefix s, then token v)`` (the conditionals ``pi(v | s)`` up to a per-row
    constant), from marginal sums over the sequences that extend each prefix. ``probs`` must be positive.

    Raises:
        ValueError: wrong shape, or a non-positive / non-finite probability.
    """
    p = probs.detach().to(torch.float64)
    if tuple(p.shape) != (space.num_sequences,):
        raise ValueError(f"probs must have shape ({space.num_sequences},), got {tuple(p.shape)}")
    if not bool(torch.isfinite(p).all()) or not bool((p > 0).all()):
        raise ValueError("probs must be finite and positive (every sequence needs probability > 0)")
    joint = torch.zeros(space.tabular_shape, dtype=torch.float64)
    flat = space.prefix * space.vocab + space.seqs  # [N, L] index into the flattened table
    joint.view(-1).index_add_(
        0, flat.reshape(-1), p.unsqueeze(1).expand(-1, space.length).reshape(-1)
    )
    return joint.log()


def optimal_logits(
    space: exact.SequenceSpace, ref: torch.Tensor, reward: torch.Tensor, beta: float
) -> torch.Tensor:
    r"""Tabular logits ``[P, V]`` of the optimum
    :math:`\pi^*(y) = \pi_{\mathrm{ref}}(y)\,e^{r(y)/\beta}/Z` of the
    sequence objective (:eq:`eq-1-objective`)."""
    if not float(beta) > 0:
        raise ValueError(f"beta must be positive, got {beta!r}")
    lp = exact.sequence_logp(space, ref).detach() + reward.detach().to(torch.float64) / float(beta)
    return tabular_logits(space, torch.softmax(lp, 0))


def train_exact(
    space: exact.SequenceSpace,
    theta0: torch.Tensor,
    ref: torch.Tensor,
    reward: torch.Tensor,
    impls: Mapping[str, Implementation],
    *,
    beta: float,
    steps: int,
    lr: float,
    every: int = 10,
):
    r"""Exact gradient descent on ``-E[r] + beta * (KL term of each implementation)``, from ``theta0``.

    .. math:: \theta_{k+1} = \theta_k - \eta\,\big(-\nabla_\theta\mathbb{E}[r] + \beta\,g_{\text{impl}}\big),
        \qquad J^\star = \beta\log\sum_y\pi_{\mathrm{ref}}(y)\,e^{r(y)/\beta}

    (:eq:`eq-1-objective`, :eq:`eq-1-gap`): the curves of :numref:`fig-5-training`.

    Each step uses the exact expected gradient (no sampling): ``-grad E[r] + beta * g_impl``. The
    exact regularized objective ``J = E[r] - beta KL(pi_theta || pi_ref)`` (sequence level) is logged
    every ``every`` steps with its optimum ``J* = beta log sum_y pi_ref(y) exp(r(y)/beta)``.

    Returns:
        tidy ``pandas.DataFrame``: ``step``, ``implementation``, ``reward`` (``E[r]``), ``kl``,
        ``objective`` (``J``), ``gap`` (``J* - J >= 0``).
    """
    import pandas as pd

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not float(beta) > 0 or not float(lr) > 0:
        raise ValueError(f"beta and lr must be positive, got beta={beta!r}, lr={lr!r}")
    r = reward.detach().to(torch.float64)
    if tuple(r.shape) != (space.num_sequences,):
        raise ValueError(f"reward must have shape ({space.num_sequences},), got {tuple(r.shape)}")
    lp_ref = exact.sequence_logp(space, ref).detach()
    best = float(beta) * float(torch.logsumexp(lp_ref + r / float(beta), 0))
    fr = reward_surrogate(r)
    rows = []
    for name, impl in impls.items():
        fi = implementation_surrogate(impl)

        def total(logp, logp_ref, logp_old, mask, fi=fi):  # one exact pass for reward and KL term
            return fr(logp, logp_ref, logp_old, mask) + float(beta) * fi(
                logp, logp_ref, logp_old, mask
            )

        theta = theta0.detach().clone().to(torch.float64)
        for step in range(steps + 1):
            if step % every == 0 or step == steps:
                lp = exact.sequence_logp(space, theta).detach()
                p = lp.exp()
                er, kl = float((p * r).sum()), float((p * (lp - lp_ref)).sum())
                j = er - float(beta) * kl
                rows.append(
                    {
                        "step": step,
                        "implementation": name,
                        "reward": er,
                        "kl": kl,
                        "objective": j,
                        "gap": best - j,
                    }
                )
            if step == steps:
                break
            theta = theta - float(lr) * exact.expected_gradient(space, total, theta, ref)
    return pd.DataFrame(rows)


def prefix_lengths(space: exact.SequenceSpace) -> torch.Tensor:
    r"""Length ``t`` of each prefix (row of tabular logits), ``LongTensor [P]``: the row is the policy
    at position ``t``.

    Row :math:`s_t` holds :math:`\pi(\cdot\mid s_t)`, the conditional whose log-ratio
    :math:`u_t` enters :eq:`eq-5-log-ratios`; :func:`position_errors` groups the rows by it.
    """
    t = torch.arange(space.length)
    counts = space.vocab**t
    return torch.repeat_interleave(t, counts)


def position_errors(space: exact.SequenceSpace, g: torch.Tensor, target: torch.Tensor):
    r"""Per position ``t``: ``|g_t - g*_t|`` and ``|g*_t|`` over the tabular rows of prefixes of length ``t``.

    .. math:: \mathrm{error}_t = \big\lVert g_t - g^\star_t\big\rVert, \qquad
        \mathrm{target\_norm}_t = \big\lVert g^\star_t\big\rVert

    over the rows of prefixes of length :math:`t-1`; the bars of :numref:`fig-5-positions`
    (:eq:`eq-5-future`: the missing :math:`G_{t+1}` term).

    ``g``, ``target``: ``[P, V]``. Returns a ``pandas.DataFrame`` with columns ``position`` (1-based,
    as in ``y_t``), ``error``, ``target_norm``.
    """
    import pandas as pd

    lengths = prefix_lengths(space)
    rows = []
    for t in range(space.length):
        rows_t = lengths == t
        rows.append(
            {
                "position": t + 1,
                "error": float((g[rows_t] - target[rows_t]).norm()),
                "target_norm": float(target[rows_t].norm()),
            }
        )
    return pd.DataFrame(rows)


def token_kl_under(
    space: exact.SequenceSpace, policy, ref, prefix_policy, direction: str = "reverse"
) -> torch.Tensor:
    r"""``sum_t E_{s_t ~ pi_w} KL_t`` with the prefix weights of another policy ``pi_w`` (held fixed).

    .. math:: \mathcal{T}_{\mathrm{rev}}(\theta;\theta') = \sum_{t=1}^{L}\mathbb{E}_{s_t\sim\pi_{\theta'}}
        \mathrm{KL}\big(\pi_\theta(\cdot\mid s_t)\,\|\,\pi_{\mathrm{ref}}(\cdot\mid s_t)\big)

    (:eq:`eq-5-tok-rkl`; the forward one :eq:`eq-5-tok-fkl`), :math:`\pi_{\theta'}` = ``prefix_policy``;
    with :math:`\pi_{\mathrm{old}}` it is :eq:`eq-6-token`.

    ``KL_t = KL(pi(.|s_t) || pi_ref(.|s_t))`` (reverse) or the forward one. With ``prefix_policy =
    policy`` this is :func:`klnotes.analysis.exact.token_kl`; with ``pi_old`` it is what per-token terms corrected
    by per-token ratios follow (chapter 6). Scalar, differentiable in ``policy``.
    """
    if direction not in exact.DIRECTIONS:
        raise ValueError(
            f"unknown KL direction {direction!r}; allowed: {', '.join(exact.DIRECTIONS)}"
        )
    a = exact.next_token_logp(space, policy)
    a_ref = exact.next_token_logp(space, ref, name="ref").detach()
    w = exact.sequence_probs(space, prefix_policy, name="prefix_policy").detach()
    if direction == "reverse":
        kl = (a.exp() * (a - a_ref)).sum(-1)
    else:
        kl = (a_ref.exp() * (a_ref - a)).sum(-1)
    return (w * kl.sum(-1)).sum()


# --- chapter 6: off-policy ---------------------------------------------------------------------

#: How a KL term handles samples from ``pi_old``: ``"none"`` (the surrogate as on-policy code writes
#: it, no ratio), ``"ratio"`` (the correction: ``sg(c(u_theta)) * rho``), ``"stale-ratio"`` (the
#: coefficient computed at rollout time, ``sg(c(u_old)) * rho``, as PPO's KL reward is).
CORRECTIONS: tuple[str, ...] = ("none", "ratio", "stale-ratio")
#: Levels of an off-policy KL term: one ratio per sequence, or per-token ratios with the token's own
#: coefficient, or per-token ratios with the reward-to-go of the coefficients.
OFF_LEVELS: tuple[str, ...] = ("sequence", "token", "token-rtg")


@dataclass(frozen=True)
class OffPolicyVariant:
    r"""A KL term evaluated on a batch sampled from ``pi_old`` (chapter 6, :eq:`eq-6-correction`).

    The loss (:func:`off_policy_surrogate`) is :math:`\beta\,\mathrm{sg}(c)\,\rho` or PPO's clipped
    head :math:`-\min\big(\rho A, \mathrm{clip}(\rho, 1-\epsilon, 1+\epsilon)A\big)`,
    :math:`A = -\beta\,\mathrm{sg}(c)` (:eq:`eq-6-clip`).

    Attributes:
        label: implementation label (``"k2 as loss"``, ...).
        correction: one of :data:`CORRECTIONS`.
        level: one of :data:`OFF_LEVELS`. ``"sequence"`` uses ``U`` and the sequence ratio
            ``prod_t rho_t``; ``"token"`` each token's own ``u_t`` and ``rho_t``; ``"token-rtg"`` the
            reward-to-go of the per-token coefficients with ``rho_t`` (PPO's per-token KL reward).
        clip_eps: PPO clip range of the KL head (``None``: unclipped). Only with a ratio.
        beta: KL coefficient.

    Raises:
        ValueError: unknown label, correction or level; ``clip_eps`` with ``correction="none"`` or
            outside (0, 1); ``"token-rtg"`` with ``"none"`` and an "as loss" label.
    """

    label: str
    correction: str = "ratio"
    level: str = "sequence"
    clip_eps: float | None = None
    beta: float = 1.0

    def __post_init__(self):
        _, style = coefficients.parse_implementation(self.label)
        if self.correction not in CORRECTIONS:
            raise ValueError(
                f"unknown correction {self.correction!r}; allowed: {', '.join(CORRECTIONS)}"
            )
        if self.level not in OFF_LEVELS:
            raise ValueError(f"unknown level {self.level!r}; allowed: {', '.join(OFF_LEVELS)}")
        if self.clip_eps is not None:
            if self.correction == "none":
                raise ValueError("clip_eps needs a ratio: use correction='ratio' or 'stale-ratio'")
            if not 0.0 < float(self.clip_eps) < 1.0:
                raise ValueError(f"clip_eps must be in (0, 1) or None, got {self.clip_eps!r}")
        beta = self.beta
        if (
            isinstance(beta, bool)
            or not isinstance(beta, numbers.Real)
            or not math.isfinite(beta)
            or beta < 0
        ):
            raise ValueError(f"OffPolicyVariant.beta must be a finite number >= 0, got {beta!r}")
        if self.level == "token-rtg" and self.correction == "none" and style != "in_reward":
            raise ValueError(
                f"level='token-rtg' without a ratio applies to 'in reward' labels only, got {self.label!r}"
            )

    @property
    def variant(self) -> variants.KLVariant:
        """The :class:`~klnotes.core.variants.KLVariant` of ``label`` at ``level`` with
        ``correction``."""
        v = variants.parse(self.label)
        return variants.KLVariant(v.estimator, v.placement, self.level, self.correction)


def _as_sequence(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, x, torch.zeros_like(x)).sum(-1)


def off_policy_surrogate(variant: OffPolicyVariant) -> SequenceSurrogate:
    r"""Per-sequence loss ``f(logp, logp_ref, logp_old, mask) -> [N]`` of an :class:`OffPolicyVariant`.

    .. math:: \ell = -\min\big(\rho A,\ \mathrm{clip}(\rho, 1-\epsilon, 1+\epsilon)\,A\big),
        \qquad A = -\beta\,\mathrm{sg}(c)

    (:eq:`eq-6-correction` unclipped, :eq:`eq-6-clip` clipped; a stale :math:`c` is :eq:`eq-6-stale`'s,
    the per-token ratio :eq:`eq-6-token`'s).

    With ``c`` the closed-form coefficient of the label at ``u_theta`` (``"ratio"``) or at
    ``u_old = logp_old - logp_ref`` (``"stale-ratio"``), the per-unit loss is
    ``-min(rho A, clip(rho, 1-eps, 1+eps) A)`` with ``A = -beta sg(c)`` (``beta sg(c) rho`` unclipped),
    a unit being the sequence (``U``, ``rho = prod_t rho_t``) or each token (``u_t``, ``rho_t``; with
    ``"token-rtg"`` the coefficient is ``sum_{s>=t} c(u_s)``). ``"none"`` is ``beta`` times the on-policy
    surrogate (:func:`klnotes.core.surrogates.kl_loss`) with no ratio.
    """
    if not isinstance(variant, OffPolicyVariant):
        raise TypeError(f"variant must be an OffPolicyVariant, got {type(variant).__name__}")
    v = variant

    def f(logp, logp_ref, logp_old, mask):
        m = surrogates.check_mask(mask, logp)
        if v.correction == "none":
            level = "token" if v.level == "token" else v.level
            out = surrogates.kl_loss(v.label, logp, logp_ref, m, level=level, reduction="none")
            return v.beta * (out if level == "sequence" else out.sum(-1))
        if v.level == "sequence":
            lp, lr, lo = (_as_sequence(x, m) for x in (logp, logp_ref, logp_old))
        else:
            lp, lr, lo = (
                torch.where(m, x, torch.zeros_like(x)) for x in (logp, logp_ref, logp_old)
            )
        if v.correction == "ratio" and v.level != "token-rtg":
            out = surrogates.off_policy_kl(v.label, lp, lr, lo, beta=v.beta, clip_eps=v.clip_eps)
        else:
            base = lp if v.correction == "ratio" else lo
            c = coefficients.coefficient(v.label, (base - lr).detach())
            if v.level == "token-rtg":
                c = surrogates.reward_to_go(c, m)
            rho = surrogates.importance_ratio(lp, lo)
            adv = -float(v.beta) * c
            out = (
                -rho * adv if v.clip_eps is None else surrogates.ppo_clip_loss(rho, adv, v.clip_eps)
            )
        return out if v.level == "sequence" else _as_sequence(out, m)

    f.__name__ = f"{v.label.replace(' ', '_')}__{v.correction}__{v.level}__{v.clip_eps}"
    return f


def clip_active(ratio: torch.Tensor, advantage: torch.Tensor, eps: float) -> torch.Tensor:
    r"""Where PPO's clip removes the gradient (:eq:`eq-6-clip`):
    :math:`(A > 0 \wedge \rho > 1+\epsilon) \vee (A < 0 \wedge \rho < 1-\epsilon)`. Bool, same
    shape."""
    return ((advantage > 0) & (ratio > 1.0 + eps)) | ((advantage < 0) & (ratio < 1.0 - eps))


def active_clip_mass(
    variant: OffPolicyVariant,
    logp: torch.Tensor,
    logp_ref: torch.Tensor,
    logp_old: torch.Tensor,
    weight: torch.Tensor,
) -> float:
    r"""Share of ``variant``'s units that PPO's clip actively removes (:func:`clip_active`), weighted.

    .. math:: \sum_y \pi_{\mathrm{old}}(y)\,\mathbb{1}\big[(A > 0 \wedge \rho > 1+\epsilon) \vee
        (A < 0 \wedge \rho < 1-\epsilon)\big]

    per unit, :math:`A = -\beta c` (:eq:`eq-6-clip`); the top panel of :numref:`fig-6-clipping`.

    ``logp``, ``logp_ref``, ``logp_old``: ``[N, L]`` token log-probabilities of every sequence under
    ``pi_theta``, ``pi_ref``, ``pi_old``; ``weight``: ``[N]`` sampling probabilities (``pi_old(y)``).
    A unit is the sequence (level ``"sequence"``) or a token (averaged over the ``L`` positions);
    it is actively clipped when its ratio is outside ``[1-eps, 1+eps]`` *on the side the head pushes*
    (``A = -beta c > 0`` and ``rho > 1+eps``, or ``A < 0`` and ``rho < 1-eps``). Zero without clipping.
    By chapter 6's clipping theorem the clipped head is exact when this is zero.
    """
    v = variant
    if v.clip_eps is None:
        return 0.0
    lp, lr, lo = (x.detach().to(torch.float64) for x in (logp, logp_ref, logp_old))
    if v.level == "sequence":
        lp, lr, lo = lp.sum(-1), lr.sum(-1), lo.sum(-1)
    c = coefficients.coefficient(v.label, (lp if v.correction == "ratio" else lo) - lr)
    if v.level == "token-rtg":
        c = surrogates.reward_to_go(c, torch.ones_like(c, dtype=torch.bool))
    active = clip_active(torch.exp(lp - lo), -float(v.beta) * c, float(v.clip_eps)).to(
        torch.float64
    )
    if active.dim() == 2:
        active = active.mean(-1)
    return float((weight.detach().to(torch.float64) * active).sum())


def clipped_surrogate_reference(label: str, eps: float, beta: float = 1.0) -> SequenceSurrogate:
    r"""Sequence-level reference for the clipped KL head (:eq:`eq-6-clip`):
    :math:`\beta\,\mathrm{sg}(c\,\mathbb{1}[\text{not clipped}])\,\rho`, ``[N]``.

    Its gradient is the unclipped corrected gradient with the clipped samples removed; chapter 6
    checks that it equals :func:`off_policy_surrogate` with ``clip_eps=eps`` exactly.
    """

    def f(logp, logp_ref, logp_old, mask):
        m = surrogates.check_mask(mask, logp)
        lp, lr, lo = (_as_sequence(x, m) for x in (logp, logp_ref, logp_old))
        c = coefficients.coefficient(label, (lp - lr).detach())
        rho = surrogates.importance_ratio(lp, lo)
        keep = ~clip_active(rho.detach(), -beta * c, eps)
        return beta * torch.where(keep, c, torch.zeros_like(c)) * rho

    return f


def reward_surrogate(
    reward: torch.Tensor, *, ratio: bool = False, clip_eps: float | None = None
) -> SequenceSurrogate:
    r"""Policy-gradient loss of a sequence reward ``r [N]`` (used as its own advantage), ``[N]``.

    .. math:: \ell = -\mathrm{sg}(r)\log\pi_\theta(y), \qquad -\mathrm{sg}(r)\,\rho, \qquad
        -\min\big(\rho r,\ \mathrm{clip}(\rho, 1-\epsilon, 1+\epsilon)\,r\big)

    the reward part :math:`A_r = r` of :eq:`eq-6-combined`.

    ``ratio=False``: ``-sg(r) log pi(y)`` (on-policy REINFORCE); ``ratio=True``: ``-sg(r) rho`` with the
    sequence ratio, or PPO's ``-min(rho r, clip(rho, 1-eps, 1+eps) r)`` when ``clip_eps`` is given.
    """
    r = reward.detach().to(torch.float64)
    if clip_eps is not None and not ratio:
        raise ValueError("clip_eps needs ratio=True")

    def f(logp, logp_ref, logp_old, mask):
        m = surrogates.check_mask(mask, logp)
        lp = _as_sequence(logp, m)
        if not ratio:
            return -r * lp
        rho = surrogates.importance_ratio(lp, _as_sequence(logp_old, m))
        return -r * rho if clip_eps is None else surrogates.ppo_clip_loss(rho, r, clip_eps)

    return f


def combined_surrogate(
    label: str, reward: torch.Tensor, *, beta: float, clip_eps: float | None = None
) -> SequenceSurrogate:
    r"""Sequence-level combined head (:eq:`eq-6-combined`): one PPO head with advantage
    :math:`A = r - \beta\,\mathrm{sg}(c)`, ``[N]``.

    :func:`klnotes.core.surrogates.off_policy_kl` with ``advantage=r``; unclipped, its expected gradient on
    ``pi_old``'s samples is the on-policy gradient of ``-E[r] + beta * (KL term)``.
    """
    r = reward.detach().to(torch.float64)
    coefficients.parse_implementation(label)

    def f(logp, logp_ref, logp_old, mask):
        m = surrogates.check_mask(mask, logp)
        lp, lr, lo = (_as_sequence(x, m) for x in (logp, logp_ref, logp_old))
        return surrogates.off_policy_kl(
            label, lp, lr, lo, beta=beta, clip_eps=clip_eps, advantage=r
        )

    return f


def simulate_updates(
    space: exact.SequenceSpace,
    theta_old: torch.Tensor,
    ref: torch.Tensor,
    reward: torch.Tensor,
    variants: Mapping[str, OffPolicyVariant],
    *,
    updates: int,
    lr: float,
    beta: float = 0.1,
    clip_eps: float = 0.2,
):
    r"""``updates`` gradient steps from ``pi_old`` on one batch, and each variant's exact off-policy bias.

    .. math:: \mathrm{rel\_error}_k = \frac{\lVert g_{\mathrm{off}}(\theta_k) - g_{\mathrm{on}}(\theta_k)\rVert}
        {\lVert g_{\mathrm{on}}(\theta_k)\rVert}

    with :math:`g_{\mathrm{off}}` the expected gradient under :math:`\pi_{\mathrm{old}}`
    (:eq:`eq-6-naive`, :eq:`eq-6-correction`): the curves of :numref:`fig-6-update-bias`,
    :numref:`fig-6-update-bias-tokens` and :numref:`fig-6-clipping`.

    The policy follows exact gradient descent on ``-E[r] + beta KL(pi_theta || pi_ref)`` (the ideal
    update: what an unbiased, unclipped implementation would do), starting at ``theta_old``. After
    ``k = 0..updates`` steps each variant's expected gradient on ``pi_old``'s samples is compared with
    its own on-policy expected gradient at ``theta_k`` (the gradient the code would follow with fresh
    samples): ``rel_error = |g_off - g_on| / |g_on|``.

    Returns:
        ``(frame, thetas)``: a tidy ``pandas.DataFrame`` with columns ``update``, ``variant``,
        ``rel_error``, ``cosine``, ``kl_to_old`` (exact ``KL(pi_theta || pi_old)``), ``clipped_mass``
        (``pi_old``-probability of sequences whose ratio is outside ``[1-clip_eps, 1+clip_eps]``, on
        either side), ``active_clipped_mass`` (the variant's units the clip actively removes, on the
        side its head pushes: :func:`active_clip_mass`; 0 for unclipped variants); and the list of
        logits ``theta_0..theta_updates``.
    """
    import pandas as pd

    if isinstance(updates, bool) or not isinstance(updates, int) or updates < 0:
        raise ValueError(f"updates must be a non-negative integer, got {updates!r}")
    if not float(lr) > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    r = reward.detach().to(torch.float64)
    if tuple(r.shape) != (space.num_sequences,):
        raise ValueError(f"reward must have shape ({space.num_sequences},), got {tuple(r.shape)}")
    fr = reward_surrogate(r)
    p_old = exact.sequence_probs(space, theta_old).detach()
    lp_old = exact.sequence_logp(space, theta_old).detach()
    theta = theta_old.detach().clone().to(torch.float64)
    thetas, rows = [theta.clone()], []
    for k in range(updates + 1):
        lp = exact.sequence_logp(space, theta).detach()
        kl_old = float((lp.exp() * (lp - lp_old)).sum())
        log_ratio = lp - lp_old
        clipped = float(p_old[(log_ratio.exp() - 1.0).abs() > clip_eps].sum())
        tok = (
            exact.token_logp(space, theta),
            exact.token_logp(space, ref),
            exact.token_logp(space, theta_old),
        )
        for name, var in variants.items():
            f = off_policy_surrogate(var)
            g_on = exact.expected_gradient(space, f, theta, ref)
            g_off = exact.expected_gradient(space, f, theta, ref, behaviour=theta_old)
            c = compare(g_off, g_on)
            rows.append(
                {
                    "update": k,
                    "variant": name,
                    "rel_error": c["rel_error"],
                    "cosine": c["cosine"],
                    "kl_to_old": kl_old,
                    "clipped_mass": clipped,
                    "active_clipped_mass": active_clip_mass(var, *tok, p_old),
                }
            )
        if k == updates:
            break
        g = exact.expected_gradient(space, fr, theta, ref) + beta * exact.objective_gradient(
            space, theta, ref, "sequence reverse KL"
        )
        theta = theta - float(lr) * g
        thetas.append(theta.clone())
    return pd.DataFrame(rows), thetas
