"""Group- and batch-normalized advantages with the KL in the reward, modelled exactly (chapter 9).

With the KL in the reward, each token's reward is ``r_t = score_t - beta * u_t`` with
``u_t = log pi_old(y_t | y_<t) - log pi_ref(y_t | y_<t)`` (k1, computed at rollout; on-policy
``pi_old = pi_theta``). An advantage estimator maps the rewards of a group of ``G`` samples of the
same prompt to advantages ``A_{i,t}``; the policy-gradient step is
``g = E[(1/G) sum_i sum_t A_{i,t} grad log pi(y_{i,t} | y_{i,<t})]``.

- A *sequence sum* or *reward-to-go* credit with no baseline, or with a baseline that does not
  depend on the sample (RLOO's leave-one-out mean, ReMax's greedy reward, a critic), gives
  ``g_KL = -beta grad KL(pi_theta || pi_ref)``: the sequence reverse KL, scale 1.
- Centring by the group mean *including the sample* (GRPO without std, Dr. GRPO, OPO at equal
  lengths, GPG, the REINFORCE++ baseline) scales it by exactly ``1 - 1/G``:
  ``E[(R_i - mean_j R_j) grad log pi(y_i)] = (1 - 1/G) E[R_i grad log pi(y_i)]``.
- Division by the group's standard deviation (verl ``norm_adv_by_std_in_grpo=True``, OpenRLHF
  ``group_norm`` of the task reward) multiplies each group by its own random factor, which depends
  on
  the KL values themselves: the result is no constant multiple of any objective's gradient.
- Whitening over the batch (verl REINFORCE++, GAE; OpenRLHF ``gae``/``reinforce``/
  ``reinforce_baseline``) divides the whole batch by one factor shared by the task and the KL terms
  (a step-size change) and subtracts a batch mean that includes the sample: exact only as the batch
  grows.

:func:`kl_gradient` computes ``g_KL = g(score - beta * KL) - g(score)`` exactly, by enumerating
every
group of ``G`` sequences of the length-3 problem of
:func:`klnotes.frameworks.analysis.sequence_problem` (``27^G`` groups), and compares it with
``-beta grad KL_seq``. :data:`ESTIMATORS` lists each framework's estimators with the file and line
read; :func:`relation` is what ``klnotes audit`` reports.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import torch

from klnotes.analysis import exact
from klnotes.frameworks.problems import sequence_problem

__all__ = [
    "GroupedEstimator",
    "ESTIMATORS",
    "GroupedGradient",
    "kl_gradient",
    "relation",
    "estimator",
    "MAX_GROUP",
    "task_score",
]

#: Largest group enumerated exactly (``27^4 = 531441`` groups).
MAX_GROUP = 4

Advantage = Callable[
    [torch.Tensor], torch.Tensor
]  # token rewards [M, G, L] -> advantages [M, G, L]


def _seq(rewards: torch.Tensor) -> torch.Tensor:
    """``[M, G, L] -> [M, G]``: each sample's summed reward."""
    return rewards.sum(-1)


def _broadcast(seq_adv: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    return seq_adv.unsqueeze(-1).expand_as(rewards)


def _rtg(rewards: torch.Tensor) -> torch.Tensor:
    """Reward-to-go ``sum_{s >= t} r_s`` (gamma = 1) over the last axis."""
    return rewards.flip(-1).cumsum(-1).flip(-1)


def _whiten(adv: torch.Tensor, unbiased: bool, eps: float) -> torch.Tensor:
    """Whiten over every token of the batch (one group = the batch): ``(A - mean) / sqrt(var +
    eps)``."""
    flat = adv.flatten(1)
    mean = flat.mean(-1)
    var = flat.var(-1, correction=1 if unbiased else 0)
    shape = (-1,) + (1,) * (adv.dim() - 1)
    return (adv - mean.view(shape)) / torch.sqrt(var + eps).view(shape)


def _centred(rewards):
    s = _seq(rewards)
    return _broadcast(s - s.mean(-1, keepdim=True), rewards)


def _grpo_std(rewards, eps: float = 1e-6):
    s = _seq(rewards)
    return _broadcast((s - s.mean(-1, keepdim=True)) / (s.std(-1, keepdim=True) + eps), rewards)


def _rloo(rewards):
    s = _seq(rewards)
    g = s.shape[-1]
    return _broadcast((s - s.mean(-1, keepdim=True)) * g / (g - 1), rewards)


def _passk(rewards, norm: bool, eps: float = 1e-6):
    s = _seq(rewards)
    top = torch.topk(s, 2, dim=-1)
    adv = torch.zeros_like(s)
    gap = top.values[..., 0] - top.values[..., 1]
    if norm:
        gap = gap / (s.std(-1) + eps)
    adv.scatter_(-1, top.indices[..., :1], gap.unsqueeze(-1))
    return _broadcast(adv, rewards)


def _verl_whitened_rtg(rewards):
    return _whiten(_rtg(rewards), unbiased=True, eps=1e-8)


def _verl_rpp_baseline(rewards):
    return _whiten(_centred(rewards), unbiased=True, eps=1e-8)


def _openrlhf_whitened(rewards):
    # OpenRLHF: mean and var over all action tokens (divided by their number),
    # rsqrt(var.clamp(1e-8))
    flat = _rtg(rewards).flatten(1)
    mean = flat.mean(-1)
    var = ((flat - mean[:, None]) ** 2).mean(-1).clamp(min=1e-8)
    return (_rtg(rewards) - mean[:, None, None]) * var.rsqrt()[:, None, None]


@dataclass(frozen=True)
class GroupedEstimator:
    r"""One advantage estimator as it treats a KL in the reward.

    The advantage estimators of :doc:`chapter 9 </book/09_in_practice>`'s "Group-normalized advantages
    with the KL in the reward, exactly", with the KL reward :math:`-\beta u_t` of :eq:`eq-1-ppo`.

    Attributes:
        framework, name: e.g. ``"verl"``, ``"grpo"`` (plus a variant such as
        ``"norm_adv_by_std_in_grpo=False"``).
        credit: ``"sequence sum"`` or ``"reward-to-go"``.
        treatment: centring and scaling, plain text.
        kl_in_statistic: the KL enters the group/batch statistics (``False``: OpenRLHF adds the KL
            after the group baseline; GDPO rebuilds the advantage from the reward components).
        source: file and line read (commit in :data:`klnotes.frameworks.SOURCES`).
        advantage: token rewards ``[M, G, L]`` -> advantages ``[M, G, L]`` (``None``: not modelled).
        note: what the audit states next to the verdict.
    """

    framework: str
    name: str
    credit: str
    treatment: str
    kl_in_statistic: bool
    source: str
    advantage: Advantage | None = field(default=None, compare=False, repr=False)
    note: str = ""


_CA = "verl/trainer/ppo/core_algos.py"
_OR = "openrlhf/trainer/ppo_utils/experience_maker.py"

#: Every advantage estimator of verl v0.9.0 (``core_algos`` registry) and OpenRLHF v0.11.0, keyed
#: ``(framework, name)``; verl's GRPO family also keyed with ``"<name>:nostd"``.
ESTIMATORS: dict[tuple[str, str], GroupedEstimator] = {
    (e.framework, e.name): e
    for e in (
        GroupedEstimator(
            "verl",
            "gae",
            "reward-to-go",
            "critic baseline (taken as 0), then whitened over the batch",
            True,
            f"{_CA}:216-262 (masked_whiten at :262)",
            _verl_whitened_rtg,
        ),
        GroupedEstimator(
            "verl",
            "grpo",
            "sequence sum",
            "group mean, divided by the group std + 1e-6",
            True,
            f"{_CA}:326 (norm_adv_by_std_in_grpo=True, the default)",
            _grpo_std,
        ),
        GroupedEstimator(
            "verl",
            "grpo:nostd",
            "sequence sum",
            "group mean subtracted (norm_adv_by_std_in_grpo=False)",
            True,
            f"{_CA}:328",
            _centred,
        ),
        GroupedEstimator(
            "verl",
            "grpo_vectorized",
            "sequence sum",
            "group mean, divided by the group std + 1e-6 "
            "(always: ray_trainer passes no norm_adv_by_std_in_grpo to it)",
            True,
            f"{_CA}:354; verl/trainer/ppo/ray_trainer.py:262-279",
            _grpo_std,
        ),
        GroupedEstimator(
            "verl",
            "gdpo",
            "sequence sum",
            "each reward component normalized per group, then "
            "whitened; the components come from the reward function, not token_level_rewards",
            False,
            f"{_CA}:429 (components), :440 (token_level_rewards only without them)",
            None,
            "the KL in the reward does not reach the advantage (GDPO rebuilds it from the reward "
            "components named by algorithm.gdpo_reward_keys)",
        ),
        GroupedEstimator(
            "verl",
            "grpo_passk",
            "sequence sum",
            "only the group's best sample: r_max - r_second, divided by the group std",
            True,
            f"{_CA}:523-526",
            lambda r: _passk(r, True),
        ),
        GroupedEstimator(
            "verl",
            "grpo_passk:nostd",
            "sequence sum",
            "only the group's best sample: r_max - r_second",
            True,
            f"{_CA}:523",
            lambda r: _passk(r, False),
        ),
        GroupedEstimator(
            "verl",
            "reinforce_plus_plus_baseline",
            "sequence sum",
            "group mean subtracted, then whitened over the batch",
            True,
            f"{_CA}:581-582",
            _verl_rpp_baseline,
        ),
        GroupedEstimator(
            "verl",
            "rloo",
            "sequence sum",
            "leave-one-out mean: G/(G-1) (R_i - mean)",
            True,
            f"{_CA}:631",
            _rloo,
        ),
        GroupedEstimator(
            "verl",
            "rloo_vectorized",
            "sequence sum",
            "leave-one-out mean",
            True,
            f"{_CA}:863",
            _rloo,
        ),
        GroupedEstimator(
            "verl",
            "opo",
            "sequence sum",
            "length-weighted group mean (the plain mean at equal lengths)",
            True,
            f"{_CA}:683",
            _centred,
            "modelled at equal lengths; unequal lengths weight the baseline by length",
        ),
        GroupedEstimator(
            "verl",
            "reinforce_plus_plus",
            "reward-to-go",
            "whitened over the batch",
            True,
            f"{_CA}:728",
            _verl_whitened_rtg,
        ),
        GroupedEstimator(
            "verl",
            "remax",
            "reward-to-go",
            "minus the greedy sample's reward (independent of the sample)",
            True,
            f"{_CA}:765",
            _rtg,
        ),
        GroupedEstimator(
            "verl",
            "gpg",
            "sequence sum",
            "alpha (R_i - mean) / f_norm, alpha = batch / nonzero "
            "scores (1 when no score is exactly 0), f_norm = 1",
            True,
            f"{_CA}:811-826",
            _centred,
        ),
        GroupedEstimator(
            "verl",
            "optimal_token_baseline",
            "reward-to-go",
            "per-step baseline sum_j G_t W_t / sum_j W_t over the group (includes the sample)",
            True,
            f"{_CA}:967",
            None,
            "not modelled exactly: its weights W_t need sum_pi_squared from the actor",
        ),
        GroupedEstimator(
            "verl",
            "tir_optimal_token_baseline",
            "reward-to-go",
            "multi-turn optimal token baseline",
            True,
            f"{_CA}:991",
            None,
            "not modelled exactly: multi-turn tool-use baseline",
        ),
        GroupedEstimator(
            "trl",
            "rloo",
            "sequence sum",
            "leave-one-out baseline over the group",
            True,
            "trl/trainer/rloo_trainer.py:1669-1690 (trl 1.16.0)",
            _rloo,
        ),
        GroupedEstimator(
            "trl",
            "rloo:whiten",
            "sequence sum",
            "leave-one-out baseline, then whitened over the batch (normalize_advantages=True)",
            True,
            "trl/trainer/rloo_trainer.py:1695-1696 (trl 1.16.0)",
            lambda r: _whiten(_rloo(r), unbiased=True, eps=1e-8),
        ),
        GroupedEstimator(
            "trl",
            "ppo",
            "reward-to-go",
            "GAE with lam = 1 (critic taken as 0), advantages whitened",
            True,
            "trl/trainer/ppo_trainer.py:511-534 (v0.19.0)",
            _verl_whitened_rtg,
        ),
        GroupedEstimator(
            "trl",
            "ppo:gae",
            "GAE",
            "GAE with lam < 1 and a critic",
            True,
            "trl/trainer/ppo_trainer.py:524-534 (v0.19.0)",
            None,
            "not modelled: GAE with lam < 1 credits each token with a critic-dependent mix of "
            "future "
            "rewards (TRL's default lam is 0.95); set lam=1.0 for the reward-to-go",
        ),
        GroupedEstimator(
            "openrlhf",
            "gae",
            "reward-to-go",
            "critic (taken as 0); advantages whitened over the batch",
            True,
            f"{_OR}:315-328",
            _openrlhf_whitened,
        ),
        GroupedEstimator(
            "openrlhf",
            "reinforce",
            "reward-to-go",
            "whitened over the batch",
            True,
            f"{_OR}:315-328",
            _openrlhf_whitened,
        ),
        GroupedEstimator(
            "openrlhf",
            "reinforce_baseline",
            "reward-to-go",
            "task reward centred by the group mean before the KL is added; whitened over the batch",
            True,
            f"{_OR}:267-268, 315-328",
            _openrlhf_whitened,
        ),
        GroupedEstimator(
            "openrlhf",
            "rloo",
            "reward-to-go",
            "leave-one-out baseline on the task reward only; the KL "
            "is added afterwards (compute_reward)",
            False,
            f"{_OR}:264-266, 276",
            _rtg,
        ),
        GroupedEstimator(
            "openrlhf",
            "group_norm",
            "reward-to-go",
            "task reward normalized per group before the KL is added",
            False,
            f"{_OR}:269-270, 276",
            _rtg,
        ),
        GroupedEstimator(
            "openrlhf",
            "dr_grpo",
            "reward-to-go",
            "task reward centred per group before the KL is added",
            False,
            f"{_OR}:267-268, 276",
            _rtg,
        ),
    )
}


def estimator(framework: str, name: str, norm_by_std: bool = True) -> GroupedEstimator:
    """The :class:`GroupedEstimator` of ``framework``'s ``name`` (verl's ``grpo``/``grpo_passk``
    with
    ``norm_by_std=False`` give their ``norm_adv_by_std_in_grpo=False`` variants).

    The estimators of :doc:`chapter 9 </book/09_in_practice>`'s "Group-normalized advantages with the
    KL in the reward, exactly"; no formula of its own (:class:`GroupedEstimator`).

    Raises:
        ValueError: unknown pair; the message lists the known names of that framework.
    """
    key = (
        framework,
        name + ("" if norm_by_std or name not in ("grpo", "grpo_passk") else ":nostd"),
    )
    if key not in ESTIMATORS:
        known = sorted({n.split(":")[0] for f, n in ESTIMATORS if f == framework})
        raise ValueError(
            f"{framework}: advantage estimator {name!r} is not known; known: {', '.join(known)}"
        )
    return ESTIMATORS[key]


@lru_cache(maxsize=4)
def task_score(seed: int = 3) -> torch.Tensor:
    """A 0/1 task score for each of the 27 sequences of the length-3 problem (Bernoulli(1/2) from
    ``seed``)."""
    pol = sequence_problem()[0]
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(pol.num_sequences, generator=gen, dtype=torch.float64) < 0.5).to(
        torch.float64
    )


@lru_cache(maxsize=4)
def _groups(n: int, g: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(n), repeat=g)), dtype=torch.long)  # [n^g, g]


def _policy_gradient(
    est: GroupedEstimator, g: int, rewards: torch.Tensor, theta, probs
) -> torch.Tensor:
    """Exact ``E[(1/G) sum_i sum_t A_{i,t} grad log pi(y_{i,t} | y_{i,<t})]`` for token rewards
    ``[N, L]``."""
    pol = sequence_problem()[0]
    idx = _groups(pol.num_sequences, g)  # [M, G]
    weight = probs[idx].prod(-1)  # [M]
    adv = est.advantage(rewards[idx])  # [M, G, L]
    w = torch.zeros_like(rewards)  # [N, L]: sum over groups and positions holding sequence y
    w.index_add_(0, idx.flatten(), (weight[:, None, None] * adv).flatten(0, 1) / g)
    leaf = theta.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((w * exact.token_logp(pol, leaf)).sum(), leaf)
    return grad


@dataclass(frozen=True)
class GroupedGradient:
    r"""What :func:`kl_gradient` found: ``scale = <g_KL, t> / <t, t>`` against ``t = -beta grad
    KL_seq``,
    ``residual = |g_KL - scale t| / |g_KL|`` and ``cosine``; zero residual means a constant
    multiple.

    .. math:: \text{scale} = \frac{\langle g_{\mathrm{KL}}, t\rangle}{\langle t, t\rangle}, \qquad
        \text{residual} = \frac{\lVert g_{\mathrm{KL}} - \text{scale}\,t\rVert}{\lVert g_{\mathrm{KL}}\rVert},
        \qquad t = -\beta\,\nabla_\theta\mathrm{KL}(\pi_\theta\,\|\,\pi_{\mathrm{ref}})

    with the sequence KL of :eq:`eq-5-seq-rkl`.
    """

    framework: str
    name: str
    group: int
    beta: float
    with_task: bool
    scale: float
    residual: float
    cosine: float


def kl_gradient(
    est: GroupedEstimator, group: int, beta: float = 0.1, with_task: bool = True
) -> GroupedGradient:
    r"""Exact gradient the estimator gives the KL term on the length-3 problem, groups of ``group``.

    .. math:: g_{\mathrm{KL}} = g(\text{score} - \beta u) - g(\text{score}), \qquad
        t = -\beta\,\nabla_\theta\,\mathrm{KL}(\pi_\theta\,\|\,\pi_{\mathrm{ref}})

    (:eq:`eq-5-seq-gradient`; :doc:`chapter 9 </book/09_in_practice>`).

    ``g_KL = g(score - beta u) - g(score)`` (``score`` = :func:`task_score` on the last token when
    ``with_task``, else 0), each ``g`` the exact expectation over all ``27^G`` groups; compared with
    ``t = -beta grad_theta KL(pi_theta || pi_ref)`` (the sequence reverse KL,
    :func:`klnotes.analysis.exact.objective_gradient`).

    Raises:
        ValueError: ``group`` not in ``2..MAX_GROUP``, ``beta`` not finite and > 0, or an estimator
            that is not modelled (its ``note`` says why).
    """
    if est.advantage is None:
        raise ValueError(f"{est.framework} {est.name}: {est.note or 'not modelled'}")
    if isinstance(group, bool) or not isinstance(group, int) or not 2 <= group <= MAX_GROUP:
        raise ValueError(
            f"group={group!r} must be an integer in 2..{MAX_GROUP} (27^G groups are enumerated)"
        )
    if not (isinstance(beta, (int, float)) and 0 < beta < float("inf")):
        raise ValueError(f"beta={beta!r} must be a finite number > 0")
    pol, theta, ref, targets = sequence_problem()
    probs = exact.sequence_probs(pol, theta).detach()
    u = (exact.token_logp(pol, theta) - exact.token_logp(pol, ref)).detach()  # [N, L]
    score = torch.zeros_like(u)
    if with_task:
        score[:, -1] = task_score()
    g_with = _policy_gradient(est, group, score - beta * u, theta, probs)
    g_without = (
        _policy_gradient(est, group, score, theta, probs) if with_task else torch.zeros_like(g_with)
    )
    g_kl = g_with - g_without
    t = -beta * targets["sequence reverse KL"]
    scale = float((g_kl * t).sum() / (t * t).sum())
    norm = float(g_kl.norm())
    residual = float((g_kl - scale * t).norm()) / norm if norm > 0 else 0.0
    cosine = float((g_kl * t).sum()) / (norm * float(t.norm())) if norm > 0 else 0.0
    return GroupedGradient(
        est.framework, est.name, group, float(beta), with_task, scale, residual, cosine
    )


def relation(est: GroupedEstimator, group: int | None = None, tol: float = 1e-9) -> str:
    r"""What the estimator makes of a KL in the reward, in words, checked exactly on groups of 2..4
    (with and
    without a task score, beta 0.1 and 0.01) unless it is not modelled; ``group`` (the user's
    samples per
    prompt) is quoted in the ``1 - 1/G`` factor when given.

    For a centring estimator the relation is :math:`g_{\mathrm{KL}} = (1 - 1/G)\,t`, :math:`t` the
    reverse-KL gradient of :eq:`eq-5-seq-gradient` times :math:`-\beta`
    (:doc:`chapter 9 </book/09_in_practice>`).
    """
    if est.advantage is None:
        if not est.kl_in_statistic:
            return f"no KL term reaches the gradient: {est.note}"
        return est.note if est.note.startswith("not modelled") else f"not modelled: {est.note}"
    checks = [
        kl_gradient(est, g, b, task) for g in (2, 3) for b in (0.1, 0.01) for task in (True, False)
    ]
    exact_multiple = all(c.residual <= tol for c in checks)
    if exact_multiple:
        ones = all(abs(c.scale - 1) <= 1e-9 for c in checks)
        centred = all(abs(c.scale - (1 - 1 / c.group)) <= 1e-9 for c in checks)
        if ones:
            return "sequence reverse KL (scale 1)"
        if centred:
            g = f"G = {group}: {1 - 1 / group:.3g}" if group else "G samples per prompt"
            return (
                f"sequence reverse KL scaled by 1 - 1/G ({g}): the group mean includes the sample"
            )
    worst = max(c.residual for c in checks)
    if "whiten" in est.treatment and "std" not in est.treatment:
        centred = (
            " after the group centring's 1 - 1/G"
            if est.name == "reinforce_plus_plus_baseline"
            else ""
        )
        return (
            f"sequence reverse KL{centred} only as the batch grows: batch whitening divides task "
            f"and KL by one shared "
            f"factor and subtracts a batch mean that includes the sample (off a constant multiple "
            f"by up "
            f"to {worst:.2g} at G = 2..3)"
        )
    return (
        f"no constant multiple of any objective: {est.treatment} rescales each group by a factor "
        f"that depends "
        f"on its own rewards, KL included (off the sequence reverse KL direction by up to "
        f"{worst:.2g}; "
        f"the scale changes with beta)"
    )
