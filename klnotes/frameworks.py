"""What verl, OpenRLHF and TRL compute for each of their KL options, audited (chapter 9).

Each option is *data*: the framework, the version or commit its code was read from, the flag
values, the per-token formula (replicated as a torch function, clamps included), what receives
the gradient, how the term is credited and aggregated, and whether the ratio
``pi_theta / pi_old`` touches it. Everything else is *computed* from that data:

- the gradient coefficient, with :func:`klnotes.coefficients.from_surrogate` (single token,
  on-policy), named by matching the closed forms of chapter 3 on ``|u| <= 2``, and where clamps
  change it (``u = log pi_theta - log pi_ref``);
- which objective the option follows on-policy, by exact float64 enumeration of a tiny
  autoregressive policy (vocabulary 3, length 3): its expected gradient is compared with the
  gradients of the sequence reverse KL, the per-token (partial) reverse KL, the sequence forward
  KL, the per-position forward KL, or nothing;
- whether it stays unbiased off-policy, by exact enumeration of the same length-3 policy sampled
  from a slightly older ``pi_old`` (ratios inside the clip range, so clipping plays no part): at
  sequence level, and per token given the prefix.

:func:`audit` returns one :class:`Audit`; :func:`table` renders every audited option as a
``pandas.DataFrame``. :data:`SOURCES` lists the files (repository, path, commit or version) each
formula was read from.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Callable

import torch

from klnotes import exact
from klnotes.surrogates import reward_to_go

__all__ = [
    "Source",
    "SOURCES",
    "KLOption",
    "Audit",
    "FRAMEWORKS",
    "OBJECTIVES",
    "option",
    "audit",
    "table",
    "flag_space",
    "principled_options",
    "off_policy_error",
    "COVERS",
    "OPENRLHF_FLAG_ALIASES",
    "error_to_objective",
    "drift_table",
    "coefficient",
    "expected_gradient",
    "objective_gradients",
    "sequence_problem",
    "single_step_problem",
    "off_policy_problem",
    "off_policy_prefix_error",
    "with_sequence_ratio",
]

#: Objectives an option's on-policy expected gradient can follow (see :func:`classify_objective`).
OBJECTIVES: tuple[str, ...] = (
    "sequence reverse KL",
    "per-token reverse KL",
    "sequence forward KL",
    "per-token forward KL",
    "nothing",
)
OTHER = "none of these"


@dataclass(frozen=True)
class Source:
    """A file a formula was read from: ``repo`` (GitHub owner/name or ``pypi:<name>``), ``path``,
    ``ref`` (full commit hash, or package version) and ``what`` it shows."""

    repo: str
    path: str
    ref: str
    what: str

    @property
    def url(self) -> str:
        if self.repo.startswith("pypi:"):
            name = self.repo.split(":", 1)[1]
            return f"https://pypi.org/project/{name}/{self.ref}/ ({self.path})"
        return f"https://github.com/{self.repo}/blob/{self.ref}/{self.path}"


#: Where each formula was read. verl and OpenRLHF need GPU stacks, so their code was read, not
#: run: these are the exact files, at release tags whose commits are on the projects' main
#: branches (``what`` names the release). TRL is installed and its code is run by the tests.
SOURCES: dict[str, tuple[Source, ...]] = {
    "verl": (
        Source("verl-project/verl", "verl/trainer/ppo/core_algos.py", "483b8a009ba3a97563edee3a19887e4862b8094a",
               "v0.9.0: kl_penalty / kl_penalty_forward: k1, abs, k2, k3 (clamps), '+' straight-through"),
        Source("verl-project/verl", "verl/trainer/ppo/core_algos.py", "7e80ab0cf8ca7ba119414179f39d9f5794931b37",
               "PR #6058 (first released in v0.8.0): strip the '+' suffix; before it every '+' type raised "
               "NotImplementedError"),
        Source("verl-project/verl", "verl/workers/utils/losses.py", "483b8a009ba3a97563edee3a19887e4862b8094a",
               "v0.9.0: use_kl_loss: kl_penalty(log_prob, ref_log_prob) aggregated by loss_agg_mode, no ratio "
               "(verl/workers/actor/dp_actor.py, where it lived before, is gone)"),
        Source("verl-project/verl", "verl/trainer/ppo/ray_trainer.py", "483b8a009ba3a97563edee3a19887e4862b8094a",
               "v0.9.0: apply_kl_penalty: token_level_rewards = scores - beta * kl_penalty(old_log_probs, ref_log_prob)"),
        Source("verl-project/verl", "verl/trainer/config/actor/actor.yaml", "483b8a009ba3a97563edee3a19887e4862b8094a",
               "v0.9.0 defaults: use_kl_loss false, kl_loss_coef 0.001, kl_loss_type low_var_kl, loss_agg_mode token-mean"),
        Source("verl-project/verl", "verl/trainer/config/ppo_trainer.yaml", "483b8a009ba3a97563edee3a19887e4862b8094a",
               "v0.9.0 defaults: use_kl_in_reward False, kl_penalty kl, kl_ctrl fixed 0.001, gamma 1, lam 1, "
               "adv_estimator gae"),
    ),
    "openrlhf": (
        Source("OpenRLHF/OpenRLHF", "openrlhf/models/utils.py", "3c3be6234e0cb353e76bb8019947db9dfe99fca7",
               "v0.11.0: compute_approx_kl: k1, k2, k3 in float32, all clamped to [-10, 10]; compute_reward: "
               "-kl_coef * kl per token"),
        Source("OpenRLHF/OpenRLHF", "openrlhf/trainer/ppo_utils/experience_maker.py",
               "3c3be6234e0cb353e76bb8019947db9dfe99fca7",
               "v0.11.0: KL in reward from rollout-time log-probs unless --algo.kl.use_loss; cumulative returns"),
        Source("OpenRLHF/OpenRLHF", "openrlhf/trainer/ray/ppo_actor.py", "3c3be6234e0cb353e76bb8019947db9dfe99fca7",
               "v0.11.0: --algo.kl.use_loss: aggregate_loss(compute_approx_kl(log_probs, base_log_probs)) * kl_ctl, "
               "no ratio"),
        Source("OpenRLHF/OpenRLHF", "openrlhf/models/loss.py", "c5bebd1438903c5a2d492af994275434843e3f3d",
               "PR #1249 (v0.10.4): aggregate_loss divides by the token count of the whole optimizer step; "
               "v0.10.3 (df78645e) moved the KL loss to aggregate_loss, before it a micro-batch masked mean"),
        Source("OpenRLHF/OpenRLHF", "openrlhf/cli/train_ppo_ray.py", "3c3be6234e0cb353e76bb8019947db9dfe99fca7",
               "v0.11.0 defaults: --algo.kl.init_coef 0.01, --algo.kl.estimator k1, --algo.kl.use_loss off, "
               "--algo.advantage.estimator gae, --algo.advantage.lambd 1, --algo.advantage.gamma 1"),
        Source("OpenRLHF/OpenRLHF", "openrlhf/cli/train_ppo_ray.py", "ed62d0e20dea08397251eba5e010ee9dabc4d048",
               "v0.10.2: dotted flags (--init_kl_coef -> --algo.kl.init_coef, ...; see OPENRLHF_FLAG_ALIASES)"),
        Source("OpenRLHF/OpenRLHF", "openrlhf/cli/train_ppo_ray.py", "8ff739782e992c235f19400b7f0c2c8c27d571d0",
               "March 2025 (first released in v0.6.4): --lambd default 0.95 -> 1"),
    ),
    "trl": (
        Source("pypi:trl", "trl/trainer/grpo_trainer.py", "1.16.0",
               "GRPOTrainer._compute_loss: per_token_kl = exp(ref - logp) - (ref - logp) - 1, times coef_1 if "
               "use_bias_correction_kl; loss += beta * per_token_kl"),
        Source("pypi:trl", "trl/trainer/grpo_config.py", "1.16.0",
               "defaults: beta 0.0, num_iterations 1, use_bias_correction_kl True, loss_type dapo, epsilon 0.2"),
    ),
    "klnotes": (
        Source("klnotes/klnotes", "klnotes/trl_plugin.py", "this repository",
               "principled_kl_token_loss: detached coefficient through the PPO ratio and clip"),
    ),
}

_VERSIONS = {
    "verl": "verl v0.9.0 (483b8a00)",
    "openrlhf": "OpenRLHF v0.11.0 (3c3be623)",
    "trl": "trl 1.16.0 (PyPI)",
    "klnotes": "klnotes.trl_plugin",
}

#: Which framework versions the audit's formulas and flags hold for (read from the sources above).
COVERS: dict[str, str] = {
    "verl": "verl v0.6.0 to v0.9.0 (checked at each release tag): the same kl_penalty_forward and the same KL "
            "defaults; the '+' straight-through types need v0.8.0 or later (earlier versions raise "
            "NotImplementedError for them)",
    "openrlhf": "OpenRLHF v0.9.0 to v0.11.0 (checked at each release tag): the same compute_approx_kl values "
                "(the code was restructured in v0.9.9; the [-10, 10] clamp is new in v0.9.0); flags spelled --algo.kl.* since v0.10.2 (the older spellings "
                "are aliases); KL-loss aggregation: a token mean over the whole optimizer step since v0.10.3/v0.10.4 "
                "(a masked mean per micro-batch before)",
    "trl": "trl 1.16.0 (installed; its code is run by the tests); beta defaults to 0 since v0.19",
    "klnotes": "this repository",
}

#: OpenRLHF's current (v0.10.2+) flag spelling -> the spelling before v0.10.2 (for the flags the audit reads).
OPENRLHF_FLAG_ALIASES: dict[str, str] = {
    "--algo.kl.init_coef": "--init_kl_coef",
    "--algo.kl.estimator": "--kl_estimator",
    "--algo.kl.use_loss": "--use_kl_loss",
    "--algo.advantage.estimator": "--advantage_estimator",
    "--algo.advantage.lambd": "--lambd",
    "--algo.advantage.gamma": "--gamma",
    "--algo.kl.target": "--kl_target",
    "--algo.kl.horizon": "--kl_horizon",
    "--train.max_epochs": "--max_epochs",
    "--rollout.n_samples_per_prompt": "--n_samples_per_prompt",
    "--actor.eps_clip": "--eps_clip",
}

TokenLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class KLOption:
    """One KL option of one framework, as data.

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
    notes: str = ""

    @property
    def sources(self) -> tuple[Source, ...]:
        return SOURCES[self.framework]

    def flag_string(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.flags)


# ---------------------------------------------------------------------------------------------
# The frameworks' per-token formulas, replicated (``logp``, ``ref``: [batch, time]).
# ---------------------------------------------------------------------------------------------


def verl_kl_penalty_forward(logp: torch.Tensor, ref: torch.Tensor, kind: str) -> torch.Tensor:
    """verl ``core_algos.kl_penalty_forward``: ``kl``/``k1`` = ``u``, ``abs`` = ``|u|``,
    ``mse``/``k2`` = ``u^2/2``, ``low_var_kl``/``k3`` = ``clamp(e^x - x - 1, -10, 10)`` with
    ``x = clamp(ref - logp, -20, 20)``. ``full`` raises ``NotImplementedError`` as in verl."""
    if kind in ("kl", "k1"):
        return logp - ref
    if kind == "abs":
        return (logp - ref).abs()
    if kind in ("mse", "k2"):
        return 0.5 * (logp - ref).square()
    if kind in ("low_var_kl", "k3"):
        x = torch.clamp(ref - logp, min=-20, max=20)
        return torch.clamp(torch.exp(x) - x - 1, min=-10, max=10)
    raise NotImplementedError(f"verl kl_penalty {kind!r} is not implemented")


def verl_kl_penalty(logp: torch.Tensor, ref: torch.Tensor, kind: str) -> torch.Tensor:
    """verl ``core_algos.kl_penalty``: a trailing ``+`` keeps the value of ``kind`` but
    back-propagates the gradient of k2 (straight-through)."""
    base = kind[:-1] if kind.endswith("+") else kind
    forward = verl_kl_penalty_forward(logp, ref, base)
    if not kind.endswith("+") or kind in ("mse", "k2"):
        return forward
    backward = 0.5 * (logp - ref).square()
    return backward - backward.detach() + forward.detach()


def openrlhf_compute_approx_kl(logp: torch.Tensor, ref: torch.Tensor, kl_estimator: str) -> torch.Tensor:
    """OpenRLHF ``compute_approx_kl``: k1 ``u``, k2 ``u^2/2``, k3 ``e^{-u} - 1 + u``, then clamped to
    ``[-10, 10]`` (OpenRLHF casts to float32 first; dtype is left alone here)."""
    log_ratio = logp - ref
    if kl_estimator == "k2":
        log_ratio = log_ratio**2 / 2.0
    elif kl_estimator == "k3":
        log_ratio = (-log_ratio).exp() - 1 - (-log_ratio)
    elif kl_estimator != "k1":
        raise ValueError(f"unknown kl_estimator {kl_estimator!r}")
    return log_ratio.clamp(min=-10, max=10)


def trl_per_token_kl(logp: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """TRL ``GRPOTrainer._compute_loss``: ``exp(ref - logp) - (ref - logp) - 1`` (k3, no clamp)."""
    return torch.exp(ref - logp) - (ref - logp) - 1


def sequence_sum(r: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``A_t = sum_s r_s mask_s`` on every token (an outcome-style advantage, as in GRPO)."""
    return (r * mask).sum(-1, keepdim=True) * mask


_CREDIT = {"reward-to-go": reward_to_go, "sequence sum": sequence_sum}


def _in_reward(value: Callable, credit: str) -> TokenLoss:
    """PPO-style: reward ``-value(pi_old)`` (detached, rollout time), credited, times the ratio."""
    assign = _CREDIT[credit]

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

_VERL_KINDS = {"kl": "k1", "k1": "k1", "abs": "abs", "mse": "k2", "k2": "k2", "low_var_kl": "k3", "k3": "k3",
               "full": "full"}
_VERL_LOSS_KINDS = {**_VERL_KINDS, **{k + "+": (v if v == "k2" else v + "+") for k, v in _VERL_KINDS.items()
                                      if k != "full"}}
_VERL_ADV = {"gae": "reward-to-go", "reinforce_plus_plus": "reward-to-go", "grpo": "sequence sum"}
_OPENRLHF_ADV = ("gae", "reinforce", "rloo", "reinforce_baseline", "group_norm", "dr_grpo")
_TRL_LOSS_TYPES = {
    "dapo": "sum over active tokens / tokens in the global accumulated batch",
    "grpo": "mean over each sequence's tokens, then mean over sequences",
    "bnpo": "sum over active tokens / tokens in the local batch",
    "dr_grpo": "sum over tokens / (batch size x max_completion_length)",
}
_FORMULA = {
    "k1": "u = log pi_theta - log pi_ref",
    "abs": "|u|",
    "k2": "u^2 / 2",
    "k3": "e^{-u} - 1 + u",
}


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


def _verl(use_kl_in_reward, kl_penalty, adv_estimator, use_kl_loss, kl_loss_type) -> KLOption:
    fw = "verl"
    _bool(fw, "use_kl_in_reward", use_kl_in_reward)
    _bool(fw, "use_kl_loss", use_kl_loss)
    _choice(fw, "kl_penalty", kl_penalty, tuple(_VERL_LOSS_KINDS))
    _choice(fw, "kl_loss_type", kl_loss_type, tuple(_VERL_LOSS_KINDS))
    _choice(fw, "adv_estimator", adv_estimator, tuple(_VERL_ADV))
    flags, losses, parts, formulas, grads, clamps, ratios, froms, credits = [], [], [], [], [], [], [], [], []
    implemented = True
    if use_kl_in_reward:
        kind = _VERL_KINDS[kl_penalty.rstrip("+")]
        credit = _VERL_ADV[adv_estimator]
        flags += [("algorithm.use_kl_in_reward", True), ("algorithm.kl_penalty", kl_penalty),
                  ("algorithm.adv_estimator", adv_estimator)]
        parts.append("in reward")
        credits.append(credit)
        if kind == "full":
            implemented = False
        else:
            losses.append(_in_reward(lambda lp, r, k=kind: verl_kl_penalty_forward(lp, r, k), credit))
            formulas.append(_FORMULA[kind])
            grads.append("log pi_theta via the PPO ratio; the KL value is a detached reward")
            ratios.append("PPO ratio, clipped")
            froms.append("pi_old (rollout)")
            if kind == "k3":
                clamps.append("x = clamp(-u, -20, 20); value clamp [-10, 10]")
    if use_kl_loss:
        kind = _VERL_LOSS_KINDS[kl_loss_type]
        flags += [("actor_rollout_ref.actor.use_kl_loss", True), ("actor_rollout_ref.actor.kl_loss_type", kl_loss_type)]
        parts.append("as loss")
        credits.append("own token")
        if kind == "full":
            implemented = False
        else:
            losses.append(_as_loss(lambda lp, r, k=kind: verl_kl_penalty(lp, r, k)))
            base = kind.rstrip("+")
            if kind.endswith("+"):
                formulas.append(f"value {_FORMULA[base]}, gradient of u^2/2 (straight-through)")
                grads.append("log pi_theta through u^2/2 (straight-through; the value is not differentiated)")
            else:
                formulas.append(_FORMULA[base])
                grads.append("log pi_theta through the estimator itself")
            ratios.append("none")
            froms.append("pi_theta")
            if base == "k3":
                clamps.append("x = clamp(-u, -20, 20); value clamp [-10, 10]")
    if not use_kl_in_reward and not use_kl_loss:
        return KLOption(
            fw, _VERSIONS[fw], (("algorithm.use_kl_in_reward", False), ("actor_rollout_ref.actor.use_kl_loss", False)),
            "-", "none", "-", "-", "-", "-", "-", "-", None,
            default=True, notes="verl's default: no KL term (the reference model is not even loaded)",
        )
    notes = []
    if use_kl_loss:
        notes.append("GRPO example scripts set use_kl_loss=True, kl_loss_type=low_var_kl, kl_loss_coef=0.001")
    if any(str(k).endswith("+") for k in (kl_penalty if use_kl_in_reward else "", kl_loss_type if use_kl_loss else "")):
        notes.append("'+' types work from verl v0.8.0 (PR #6058); earlier versions raise NotImplementedError")
    if not implemented:
        notes.append("'full' raises NotImplementedError in verl")
    return KLOption(
        fw, _VERSIONS[fw], tuple(flags),
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
    )


def _openrlhf(init_kl_coef, kl_estimator, use_kl_loss, advantage_estimator) -> KLOption:
    fw = "openrlhf"
    coef = _nonneg(fw, "init_kl_coef", init_kl_coef)
    _choice(fw, "kl_estimator", kl_estimator, ("k1", "k2", "k3"))
    _bool(fw, "use_kl_loss", use_kl_loss)
    _choice(fw, "advantage_estimator", advantage_estimator, _OPENRLHF_ADV)
    # Current (v0.10.2+) spellings; OPENRLHF_FLAG_ALIASES gives the older ones (--init_kl_coef, ...).
    flags = (("--algo.kl.init_coef", init_kl_coef), ("--algo.kl.estimator", kl_estimator),
             ("--algo.kl.use_loss", use_kl_loss), ("--algo.advantage.estimator", advantage_estimator))
    value = lambda lp, r, k=kl_estimator: openrlhf_compute_approx_kl(lp, r, k)  # noqa: E731
    default = coef == 0.01 and kl_estimator == "k1" and not use_kl_loss and advantage_estimator == "gae"
    if coef == 0.0:
        return KLOption(fw, _VERSIONS[fw], flags, "-", "none", "-", "-", "-", "-", "-", "-", None,
                        notes="--algo.kl.init_coef (was --init_kl_coef) <= 0 turns the KL term off")
    clamp = "value clamp [-10, 10]"
    if use_kl_loss:
        return KLOption(
            fw, _VERSIONS[fw], flags, _FORMULA[kl_estimator], "as loss",
            "log pi_theta through the estimator itself", "own token",
            "token mean over the whole optimizer step (aggregate_loss, since v0.10.3/v0.10.4; v0.10.2 and earlier: masked mean "
            "per micro-batch), times --algo.kl.init_coef", clamp, "none", "pi_theta",
            _as_loss(value), default=False,
            notes="GRPO example scripts: --algo.kl.use_loss --algo.kl.estimator k3 (was --use_kl_loss --kl_estimator "
                  "k3; k2 in REINFORCE-baseline scripts); the CLI recommends k2 or k3 as loss"
                  + ("; k3 is computed in float32 with no inner clamp: exp(-u) overflows below u = -88.7 and the "
                     "gradient is NaN there (the outer clamp zeroes it times inf)" if kl_estimator == "k3" else ""),
        )
    notes = "KL computed once at rollout from the actor's log-probs; reward-to-go returns (gamma = 1)"
    if advantage_estimator == "gae":
        notes += ("; with gae a critic baseline and --algo.advantage.lambd (was --lambd; default 1 since "
                  "March 2025) give the reward-to-go minus a baseline")
    return KLOption(
        fw, _VERSIONS[fw], flags, _FORMULA[kl_estimator], "in reward",
        "log pi_theta via the PPO ratio; the KL value is a detached reward", "reward-to-go",
        "per-token reward -init_kl_coef * kl, cumulative returns, PPO loss masked mean", clamp,
        "PPO ratio, clipped", "pi_old (rollout)", _in_reward(value, "reward-to-go"), default=default, notes=notes,
    )


def _trl(beta, use_bias_correction_kl, num_iterations, loss_type) -> KLOption:
    fw = "trl"
    coef = _nonneg(fw, "beta", beta)
    _bool(fw, "use_bias_correction_kl", use_bias_correction_kl)
    if not isinstance(num_iterations, int) or isinstance(num_iterations, bool) or num_iterations < 1:
        raise ValueError(f"trl: num_iterations={num_iterations!r} must be an integer >= 1")
    _choice(fw, "loss_type", loss_type, tuple(_TRL_LOSS_TYPES))
    flags = (("beta", beta), ("use_bias_correction_kl", use_bias_correction_kl), ("num_iterations", num_iterations),
             ("loss_type", loss_type))
    off = "on-policy (num_iterations = 1)" if num_iterations == 1 else f"{num_iterations} updates per batch"
    if coef == 0.0:
        return KLOption(fw, _VERSIONS[fw], flags, "-", "none", "-", "-", "-", "-", "-", "-", None,
                        default=(use_bias_correction_kl and num_iterations == 1 and loss_type == "dapo"),
                        notes="beta = 0 (TRL's default since v0.19) loads no reference model: no KL term")
    if use_bias_correction_kl:
        return KLOption(
            fw, _VERSIONS[fw], flags, "(e^{-u} - 1 + u) * exp(log pi_theta - log pi_old)", "as loss",
            "both factors: k3 and the importance ratio (DeepSeek-V3.2)", "own token", _TRL_LOSS_TYPES[loss_type],
            "none", "differentiable ratio, unclipped", "pi_theta", _as_loss(trl_per_token_kl, ratio=True),
            notes=f"{off}; the default in trl 1.16.0 (it was False when added in Dec 2025)",
        )
    return KLOption(
        fw, _VERSIONS[fw], flags, _FORMULA["k3"], "as loss", "log pi_theta through k3 itself", "own token",
        _TRL_LOSS_TYPES[loss_type], "none", "none", "pi_theta", _as_loss(trl_per_token_kl),
        notes=f"{off}; DeepSeekMath's GRPO KL term (TRL's default until use_bias_correction_kl)",
    )


def _klnotes(kl, level, clip) -> KLOption:
    from klnotes import trl_plugin

    fw = "klnotes"
    _choice(fw, "kl", kl, trl_plugin.KL_NAMES)
    _choice(fw, "level", level, trl_plugin.LEVELS)
    _bool(fw, "clip", clip)
    credit = {"k1_in_reward": "reward-to-go", "k2_as_loss": "sequence sum"}[kl] if level == "sequence" else "own token"

    def token_loss(logp, ref, old, mask):
        return trl_plugin.principled_kl_token_loss(kl, logp, ref, old, mask, level=level, clip=clip)

    formula = {"k1_in_reward": "u per token, in reward", "k2_as_loss": "U^2/2, U = sum_t u_t"}[kl]
    if level == "token":
        formula = "u per token, own token only" if kl == "k1_in_reward" else "u_t^2 / 2 per token"
    return KLOption(
        fw, _VERSIONS[fw], (("kl", kl), ("level", level), ("clip", clip)), formula, "in reward (KL head)",
        "log pi_theta via the PPO ratio; coefficient recomputed from pi_theta, detached", credit,
        "sum over each sequence's tokens, mean over sequences", "none",
        "PPO ratio, clipped" if clip else "importance ratio, unclipped", "pi_theta", token_loss, sum_tokens=True,
        default=(kl == "k1_in_reward" and level == "sequence" and clip),
        notes="klnotes.trl_plugin.PrincipledKLGRPOTrainer",
    )


@dataclass(frozen=True)
class _Framework:
    builder: Callable[..., KLOption]
    defaults: dict
    space: tuple  # flag combinations listed by table()


def _verl_space():
    rows = [{}]
    for kind in ("k1", "abs", "k2", "k3", "full"):
        for adv in ("gae", "grpo") if kind == "k1" else ("gae",):
            rows.append(dict(use_kl_in_reward=True, kl_penalty=kind, adv_estimator=adv))
    for kind in ("k1", "abs", "k2", "k3", "full", "k1+", "abs+", "k3+"):
        rows.append(dict(use_kl_loss=True, kl_loss_type=kind))
    return tuple(rows)


FRAMEWORKS: dict[str, _Framework] = {
    "verl": _Framework(
        _verl,
        dict(use_kl_in_reward=False, kl_penalty="kl", adv_estimator="gae", use_kl_loss=False, kl_loss_type="low_var_kl"),
        _verl_space(),
    ),
    "openrlhf": _Framework(
        _openrlhf,
        dict(init_kl_coef=0.01, kl_estimator="k1", use_kl_loss=False, advantage_estimator="gae"),
        tuple([{}, dict(init_kl_coef=0.0)]
              + [dict(kl_estimator=k, advantage_estimator="reinforce") for k in ("k1", "k2", "k3")]
              + [dict(use_kl_loss=True, kl_estimator=k) for k in ("k1", "k2", "k3")]),
    ),
    "trl": _Framework(
        _trl,
        dict(beta=0.0, use_bias_correction_kl=True, num_iterations=1, loss_type="dapo"),
        ({}, dict(beta=0.04), dict(beta=0.04, use_bias_correction_kl=False)),
    ),
    "klnotes": _Framework(
        _klnotes,
        dict(kl="k1_in_reward", level="sequence", clip=True),
        ({}, dict(kl="k2_as_loss"), dict(level="token")),
    ),
}


def flag_space(framework: str) -> dict:
    """Default flag values of ``framework`` (the keyword arguments :func:`audit` accepts)."""
    return dict(_framework(framework).defaults)


def _framework(framework: str) -> _Framework:
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
    fw = _framework(framework)
    unknown = sorted(set(flags) - set(fw.defaults))
    if unknown:
        raise ValueError(f"{framework}: unknown flag(s) {unknown}; known: {', '.join(fw.defaults)}")
    return fw.builder(**{**fw.defaults, **flags})


# ---------------------------------------------------------------------------------------------
# Computation: coefficient, on-policy objective, off-policy bias.
# ---------------------------------------------------------------------------------------------


def _closed_forms() -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    from klnotes.coefficients import closed_form

    return {
        "u": lambda u: closed_form("k1", "in_reward", u),
        "1": lambda u: closed_form("k1", "as_loss", u),
        "1 - e^{-u}": lambda u: closed_form("k3", "as_loss", u),
        "u^2/2": lambda u: closed_form("k2", "in_reward", u),
        "e^{-u} - 1 + u": lambda u: closed_form("k3", "in_reward", u),
        "sign(u)": torch.sign,
        "|u|": torch.abs,
    }


def coefficient(opt: KLOption, u: torch.Tensor) -> torch.Tensor:
    """Gradient coefficient of ``opt`` at log-ratios ``u`` (``[n]``, float64), on-policy, one token:
    :func:`klnotes.coefficients.from_surrogate` applied to the option's per-token loss."""
    from klnotes.coefficients import from_surrogate

    if opt.token_loss is None:
        return torch.zeros_like(u)

    def surrogate(logp, logp_ref):
        lp, lr = logp.reshape(-1, 1), logp_ref.reshape(-1, 1)
        return opt.token_loss(lp, lr, lp.detach(), torch.ones_like(lp)).reshape(logp.shape)

    return from_surrogate(surrogate, u.clone(), torch.zeros_like(u)).detach()


def _summarize_side(u, c, where, side):
    if not bool(where.any()):
        return None
    values = c[where]
    edge = float(u[where].max()) if side == "<" else float(u[where].min())
    if bool((values == 0).all()):
        what = "0"
    elif bool((values == values[0]).all()):
        what = f"{float(values[0]):.3g}"
    else:
        what = "altered"
    return f"c = {what} for u {side} {edge:.2f}"


def _name_coefficient(opt: KLOption) -> tuple[str, str]:
    """(closed-form name on |u| <= 2, where clamps change it on |u| <= 25)."""
    if opt.token_loss is None:
        return "0", "-"
    u = torch.linspace(-2.0, 2.0, 81, dtype=torch.float64)
    c = coefficient(opt, u)
    forms = _closed_forms()
    name = next((n for n, f in forms.items() if torch.allclose(c, f(u).to(c), rtol=1e-9, atol=1e-9)), OTHER)
    if name == OTHER:
        return name, "-"
    wide = torch.linspace(-25.0, 25.0, 5001, dtype=torch.float64)
    cw = coefficient(opt, wide)
    # Tolerance grows with e^{|u|}: forms like (e^{-u} - 1 + u) + (1 - e^{-u}) cancel in float64.
    atol = 1e-7 + 1e-12 * torch.exp(wide.abs())
    differs = (cw - forms[name](wide).to(cw)).abs() > atol + 1e-7 * cw.abs()
    sides = [_summarize_side(wide, cw, differs & (wide < 0), "<"), _summarize_side(wide, cw, differs & (wide > 0), ">")]
    sides = [s for s in sides if s]
    return name, "; ".join(sides) if sides else "none on |u| <= 25"


def objective_gradients(space: exact.SequenceSpace, theta: torch.Tensor, ref: torch.Tensor) -> dict[str, torch.Tensor]:
    """Exact gradients (w.r.t. tabular logits ``theta`` ``[P, V]``) of the objectives in :data:`OBJECTIVES`
    (:func:`klnotes.exact.objective_gradient`; per-token objectives hold the prefix weights fixed)."""
    return {name: exact.objective_gradient(space, theta, ref, name) for name in OBJECTIVES[:4]}


def expected_gradient(opt: KLOption, space: exact.SequenceSpace, theta, ref, behaviour=None) -> torch.Tensor:
    """Exact ``E_{y ~ pi_behaviour}[grad_theta L_opt(y)]`` (behaviour = pi_theta when ``None``), ``[P, V]``.

    The sampling distribution is detached, as autodiff on a sampled batch does
    (:func:`klnotes.exact.expected_gradient`); ``L_opt`` is the option's per-token loss summed
    (``opt.sum_tokens``) or averaged over the sequence.
    """
    def per_sequence(logp, lref, old, mask):
        per_token = opt.token_loss(logp, lref, old, mask)
        return per_token.sum(-1) if opt.sum_tokens else per_token.mean(-1)

    return exact.expected_gradient(space, per_sequence, theta, ref, behaviour=behaviour)


@lru_cache(maxsize=1)
def sequence_problem(seed: int = 0):
    """Tiny autoregressive problem (vocabulary 3, length 3, float64): ``(policy, theta, ref, targets)``
    with ``targets`` the exact gradients of :data:`OBJECTIVES` (:func:`objective_gradients`)."""
    pol = exact.SequenceSpace(vocab=3, length=3)
    gen = torch.Generator().manual_seed(seed)
    theta = 0.6 * torch.randn(*pol.tabular_shape, generator=gen, dtype=torch.float64)
    ref = 0.6 * torch.randn(*pol.tabular_shape, generator=gen, dtype=torch.float64)
    return pol, theta, ref, objective_gradients(pol, theta, ref)


@lru_cache(maxsize=8)
def single_step_problem(seed: int = 1, step: float = 0.03):
    """Categorical policy (5 outcomes), reference, and ``pi_old`` = logits ``theta + step * z``."""
    pol = exact.SequenceSpace(vocab=5, length=1)
    gen = torch.Generator().manual_seed(seed)
    theta = 0.6 * torch.randn(1, 5, generator=gen, dtype=torch.float64)
    ref = 0.6 * torch.randn(1, 5, generator=gen, dtype=torch.float64)
    old = theta + step * torch.randn(1, 5, generator=gen, dtype=torch.float64)
    return pol, theta, ref, old


@lru_cache(maxsize=8)
def off_policy_problem(step: float = 0.03, seed: int = 2):
    """The length-3 problem of :func:`sequence_problem` with a sampling policy ``pi_old``: tabular
    logits ``theta + step * z``, ``z ~ N(0, 1)`` ``[P, V]`` from ``seed``. Returns ``(space, theta, ref, old)``."""
    pol, theta, ref, _ = sequence_problem()
    gen = torch.Generator().manual_seed(seed)
    old = theta + float(step) * torch.randn(*pol.tabular_shape, generator=gen, dtype=torch.float64)
    return pol, theta, ref, old


PROBLEMS: tuple[str, ...] = ("sequence", "single step")


def _off_policy_gradients(opt: KLOption, step: float, problem: str):
    if problem not in PROBLEMS:
        raise ValueError(f"unknown problem {problem!r}; allowed: {', '.join(PROBLEMS)}")
    pol, theta, ref, old = off_policy_problem(float(step)) if problem == "sequence" else single_step_problem(1, float(step))
    on = expected_gradient(opt, pol, theta, ref)
    off = expected_gradient(opt, pol, theta, ref, behaviour=old)
    return pol, theta, old, on, off


def off_policy_error(opt: KLOption, step: float = 0.03, problem: str = "sequence") -> float:
    """Relative error ``|g_off - g_on| / max(|g_on|, |g_off|)`` of ``opt``'s exact expected gradient on
    samples of ``pi_old`` (logits ``theta + step * z``) against its on-policy gradient at ``pi_theta``.

    ``problem="sequence"`` (default): the length-3 autoregressive problem of :func:`off_policy_problem`,
    where per-token ratios leave the prefixes at ``pi_old``; ``"single step"``: a categorical policy
    with 5 outcomes (:func:`single_step_problem`), one token and no prefix. Clipping is not modelled,
    so keep ``step`` small.
    """
    if opt.token_loss is None:
        return 0.0
    _, _, _, on, off = _off_policy_gradients(opt, step, problem)
    return float((off - on).norm() / max(float(on.norm()), float(off.norm()), 1e-300))


def off_policy_prefix_error(opt: KLOption, step: float = 0.03) -> float:
    """Off-policy error *given the prefix*, on :func:`off_policy_problem`: ``max_s |g_off[s] / P_old(s) -
    g_on[s] / P_theta(s)|`` over the prefixes ``s`` (rows of the tabular gradient ``[P, V]``), relative
    to ``max_s |g_on[s] / P_theta(s)|``.

    Row ``s`` of a tabular gradient collects the tokens that follow prefix ``s``, weighted by the
    sampler's probability of reaching ``s``; dividing by it leaves the conditional expectation given
    the prefix. Zero means the option is unbiased per token given the prefix (it reweights the token,
    not the prefix: chapter 6's per-token ratio theorem).
    """
    if opt.token_loss is None:
        return 0.0
    pol, theta, old, on, off = _off_policy_gradients(opt, step, "sequence")
    cond_on = on / exact.prefix_probs(pol, theta).unsqueeze(-1)
    cond_off = off / exact.prefix_probs(pol, old).unsqueeze(-1)
    return float((cond_off - cond_on).abs().max() / max(float(cond_on.abs().max()), 1e-300))


def with_sequence_ratio(opt: KLOption) -> KLOption:
    """``opt``'s *on-policy* per-token loss (evaluated with ``pi_old := sg(pi_theta)``, so its own
    per-token ratios are 1 and any KL value is fresh) times the detached sequence ratio
    ``sg(pi_theta(y) / pi_old(y)) = sg(exp(sum_t (log pi_theta - log pi_old)))``.

    On-policy the factor is 1 (the option's gradient); on ``pi_old``'s samples
    ``E_old[sg(rho(y)) grad L(y)] = E_theta[grad L(y)]`` exactly, whatever ``L``: the sequence-level
    correction that per-token ratios are not.
    """
    if opt.token_loss is None:
        return opt
    base = opt.token_loss

    def token_loss(logp, ref, old, mask):
        m = mask.to(logp.dtype)
        rho = torch.exp(((logp - old) * m).sum(-1, keepdim=True)).detach()
        return rho * base(logp, ref, logp.detach(), mask)

    return replace(opt, ratio="detached sequence ratio on the whole term (replaces per-token ratios)",
                   coefficient_from="pi_theta", token_loss=token_loss)


def error_to_objective(opt: KLOption, objective: str = "sequence reverse KL", shrink: float = 1.0) -> float:
    """Relative error ``|g - s g*| / |s g*|`` of ``opt``'s exact on-policy gradient ``g`` against the
    gradient ``g*`` of ``objective`` on the tiny autoregressive problem, with the policy moved towards
    the reference: logits ``ref + shrink * (theta - ref)``. ``s`` is the aggregation's scale (1 when
    the option sums over tokens, ``1/T`` when it averages)."""
    if objective not in OBJECTIVES[:4]:
        raise ValueError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES[:4])}")
    pol, theta, ref, _ = sequence_problem()
    th = ref + shrink * (theta - ref)
    target = objective_gradients(pol, th, ref)[objective] * (1.0 if opt.sum_tokens else 1.0 / pol.length)
    g = expected_gradient(opt, pol, th, ref) if opt.token_loss is not None else torch.zeros_like(target)
    return float((g - target).norm() / target.norm())


def drift_table(options: dict, shrinks=(1.0, 0.3, 0.1, 0.03, 0.01), objective: str = "sequence reverse KL"):
    """``pandas.DataFrame`` (columns ``option``, ``shrink``, ``kl``, ``error``): for each labelled
    :class:`KLOption`, :func:`error_to_objective` as the policy moves towards the reference, with
    ``kl`` the exact sequence ``KL(pi_theta || pi_ref)`` at that point (nats)."""
    import pandas as pd

    pol, theta, ref, _ = sequence_problem()
    rows = []
    for shrink in shrinks:
        kl = float(exact.sequence_kl(pol, ref + shrink * (theta - ref), ref))
        for label, opt in options.items():
            rows.append({"option": label, "shrink": shrink, "kl": kl,
                         "error": error_to_objective(opt, objective, shrink)})
    return pd.DataFrame(rows)


def classify_objective(opt: KLOption, tol: float = 1e-9) -> tuple[str, float, float]:
    """Which objective ``opt`` follows on-policy: ``(name, scale, residual)``.

    The exact expected gradient ``g`` on the tiny autoregressive policy is compared with each target
    ``g*`` of :data:`OBJECTIVES`: ``scale = <g, g*> / <g*, g*>`` and
    ``residual = |g - scale g*| / |g|``; the first target with ``residual <= tol`` and ``scale > 0``
    names the objective. A zero gradient is ``"nothing"``; no match is ``"none of these"``.
    """
    if opt.token_loss is None:
        return "nothing", 0.0, 0.0
    pol, theta, ref, targets = sequence_problem()
    g = expected_gradient(opt, pol, theta, ref)
    norm = float(g.norm())
    if norm <= tol * max(float(t.norm()) for t in targets.values()):
        return "nothing", 0.0, 0.0
    best = (OTHER, 0.0, float("inf"))
    for name, t in targets.items():
        scale = float((g * t).sum() / (t * t).sum())
        residual = float((g - scale * t).norm()) / norm
        if residual < best[2]:
            best = (name, scale, residual)
        if residual <= tol and scale > 0:
            return name, scale, residual
    return OTHER, best[1], best[2]


def off_policy_bias(opt: KLOption, tol: float = 1e-9) -> tuple[str, float]:
    """``(verdict, relative error)``: :func:`off_policy_error` on the length-3 problem at ``step = 0.03``
    (ratios within [0.9, 1.1], so PPO clipping would not act) and its cause, read from the option's data.

    Verdicts: ``"unbiased"`` (the sequence-level gradient is the on-policy one, to ``tol``);
    ``"unbiased per token given the prefix; biased over sequences"`` (:func:`off_policy_prefix_error`
    below ``tol``: per-token ratios correct each token, the prefixes stay at ``pi_old``);
    otherwise ``"biased: ..."`` with the cause (no ratio; a KL value frozen at ``pi_old``; per-token
    ratios on a term that credits future tokens).
    """
    if opt.token_loss is None:
        return "-", 0.0
    err = off_policy_error(opt)
    if err <= tol:
        return "unbiased", err
    if off_policy_prefix_error(opt) <= tol:
        return "unbiased per token given the prefix; biased over sequences", err
    if "none" in opt.ratio.split(" + "):
        return "biased: no importance ratio on the KL term", err
    if opt.coefficient_from.startswith("pi_old"):
        return "biased: KL value frozen at pi_old (stale reward); per-token ratios", err
    return "biased: per-token ratios; prefixes and future tokens from pi_old", err


@dataclass(frozen=True)
class Audit:
    """An option and what the book computes about it (see the module docstring)."""

    option: KLOption
    coefficient: str
    clamp_effect: str
    on_policy: str
    on_policy_scale: float
    on_policy_residual: float
    off_policy: str
    off_policy_error: float

    def row(self) -> dict:
        o = self.option
        return {
            "framework": o.framework,
            "flags": o.flag_string(),
            "default": o.default,
            "placement": o.placement,
            "formula": o.formula,
            "gradient to": o.gradient_to,
            "credit": o.credit,
            "aggregation": o.aggregation,
            "clamp": o.clamp,
            "ratio on KL": o.ratio,
            "coefficient c(u)": self.coefficient,
            "clamp effect on c": self.clamp_effect,
            "on-policy objective": self.on_policy,
            "off-policy": self.off_policy,
            "off-policy rel. error": self.off_policy_error,
            "version": o.version,
            "notes": o.notes,
        }


def audit_option(opt: KLOption) -> Audit:
    """Compute the :class:`Audit` of an option."""
    if opt.placement == "not implemented":
        return Audit(opt, "-", "-", "not implemented (raises)", 0.0, 0.0, "-", 0.0)
    name, clamp_effect = _name_coefficient(opt)
    objective, scale, residual = classify_objective(opt)
    verdict, err = off_policy_bias(opt)
    return Audit(opt, name, clamp_effect, objective, scale, residual, verdict, err)


def audit(framework: str, **flags) -> Audit:
    """Audit ``framework``'s KL term under ``flags`` (others at their defaults).

    Example: ``audit("verl", use_kl_loss=True, kl_loss_type="low_var_kl")``.
    Frameworks: ``verl`` (flags use_kl_in_reward, kl_penalty, adv_estimator, use_kl_loss,
    kl_loss_type), ``openrlhf`` (init_kl_coef, kl_estimator, use_kl_loss, advantage_estimator),
    ``trl`` (beta, use_bias_correction_kl, num_iterations, loss_type) and ``klnotes`` (the TRL
    plug-in: kl, level, clip).

    Raises:
        ValueError: unknown framework, flag, or flag value (the message lists the known ones).
    """
    return audit_option(option(framework, **flags))


def table(frameworks: tuple[str, ...] | None = None):
    """Every audited option of ``frameworks`` (default: all) as a ``pandas.DataFrame``, one row each."""
    import pandas as pd

    names = tuple(FRAMEWORKS) if frameworks is None else frameworks
    rows = [audit(name, **flags).row() for name in names for flags in _framework(name).space]
    return pd.DataFrame(rows)


def principled_options(frameworks: tuple[str, ...] | None = None) -> list[Audit]:
    """The listed options whose on-policy gradient is the sequence reverse-KL gradient (the recipes)."""
    names = tuple(FRAMEWORKS) if frameworks is None else frameworks
    out = []
    for name in names:
        for flags in _framework(name).space:
            a = audit(name, **flags)
            if a.on_policy == "sequence reverse KL":
                out.append(a)
    return out


#: Short forms of :func:`table`'s off-policy verdicts, for the compact per-framework tables.
OFF_POLICY_SHORT = {
    "ratio applied; KL value frozen at pi_old: bias -grad KL(pi_theta || pi_old)": "stale KL value",
    "biased: no importance ratio on the KL term": "biased (no ratio)",
    "unbiased": "unbiased",
    "-": "\u2013",
}


def _breakable(text: str) -> str:
    """HTML-escape ``text`` and allow line breaks after ``.``, ``_`` and ``=`` inside long flag names."""
    import html

    out = html.escape(text)
    for ch in (".", "_", "="):
        out = out.replace(ch, ch + "<wbr>")
    return out


def audit_html(frame, framework: str) -> str:
    """One framework's rows of :func:`table` as a compact HTML table that fits a page column.

    Four columns: the full flags (one per line, breakable inside long names; the framework's
    default marked), the coefficient ``c(u)`` (as inline math), the on-policy objective and the
    off-policy verdict (:data:`OFF_POLICY_SHORT`). The long fields (formula, credit, aggregation,
    clamp and its effect, the full off-policy verdict, notes) go into a collapsed
    ``<details>`` under the flags, so rows that differ only there still look different.

    Raises:
        ValueError: ``framework`` has no rows in ``frame`` (the message lists those it has).
    """
    import html

    rows = frame[frame["framework"] == framework]
    if rows.empty:
        raise ValueError(f"no rows for framework {framework!r}; have: {', '.join(dict.fromkeys(frame['framework']))}")
    head = "<tr><th>flags</th><th>\\(c(u)\\)</th><th>on-policy objective</th><th>off-policy</th></tr>"
    body = []
    for r in rows.to_dict("records"):
        flags = "<br>".join(f"<code>{_breakable(f)}</code>" for f in r["flags"].split(", "))
        if r["default"]:
            flags += "<br><em>(default)</em>"
        more = [f"{k}: {html.escape(str(r[k]))}" for k in ("placement", "formula", "gradient to", "credit", "aggregation",
                                                            "clamp", "ratio on KL", "clamp effect on c", "off-policy")
                if str(r[k]) not in ("", "-")]
        if r["notes"]:
            more.append(f"notes: {html.escape(r['notes'])}")
        details = f"<details><summary>details</summary><ul>{''.join(f'<li>{m}</li>' for m in more)}</ul></details>"
        coef = r["coefficient c(u)"]
        coef = "\u2013" if coef == "-" else "\\(" + html.escape(coef).replace("sign(", "\\operatorname{sign}(") + "\\)"
        off = OFF_POLICY_SHORT.get(r["off-policy"], html.escape(r["off-policy"]))
        body.append(f"<tr><td>{flags}{details}</td><td>{coef}</td><td>{html.escape(r['on-policy objective'])}</td>"
                    f"<td>{off}</td></tr>")
    # class mathjax_process: the book's MathJax typesets the coefficients inside a notebook output
    return (f'<div class="mathjax_process"><table class="klnotes-audit" style="width:100%; table-layout:fixed">'
            '<colgroup><col style="width:52%"><col style="width:16%"><col style="width:17%"><col style="width:15%">'
            f"</colgroup><thead>{head}</thead><tbody>{''.join(body)}</tbody></table></div>")
