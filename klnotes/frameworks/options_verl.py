"""verl's KL options as data: its ``kl_penalty``/``kl_loss_type`` names, advantage estimators and the
builder of the :class:`~klnotes.frameworks.kloption.KLOption` its flags select."""

from __future__ import annotations

from klnotes.core.variants import ESTIMATOR_ALIASES, parse_estimator
from klnotes.frameworks.kloption import (
    FORMULA,
    KLOption,
    as_loss,
    check_bool,
    check_choice,
    in_reward_loss,
    no_kl_option,
    sum_losses,
    term_variant,
)
from klnotes.frameworks.replicas import verl_kl_penalty, verl_kl_penalty_forward
from klnotes.frameworks.sources import VERSIONS

__all__ = [
    "VERL_KINDS",
    "VERL_LOSS_KINDS",
    "VERL_ADV",
    "verl_estimator",
    "verl_option",
    "verl_space",
]

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


def verl_option(
    use_kl_in_reward,
    kl_penalty,
    adv_estimator,
    use_kl_loss,
    kl_loss_type,
    norm_adv_by_std_in_grpo=True,
) -> KLOption:
    """The :class:`KLOption` verl runs with ``algorithm.use_kl_in_reward``/``kl_penalty``/
    ``adv_estimator``/``norm_adv_by_std_in_grpo`` and ``actor.use_kl_loss``/``kl_loss_type``
    (raises ``ValueError`` on a bad value)."""
    fw = "verl"
    check_bool(fw, "use_kl_in_reward", use_kl_in_reward)
    check_bool(fw, "norm_adv_by_std_in_grpo", norm_adv_by_std_in_grpo)
    check_bool(fw, "use_kl_loss", use_kl_loss)
    check_choice(fw, "kl_penalty", kl_penalty, tuple(VERL_LOSS_KINDS))
    check_choice(fw, "kl_loss_type", kl_loss_type, tuple(VERL_LOSS_KINDS))
    check_choice(fw, "adv_estimator", adv_estimator, tuple(VERL_ADV))
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

    def describe(loss, formula, grad, ratio, source, estimator):
        """Record one implemented term: its loss and the descriptions of :class:`KLOption`."""
        losses.append(loss)
        formulas.append(formula)
        grads.append(grad)
        ratios.append(ratio)
        froms.append(source)
        if estimator == "k3":
            clamps.append("x = clamp(-u, -20, 20); value clamp [-10, 10]")

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
            describe(
                in_reward_loss(lambda lp, r, k=kind: verl_kl_penalty_forward(lp, r, k), credit),
                FORMULA[kind],
                "log pi_theta via the PPO ratio; the KL value is a detached reward",
                "PPO ratio, clipped",
                "pi_old (rollout)",
                kind,
            )
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
            base = kind.rstrip("+")
            straight = kind.endswith("+")
            describe(
                as_loss(lambda lp, r, k=kind: verl_kl_penalty(lp, r, k)),
                f"value {FORMULA[base]}, gradient of u^2/2 (straight-through)"
                if straight
                else FORMULA[base],
                "log pi_theta through u^2/2 (straight-through; the value is not differentiated)"
                if straight
                else "log pi_theta through the estimator itself",
                "none",
                "pi_theta",
                base,
            )
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
        sum_losses(*losses) if implemented else None,
        notes="; ".join(notes),
        advantage=advantage,
        variants=tuple(t for t in terms if t is not None) if implemented else (),
    )


def verl_space() -> tuple[dict, ...]:
    """The verl flag combinations (over the defaults) that :func:`klnotes.frameworks.table` lists."""
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
