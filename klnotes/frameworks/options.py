"""Each framework's KL options as data: :class:`KLOption` (:mod:`~klnotes.frameworks.kloption`), the
builders that turn flag values into one (one module per framework:
:mod:`~klnotes.frameworks.options_verl`, :mod:`~klnotes.frameworks.options_openrlhf`,
:mod:`~klnotes.frameworks.options_trl`, :mod:`~klnotes.frameworks.options_klnotes`), and
:data:`FRAMEWORKS`, which names each framework's builder, defaults and table rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from klnotes.core.variants import ESTIMATORS
from klnotes.frameworks.kloption import (
    CREDIT,
    CREDIT_LEVELS,
    DETACHED_RATIOS,
    FORMULA,
    KLOption,
    TokenLoss,
    no_kl_option,
    term_variant,
)
from klnotes.frameworks.options_klnotes import klnotes_option
from klnotes.frameworks.options_openrlhf import OPENRLHF_ADV, openrlhf_option
from klnotes.frameworks.options_trl import TRL_LOSS_TYPES, trl_option
from klnotes.frameworks.options_verl import (
    VERL_ADV,
    VERL_KINDS,
    VERL_LOSS_KINDS,
    verl_estimator,
    verl_option,
    verl_space,
)

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


#: Framework name -> its :class:`FrameworkSpec` (builder, default flags, table rows).
FRAMEWORKS: dict[str, FrameworkSpec] = {
    "verl": FrameworkSpec(
        verl_option,
        dict(
            use_kl_in_reward=False,
            kl_penalty="kl",
            adv_estimator="gae",
            use_kl_loss=False,
            kl_loss_type="low_var_kl",
            norm_adv_by_std_in_grpo=True,
        ),
        verl_space(),
    ),
    "openrlhf": FrameworkSpec(
        openrlhf_option,
        dict(init_kl_coef=0.01, kl_estimator="k1", use_kl_loss=False, advantage_estimator="gae"),
        tuple(
            [{}, dict(init_kl_coef=0.0)]
            + [dict(kl_estimator=k, advantage_estimator="reinforce") for k in ESTIMATORS]
            + [dict(use_kl_loss=True, kl_estimator=k) for k in ESTIMATORS]
        ),
    ),
    "trl": FrameworkSpec(
        trl_option,
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
        klnotes_option,
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
