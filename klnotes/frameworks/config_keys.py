"""What each framework's settings are called, what they accept and what they default to (read from
each framework's source; see :data:`klnotes.frameworks.SOURCES`): the :class:`Key` table
:data:`KEYS` that :mod:`~klnotes.frameworks.config` reads settings by."""

from __future__ import annotations

from dataclasses import dataclass

from klnotes.core.variants import ESTIMATORS
from klnotes.frameworks.options import OPENRLHF_ADV, VERL_LOSS_KINDS
from klnotes.frameworks.sources import OPENRLHF_FLAG_ALIASES

__all__ = [
    "DEFAULTS_FROM",
    "DEFAULTS_VERSION",
    "KEYS",
    "Key",
    "TRL_LOSS_TYPE_NAMES",
    "TRL_PPO_ONLY",
    "TRL_TRAINER_DEFAULTS",
    "VERL_ADV_ESTIMATORS",
    "VERL_LOSS_AGG_MODES",
]

#: Where the default values below come from.
DEFAULTS_FROM: dict[str, str] = {
    "verl": "verl v0.9.0 (trainer/config/ppo_trainer.yaml, actor/actor.yaml, data/legacy_data.yaml)",
    "openrlhf": "OpenRLHF v0.11.0 (openrlhf/cli/train_ppo_ray.py)",
    "trl": "trl 1.16.0 (GRPOConfig)",
    "klnotes": "klnotes.trl_plugin",
}

#: verl v0.9.0 ``AdvantageEstimator`` values (core_algos.py); the audit models three of them.
VERL_ADV_ESTIMATORS = (
    "gae",
    "grpo",
    "reinforce_plus_plus",
    "reinforce_plus_plus_baseline",
    "remax",
    "rloo",
    "opo",
    "grpo_passk",
    "gpg",
    "rloo_vectorized",
    "grpo_vectorized",
    "optimal_token_baseline",
    "tir_optimal_token_baseline",
    "gdpo",
)
#: verl ``actor.loss_agg_mode`` values.
VERL_LOSS_AGG_MODES = (
    "token-mean",
    "token-sum",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)
#: trl 1.16.0 ``GRPOConfig.loss_type`` values; the audit models four of them.
TRL_LOSS_TYPE_NAMES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")


#: The release the defaults are read from (shown next to each default).
DEFAULTS_VERSION: dict[str, str] = {
    "verl": "verl v0.9.0",
    "openrlhf": "OpenRLHF v0.11.0",
    "trl": "trl 1.16.0",
    "klnotes": "klnotes",
}


@dataclass(frozen=True)
class Key:
    """One setting the audit reads: its name as the framework spells it today, the keyword of
    :func:`klnotes.frameworks.audit` it feeds (``""``: reported, not audited), its type
    (``bool``, ``float``, ``int``, ``str`` or ``flag`` for a store-true CLI flag), the allowed
    values (``()``: any), the default, and an older spelling (OpenRLHF before v0.10.2)."""

    name: str
    kwarg: str
    kind: str
    default: object
    allowed: tuple = ()
    alias: str = ""
    role: str = ""  # "coef" (its weight: 0 switches the term off), "updates", or ""


def _verl_keys() -> tuple[Key, ...]:
    kl_types = tuple(VERL_LOSS_KINDS)
    a, act = "algorithm.", "actor_rollout_ref.actor."
    return (
        Key(a + "use_kl_in_reward", "use_kl_in_reward", "bool", False),
        Key(a + "kl_penalty", "kl_penalty", "str", "kl", kl_types),
        Key(a + "kl_ctrl.kl_coef", "", "float", 0.001, role="coef"),
        Key(a + "kl_ctrl.type", "", "str", "fixed", ("fixed", "adaptive")),
        Key(a + "adv_estimator", "adv_estimator", "str", "gae", VERL_ADV_ESTIMATORS),
        Key(a + "norm_adv_by_std_in_grpo", "norm_adv_by_std_in_grpo", "bool", True),
        Key(a + "gamma", "", "float", 1.0),
        Key(a + "lam", "", "float", 1.0),
        Key(act + "use_kl_loss", "use_kl_loss", "bool", False),
        Key(act + "kl_loss_type", "kl_loss_type", "str", "low_var_kl", kl_types),
        Key(act + "kl_loss_coef", "", "float", 0.001, role="coef"),
        Key(act + "loss_agg_mode", "", "str", "token-mean", VERL_LOSS_AGG_MODES),
        Key(act + "ppo_epochs", "", "int", 1, role="updates"),
        Key(act + "ppo_mini_batch_size", "", "int", 256, role="updates"),
        Key("data.train_batch_size", "", "int", 1024, role="updates"),
    )


def _openrlhf_keys() -> tuple[Key, ...]:
    al = OPENRLHF_FLAG_ALIASES
    return (
        Key(
            "--algo.kl.init_coef",
            "init_kl_coef",
            "float",
            0.01,
            alias=al["--algo.kl.init_coef"],
            role="coef",
        ),
        Key(
            "--algo.kl.estimator",
            "kl_estimator",
            "str",
            "k1",
            ESTIMATORS,
            al["--algo.kl.estimator"],
        ),
        Key("--algo.kl.use_loss", "use_kl_loss", "flag", False, alias=al["--algo.kl.use_loss"]),
        Key(
            "--algo.advantage.estimator",
            "advantage_estimator",
            "str",
            "gae",
            OPENRLHF_ADV,
            al["--algo.advantage.estimator"],
        ),
        Key("--algo.kl.target", "", "float", None, alias=al["--algo.kl.target"]),
        Key("--algo.kl.horizon", "", "int", 10000, alias=al["--algo.kl.horizon"]),
        Key("--algo.advantage.lambd", "", "float", 1.0, alias=al["--algo.advantage.lambd"]),
        Key("--algo.advantage.gamma", "", "float", 1.0, alias=al["--algo.advantage.gamma"]),
        Key("--actor.eps_clip", "", "float", 0.2, alias=al["--actor.eps_clip"]),
        Key("--train.max_epochs", "", "int", 1, alias=al["--train.max_epochs"], role="updates"),
        Key("--rollout.batch_size", "", "int", 1024, alias="--rollout_batch_size", role="updates"),
        Key("--train.batch_size", "", "int", 128, alias="--train_batch_size", role="updates"),
        Key(
            "--rollout.n_samples_per_prompt",
            "",
            "int",
            1,
            alias=al["--rollout.n_samples_per_prompt"],
            role="updates",
        ),
    )


#: TRL defaults that depend on the trainer (RLOOConfig beta 0.05, PPOConfig kl_coef 0.05 and lam 0.95).
TRL_TRAINER_DEFAULTS = {"grpo": {}, "rloo": {"beta": 0.05}, "ppo": {"beta": 0.05}}


def _trl_keys() -> tuple[Key, ...]:
    return (
        Key("beta", "beta", "float", 0.0, role="coef"),
        Key("kl_estimator", "kl_estimator", "str", "k1", ("k1", "k3")),
        Key("lam", "lam", "float", 0.95),
        Key("normalize_advantages", "normalize_advantages", "bool", False),
        Key("per_device_train_batch_size", "", "int", 8, role="updates"),
        Key("generation_batch_size", "", "int", None, role="updates"),
        Key("use_bias_correction_kl", "use_bias_correction_kl", "bool", True),
        Key("num_iterations", "num_iterations", "int", 1, role="updates"),
        Key("loss_type", "loss_type", "str", "dapo", TRL_LOSS_TYPE_NAMES),
        Key("epsilon", "", "float", 0.2),
        Key("steps_per_generation", "", "int", None, role="updates"),
        Key("gradient_accumulation_steps", "", "int", 1, role="updates"),
        Key("importance_sampling_level", "", "str", "token", ("token", "sequence")),
        Key("num_ppo_epochs", "", "int", 4, role="updates"),
        Key("num_mini_batches", "", "int", 1, role="updates"),
    )


#: TRL settings of PPOConfig only (trl/experimental/ppo/ppo_config.py:132,231 @ 1.12.0).
TRL_PPO_ONLY = ("num_ppo_epochs", "num_mini_batches")


def _klnotes_keys() -> tuple[Key, ...]:
    from klnotes import trl_plugin

    return (
        Key("kl", "kl", "str", "k1_in_reward", trl_plugin.KL_NAMES),
        Key("level", "level", "str", "sequence", trl_plugin.LEVELS),
        Key("clip", "clip", "bool", True),
    )


#: Framework -> the config keys the reader looks for (:class:`Key`: names, flag, converter).
KEYS: dict[str, tuple[Key, ...]] = {
    "verl": _verl_keys(),
    "openrlhf": _openrlhf_keys(),
    "trl": _trl_keys(),
    "klnotes": _klnotes_keys(),
}
