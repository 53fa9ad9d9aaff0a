"""The klnotes TRL plug-in's KL options as data: the builder of the
:class:`~klnotes.frameworks.kloption.KLOption` of :class:`klnotes.trl_plugin.PrincipledKLGRPOTrainer`."""

from __future__ import annotations

from dataclasses import replace

from klnotes.frameworks.kloption import CREDIT_LEVELS, KLOption, check_bool, check_choice
from klnotes.frameworks.sources import VERSIONS

__all__ = ["klnotes_option"]


def klnotes_option(kl, level, clip) -> KLOption:
    """The :class:`KLOption` of the plug-in at ``kl``, ``level`` and ``clip``
    (:data:`klnotes.trl_plugin.KL_NAMES`, :data:`klnotes.trl_plugin.LEVELS`)."""
    from klnotes import trl_plugin

    fw = "klnotes"
    check_choice(fw, "kl", kl, trl_plugin.KL_NAMES)
    check_choice(fw, "level", level, trl_plugin.LEVELS)
    check_bool(fw, "clip", clip)
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
