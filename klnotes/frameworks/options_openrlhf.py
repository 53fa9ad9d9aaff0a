"""OpenRLHF's KL options as data: its advantage estimators and the builder of the
:class:`~klnotes.frameworks.kloption.KLOption` its flags select."""

from __future__ import annotations

from klnotes.core.variants import ESTIMATORS, parse_estimator
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
from klnotes.frameworks.replicas import openrlhf_compute_approx_kl
from klnotes.frameworks.sources import VERSIONS

__all__ = ["OPENRLHF_ADV", "openrlhf_option"]

#: OpenRLHF ``--algo.advantage.estimator`` values.
OPENRLHF_ADV = ("gae", "reinforce", "rloo", "reinforce_baseline", "group_norm", "dr_grpo")


def openrlhf_option(init_kl_coef, kl_estimator, use_kl_loss, advantage_estimator) -> KLOption:
    """The :class:`KLOption` OpenRLHF runs with ``--algo.kl.init_coef``, ``--algo.kl.estimator``,
    ``--algo.kl.use_loss`` and ``--algo.advantage.estimator`` (raises ``ValueError`` on a bad value)."""
    fw = "openrlhf"
    coef = check_nonneg(fw, "init_kl_coef", init_kl_coef)
    check_choice(fw, "kl_estimator", kl_estimator, ESTIMATORS)
    check_bool(fw, "use_kl_loss", use_kl_loss)
    check_choice(fw, "advantage_estimator", advantage_estimator, OPENRLHF_ADV)
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
            as_loss(value),
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
        in_reward_loss(value, "reward-to-go"),
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
