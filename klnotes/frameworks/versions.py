"""KL-relevant defaults per framework release range, read from each release's source
(``--release``).

Each :class:`ReleaseRange` gives the defaults that differ from the newest release, with the commit
where they were read. :func:`resolve` picks the release the audit assumes: the one the user names,
else the installed package's version when it is importable, else the newest; the audit always
prints which and why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata

from klnotes.frameworks.options_verl import VERL_ADV, VERL_LOSS_KINDS
from klnotes.frameworks.sources import HOLDS

__all__ = [
    "ReleaseRange",
    "RELEASES",
    "NEWEST",
    "resolve",
    "defaults_for",
    "release_range",
    "absent_settings",
    "parse_version",
    "covers",
    "COVERS",
    "table_for",
]

#: The newest release each framework's formulas and defaults were read from.
NEWEST = {"verl": "0.9.0", "openrlhf": "0.11.0", "trl": "1.16.0", "klnotes": ""}


@dataclass(frozen=True)
class ReleaseRange:
    """Releases ``first`` to ``last`` (inclusive; ``""`` for open) of a framework, the defaults that
    differ from the newest there (by setting name as the audit spells it), and where they were
    read.

    The release ranges behind :doc:`chapter 9 </book/09_in_practice>`'s "Releases, step counts, and
    never silently wrong"; no formula.
    """

    first: str
    last: str
    defaults: tuple[tuple[str, object], ...]
    source: str
    #: ``(setting, why)`` or ``(setting=value, why)``: settings or values these releases do not
    #: have (the framework rejects them); ``"trainer=ppo"`` names a TRL trainer.
    absent: tuple[tuple[str, str], ...] = ()
    #: verl before v0.4.0: the KL is in the reward exactly when ``actor.use_kl_loss`` is False (no
    #: ``algorithm.use_kl_in_reward`` switch).
    kl_in_reward_unless_kl_loss: bool = False
    #: ``(written, setting, value)``: how these releases spell a setting the audit reads as
    #: ``setting`` (``value`` ``None``: the written value; else a store-true flag that sets it).
    renames: tuple[tuple[str, str, object], ...] = ()
    #: Non-empty: the optimizer loop of these releases takes one step per mini-batch, so a rollout
    #: batch gives ``num_ppo_epochs x num_mini_batches`` steps; the text cites that loop.
    steps: str = ""
    #: OpenRLHF: the flag spelling these releases accept (``"old"``: ``--init_kl_coef``;
    #: ``"current"``: ``--algo.kl.init_coef``, from v0.10.2); ``""``: not a question.
    spelling: str = ""
    #: A note the audit prints for these releases (e.g. a clamp they do not have).
    note: str = ""


_TR = "huggingface/trl trl/trainer"
_TG = f"{_TR}/grpo_config.py"
#: PyPI wheels read for the TRL releases after v1.9.0 (the mirror of the repository holds no tags
#: for them): ``trl-<release>-py3-none-any.whl`` and the first 12 hex digits of its sha256.
_WHL = {
    release: f"trl-{release}-py3-none-any.whl sha256 {digest}"
    for release, digest in {
        "1.9.1": "39e082710ee1",
        "1.9.2": "27847cd9b429",
        "1.10.0": "f4bdad4a10df",
        "1.11.0": "a6141964e9da",
        "1.12.0": "9c8f117b21a9",
        "1.13.0": "7c7ae0c72e96",
        "1.14.0": "10059306c0ef",
        "1.14.1": "ae406a3ca113",
        "1.14.2": "bd97adb0284f",
        "1.15.0": "9c9a4b68a184",
        "1.16.0": "c4726e139dd4",
    }.items()
}
_VERL_KL_NAMES_0_3 = ("kl", "abs", "mse", "low_var_kl", "full")
_VERL_ADV_0_3 = ("gae", "grpo", "reinforce_plus_plus", "remax", "rloo")
#: What verl before v0.4.0 does not have (each is rejected by Hydra or raises in core_algos).
_VERL_BEFORE_0_4 = (
    (
        "algorithm.use_kl_in_reward",
        "verl before v0.4.0 has no algorithm.use_kl_in_reward (added by 072fc9fe, #644): Hydra "
        "rejects the override; the KL is in the reward exactly when actor.use_kl_loss is False",
    ),
    (
        "algorithm.norm_adv_by_std_in_grpo",
        "verl before v0.4.0 has no algorithm.norm_adv_by_std_in_grpo (GRPO always divides by the "
        "group's std)",
    ),
    *(
        (f"{k}={v}", f"verl before v0.4.0 knows the KL types {', '.join(_VERL_KL_NAMES_0_3)} only")
        for k in ("algorithm.kl_penalty", "actor_rollout_ref.actor.kl_loss_type")
        for v in VERL_LOSS_KINDS
        if v not in _VERL_KL_NAMES_0_3
    ),
    *(
        (
            f"algorithm.adv_estimator={v}",
            f"verl before v0.4.0 has the advantage estimators {', '.join(_VERL_ADV_0_3)} only",
        )
        for v in VERL_ADV
        if v not in _VERL_ADV_0_3
    ),
)
_OR = "OpenRLHF openrlhf/cli/train_ppo_ray.py"
_OR_ADV = ("gae", "reinforce", "rloo", "reinforce_baseline", "group_norm", "dr_grpo")


_OR_NO_CLAMP = (
    "no [-10, 10] clamp on the KL value before v0.8.6 (d90b3d1f; openrlhf/models/utils.py:40 @ "
    "v0.8.6): the clamp condition below does not apply, the value is the estimator itself"
)


def _openrlhf_range(first, last, lambd, n_adv, kl_loss, kl_flag, source, spelling="old"):
    """An OpenRLHF release range: ``--lambd`` default, the first ``n_adv`` advantage estimators
    of :data:`_OR_ADV` (0: no ``--advantage_estimator``), whether ``--use_kl_loss`` exists, and
    whether the estimator is ``--kl_estimator`` (else ``--use_kl_estimator_k3``)."""
    absent = []
    if not kl_loss:
        absent.append(("--algo.kl.use_loss", "OpenRLHF has no --use_kl_loss before v0.6.0"))
    if not kl_flag:
        absent.append(
            (
                "--algo.kl.estimator",
                "OpenRLHF has no --kl_estimator before v0.6.0.post1 (3e3b2495): its k3 switch is "
                "--use_kl_estimator_k3",
            )
        )
    else:
        absent.append(
            (
                "--use_kl_estimator_k3",
                "OpenRLHF replaced --use_kl_estimator_k3 by --kl_estimator k3 in v0.6.0.post1",
            )
        )
    if n_adv == 0:
        absent.append(
            ("--algo.advantage.estimator", "OpenRLHF has no --advantage_estimator before v0.5.1")
        )
    absent += [
        (
            f"--algo.advantage.estimator={a}",
            f"OpenRLHF {last or first} knows the advantage estimators "
            f"{', '.join(_OR_ADV[:n_adv])} only",
        )
        for a in _OR_ADV[max(n_adv, 1) :]
    ]
    return ReleaseRange(
        first,
        last,
        (("--algo.advantage.lambd", lambd),) if lambd != 1.0 else (),
        f"{_OR} {source}",
        absent=tuple(absent),
        renames=() if kl_flag else (("--use_kl_estimator_k3", "--algo.kl.estimator", "k3"),),
        spelling=spelling,
        note=_OR_NO_CLAMP if tuple(map(int, re.findall(r"\d+", first)[:3])) < (0, 8, 6) else "",
    )


#: TRL's PPOConfig weighs its KL with ``kl_coef``; it has no ``beta`` at any release (TRL rejects
#: the flag), so the audit does too.
_PPO_NO_BETA = (
    "beta",
    "PPOConfig has no beta: its KL weight is kl_coef (trl/trainer/ppo_config.py:86 @ v0.14.0 "
    "(49711efa); trl/experimental/ppo/ppo_config.py:240 @ v1.9.0 (35def3ee))",
)


#: Ranges, oldest first; releases after the last range use the newest defaults (config.KEYS).
RELEASES: dict[str, tuple[ReleaseRange, ...]] = {
    "trl": (
        ReleaseRange(
            "0.14.0",
            "0.16.1",
            (("beta", 0.04), ("loss_type", "grpo"), ("use_bias_correction_kl", False)),
            f"{_TG}:173 @ v0.14.0 (49711efa): beta 0.04; no loss_type (per-sequence mean, as "
            f"'grpo'); "
            "no use_bias_correction_kl",
        ),
        ReleaseRange(
            "0.17.0",
            "0.18.2",
            (("beta", 0.04), ("loss_type", "bnpo"), ("use_bias_correction_kl", False)),
            f"{_TG}:307,345 @ v0.17.0 (cd6b3de3): beta 0.04, loss_type bnpo",
        ),
        ReleaseRange(
            "0.19.0",
            "0.21.0",
            (("beta", 0.0), ("loss_type", "bnpo"), ("use_bias_correction_kl", False)),
            f"{_TG}:412,458 @ v0.19.0 (5b3ea9dd): beta 0.0, loss_type bnpo",
        ),
        ReleaseRange(
            "0.22.0",
            "1.9.2",
            (("beta", 0.0), ("loss_type", "dapo"), ("use_bias_correction_kl", False)),
            f"{_TG}:671,791,962 @ v1.9.0 (35def3ee): beta 0.0, loss_type dapo, "
            "use_bias_correction_kl False (added in v0.26.0, 84794a7d:762); the same lines in "
            f"1.9.1 ({_WHL['1.9.1']}) and 1.9.2 ({_WHL['1.9.2']})",
        ),
        ReleaseRange(
            "1.10.0",
            "1.12.0",
            (),
            f"{_TG}:674,794,965 @ 1.10.0 ({_WHL['1.10.0']}) and 1.11.0 ({_WHL['1.11.0']}), "
            f"1.12.0 ({_WHL['1.12.0']}): beta 0.0, loss_type dapo, use_bias_correction_kl True "
            "(flipped by commit 6672ba32 'Default use_bias_correction_kl=True in GRPOConfig', "
            "2026-07-22, first released in 1.10.0); RLOOConfig beta 0.05, num_iterations 1, "
            "normalize_advantages False (rloo_config.py:494,501,523 @ 1.10.0; :495,502,524 @ 1.11.0 "
            "and 1.12.0); PPOConfig in trl/experimental/ppo/ppo_config.py:240,244,269,232,133 @ "
            "1.10.0 (:239,243,268,231,132 @ 1.11.0 and 1.12.0): kl_coef 0.05, kl_estimator k1, "
            "lam 0.95, num_ppo_epochs 4, num_mini_batches 1",
        ),
        ReleaseRange(
            "1.13.0",
            "",
            (),
            f"{_TG}:676,796,967 @ 1.13.0 ({_WHL['1.13.0']}) to 1.15.0 ({_WHL['1.15.0']}; also "
            f"1.14.0 {_WHL['1.14.0']}, 1.14.1 {_WHL['1.14.1']}, 1.14.2 {_WHL['1.14.2']}) and "
            f":681,801,972 @ 1.16.0 ({_WHL['1.16.0']}): beta 0.0, loss_type dapo, "
            "use_bias_correction_kl True; RLOOConfig beta 0.05 (rloo_config.py:497 / :502); "
            "trl/experimental/ppo is not in these wheels",
        ),
    ),
    "trl:rloo": (
        ReleaseRange(
            "0.14.0",
            "0.21.0",
            (("num_ppo_epochs", 4), ("num_mini_batches", 1)),
            f"{_TR}/rloo_config.py:75,67,95 @ v0.14.0 (49711efa) and :79,71,99 @ v0.21.0 "
            "(46d09bd2): the on-policy RLOOConfig, kl_coef 0.05, num_ppo_epochs 4, "
            "normalize_advantage False; num_mini_batches 1 (OnPolicyConfig, trl/trainer/utils.py:1039 "
            "@ v0.14.0, :782 @ v0.21.0); rloo_trainer.py:404,429-441 @ v0.14.0 and v0.21.0: kl = "
            "logprobs - ref_logprobs summed over the sequence, reward - kl_coef * kl, leave-one-out "
            "baseline over rloo_k samples, whitened if normalize_advantage (token_level_kl sums the "
            "same per-token rewards: the same objective); the PPO ratio is the sequence's "
            "(new_logprobs.sum(1))",
            absent=tuple(
                (
                    name,
                    "the on-policy RLOOConfig of trl 0.14.0 to 0.21.0 has no "
                    f"{name} (its settings are kl_coef, rloo_k, num_ppo_epochs, num_mini_batches, "
                    "normalize_advantage; the GRPO-like RLOOConfig came in 0.22.0)",
                )
                for name in (
                    "beta",
                    "normalize_advantages",
                    "num_iterations",
                    "steps_per_generation",
                    "generation_batch_size",
                )
            ),
            renames=(
                ("kl_coef", "beta", None),
                ("normalize_advantage", "normalize_advantages", None),
            ),
            steps=f"{_TR}/rloo_trainer.py:127-129,446-494 @ v0.21.0 (46d09bd2)",
        ),
        ReleaseRange(
            "0.22.0",
            "0.24.0",
            (),
            f"{_TR}/rloo_config.py:422,429,451 @ v0.22.0 (3a6b365c) and :568,575,597 @ v0.24.0 "
            "(04fd1203): the GRPO-like RLOOConfig, beta 0.05, num_iterations 1, "
            "normalize_advantages False; rloo_trainer.py:1250-1255 @ v0.22.0: per-token old - ref "
            "summed over the sequence, rewards - beta * kl; rloo_config.py:585-612 @ v0.22.0: "
            "__post_init__ maps the deprecated kl_coef -> beta, num_ppo_epochs -> num_iterations, "
            "num_mini_batches -> steps_per_generation with a warning (removed in 0.25.0)",
            absent=(
                (
                    "normalize_advantage",
                    "RLOOConfig has no normalize_advantage from 0.22.0 (normalize_advantages)",
                ),
            ),
            renames=(
                ("kl_coef", "beta", None),
                ("num_ppo_epochs", "num_iterations", None),
                ("num_mini_batches", "steps_per_generation", None),
            ),
        ),
        ReleaseRange(
            "0.25.0",
            "",
            (),
            f"{_TR}/rloo_config.py:440,447,469 @ v0.25.0 (55f5433e) to :494,501,523 @ v1.9.0 "
            "(35def3ee), and the wheels of 1.10.0 on (see the trl table): beta 0.05, "
            "num_iterations 1, normalize_advantages False; the deprecated names are gone",
            absent=tuple(
                (
                    old,
                    f"RLOOConfig has no {old} from 0.25.0 (deprecated in 0.22.0, then removed); "
                    f"it is spelled {new}",
                )
                for old, new in (
                    ("kl_coef", "beta"),
                    ("num_ppo_epochs", "num_iterations"),
                    ("num_mini_batches", "steps_per_generation"),
                    ("normalize_advantage", "normalize_advantages"),
                )
            ),
        ),
    ),
    "trl:ppo": (
        ReleaseRange(
            "0.14.0",
            "0.16.1",
            (),
            f"{_TR}/ppo_config.py:86,106,78 @ v0.14.0 (49711efa) to v0.16.1: kl_coef 0.05, lam "
            "0.95, num_ppo_epochs 4; num_mini_batches 1 (trl/trainer/utils.py:1039 @ v0.14.0); no "
            "kl_estimator: ppo_trainer.py:510 @ v0.14.0, kl = logprobs - ref_logprobs (k1)",
            absent=(
                _PPO_NO_BETA,
                (
                    "kl_estimator",
                    "PPOConfig has no kl_estimator before 0.17.0 (the KL is k1: "
                    "trl/trainer/ppo_trainer.py:510 @ v0.14.0)",
                ),
            ),
            renames=(("kl_coef", "beta", None),),
            steps=f"{_TR}/ppo_trainer.py:197-199,538-586 @ v0.14.0 (49711efa); changed by "
            "e90117b3 (#2531), first in v0.17.0",
        ),
        ReleaseRange(
            "0.17.0",
            "1.12.0",
            (),
            f"{_TR}/ppo_config.py:91,95,120,83 @ v0.17.0 (cd6b3de3): kl_estimator k1 added, "
            "kl_coef 0.05, lam 0.95, num_ppo_epochs 4; ppo_trainer.py:196 @ v0.17.0: "
            "local_batch_size = per_device x gas (#2531); trl/experimental/ppo/ppo_config.py:"
            "240,244,269,232,133 @ v1.9.0 (35def3ee) and in the 1.10.0 to 1.12.0 wheels (see the "
            "trl table): the same defaults",
            absent=(_PPO_NO_BETA,),
            renames=(("kl_coef", "beta", None),),
        ),
        ReleaseRange(
            "1.13.0",
            "",
            (),
            "trl 1.13.0 to 1.16.0 wheels (see the trl table): trl/experimental/ppo is absent",
            absent=(
                _PPO_NO_BETA,
                (
                    "trainer=ppo",
                    "PPOConfig/PPOTrainer are not in trl 1.13.0 or later (trl/experimental/ppo is "
                    "absent from the 1.13.0 to 1.16.0 wheels; last in 1.12.0): give --release "
                    "1.12.0 or older if you run an older TRL",
                ),
            ),
            renames=(("kl_coef", "beta", None),),
        ),
    ),
    "openrlhf": (
        _openrlhf_range(
            "0.5.0",
            "0.5.0",
            0.95,
            0,
            False,
            False,
            "@ v0.5.0 (4a91e765):265,281-283: --lambd 0.95, --init_kl_coef 0.01, "
            "--use_kl_estimator_k3 (store_true); no --advantage_estimator (GAE, a critic), no "
            "--use_kl_loss, no --kl_estimator",
        ),
        _openrlhf_range(
            "0.5.1",
            "0.5.2",
            0.95,
            2,
            False,
            False,
            "@ v0.5.1 (3b116caf):299,267,285: --advantage_estimator gae|reinforce (default gae); --lambd "
            "0.95, --use_kl_estimator_k3, no --use_kl_loss",
        ),
        _openrlhf_range(
            "0.5.3",
            "0.5.6",
            0.95,
            3,
            False,
            False,
            "@ v0.5.3 (a96c961e):300: rloo added to --advantage_estimator; --lambd 0.95",
        ),
        _openrlhf_range(
            "0.5.7",
            "0.5.9",
            1.0,
            3,
            False,
            False,
            "@ v0.5.7 (efedd74d):272: --lambd 1.0 (the rest as v0.5.3)",
        ),
        _openrlhf_range(
            "0.6.0",
            "0.6.0.post0",
            0.95,
            5,
            True,
            False,
            "@ v0.6.0 (bfa85f6f):300,333,339,319: --lambd 0.95 again, --advantage_estimator adds "
            "reinforce_baseline and group_norm, --use_kl_loss added (default off); still "
            "--use_kl_estimator_k3",
        ),
        _openrlhf_range(
            "0.6.0.post1",
            "0.6.3.post1",
            0.95,
            5,
            True,
            True,
            "@ v0.6.0.post1 (3e3b2495):327,308: --kl_estimator k1|k2|k3 (default k1) replaces "
            "--use_kl_estimator_k3; --lambd 0.95",
        ),
        _openrlhf_range(
            "0.6.3.post2",
            "0.6.3",
            0.95,
            6,
            True,
            True,
            "@ v0.6.3.post2 (daafcac6):353,314: dr_grpo added to --advantage_estimator; --lambd 0.95",
        ),
        _openrlhf_range(
            "0.6.4",
            "0.8.5",
            1.0,
            6,
            True,
            True,
            "@ v0.6.4 (ebbe2cb6):317,342,356,362 (--lambd 1, 8ff73978; --kl_estimator k1, "
            "--advantage_estimator gae, --use_kl_loss off); openrlhf/models/utils.py "
            "compute_approx_kl has no clamp before v0.8.6",
        ),
        _openrlhf_range(
            "0.8.6",
            "0.10.1",
            1.0,
            6,
            True,
            True,
            "@ v0.9.1 (ac18582b):327,332,344,347,360,369,372,392,398: --rollout_batch_size 1024, "
            "--max_epochs 1, --lambd 1, --train_batch_size 128, --n_samples_per_prompt 1, "
            "--init_kl_coef 0.01, --kl_estimator k1, --advantage_estimator gae, --use_kl_loss "
            "off; the same at v0.10.1 (33f9d72f); openrlhf/models/utils.py:40 @ v0.8.6: the "
            "[-10, 10] clamp of compute_approx_kl (d90b3d1f)",
        ),
        _openrlhf_range(
            "0.10.2",
            "",
            1.0,
            6,
            True,
            True,
            "@ v0.10.2 (64c1cc4f) and v0.11.0 (3c3be623):373,378,391,394,414,419,422,478,485: the "
            "dotted spelling (ed62d0e2): --rollout.batch_size 1024, --train.max_epochs 1, "
            "--algo.advantage.lambd 1, --train.batch_size 128, --rollout.n_samples_per_prompt 1, "
            "--algo.kl.init_coef 0.01, --algo.kl.estimator k1, --algo.advantage.estimator gae, "
            "--algo.kl.use_loss off",
            spelling="current",
        ),
    ),
    "verl": (
        ReleaseRange(
            "0.2.0",
            "0.3.0",
            (),
            "verl verl/trainer/ppo/ray_trainer.py:882-888 @ v0.3.0.post1 (070ed6ac), :917-923 @ "
            "v0.2.0.post2 (fb532783): apply_kl_penalty runs whenever actor.use_kl_loss is False; "
            "ppo_trainer.yaml:35-38,170-176 @ v0.3.0.post1: no algorithm.use_kl_in_reward, "
            "kl_penalty kl, kl_ctrl.kl_coef 0.001, use_kl_loss False; core_algos.py:351-380 "
            "(kl_penalty names kl, abs, mse, low_var_kl, full; low_var_kl clamps its value to "
            "[-10, 10] but not -u to [-20, 20]); ray_trainer.py:63-71 (estimators "
            "gae, grpo, reinforce_plus_plus, remax, rloo). Changed by 072fc9fe (#644, 2025-04-01; "
            "first in v0.4.0)",
            absent=_VERL_BEFORE_0_4,
            kl_in_reward_unless_kl_loss=True,
        ),
        ReleaseRange(
            "0.4.0",
            "0.5.0",
            (),
            "verl ppo_trainer.yaml:230-238 and ray_trainer.py:1124-1128 @ v0.4.0 (07584894): "
            "algorithm.use_kl_in_reward (default False) switches the in-reward KL on its own; "
            "ppo_trainer.yaml:144-171, actor/actor.yaml:69-82 @ v0.5.0 (8fdc4d3f): the same KL "
            "defaults as v0.9.0",
            absent=tuple(
                (f"{k}={v}", "the straight-through '+' KL types need verl v0.8.0 (PR #6058)")
                for k in ("algorithm.kl_penalty", "actor_rollout_ref.actor.kl_loss_type")
                for v in VERL_LOSS_KINDS
                if v.endswith("+")
            ),
        ),
        ReleaseRange(
            "0.6.0",
            "",
            (),
            "verl verl/trainer/config/ppo_trainer.yaml, actor/actor.yaml checked at each "
            "tag v0.6.0 to v0.9.0 (483b8a00): the same KL defaults; '+' kl types need v0.8.0",
        ),
    ),
    "klnotes": (ReleaseRange("", "", (), "this repository"),),
}

_PYPI = {"verl": "verl", "openrlhf": "openrlhf", "trl": "trl"}


def parse_version(text: str) -> tuple[int, ...]:
    """``"v0.19.1"`` -> ``(0, 19, 1, 0)``; ``"0.6.0.post1"`` -> ``(0, 6, 0, 1)`` (the last number
    is the post-release).

    Used by :func:`resolve` (:doc:`chapter 9 </book/09_in_practice>`); no formula.

    Raises:
        ValueError: not of the form ``[v]MAJOR.MINOR[.PATCH][.postN]`` (the message shows the value).
    """
    m = re.fullmatch(
        r"v?(\d+)\.(\d+)(?:\.(\d+))?(?:[.\-]?post(\d+)|[.\-+]?\w*)?", str(text).strip()
    )
    if not m:
        raise ValueError(f"release {text!r} is not a version like 0.19.0 or v0.9.0")
    return tuple(int(x or 0) for x in m.groups())


def _show(v: tuple[int, ...]) -> str:
    return ".".join(map(str, v[:3])) + (f".post{v[3]}" if v[3] else "")


def table_for(framework: str, trainer: str = "") -> str:
    """The key of :data:`RELEASES` for ``framework`` and TRL's ``trainer`` (``"trl:rloo"``,
    ``"trl:ppo"``; GRPO and the other frameworks: ``framework``)."""
    return f"{framework}:{trainer}" if f"{framework}:{trainer}" in RELEASES else framework


def _range_text(r: ReleaseRange, v: str) -> str:
    """``"v0.6.4 to v0.10.1"``, ``"v0.5.0"`` (one release), ``"v0.6.3.post2 on"`` (post-releases)."""
    last = r.last.removesuffix(".post0")
    if not last:
        return f"{v}{r.first} to the newest read"
    if last == r.first:
        return f"{v}{last}"
    if r.first.startswith(last + ".post"):
        return f"{v}{r.first} and later post-releases of {v}{last}"
    return f"{v}{r.first} to {v}{last}"


def covers(framework: str) -> str:
    """The release ranges :data:`RELEASES` holds for ``framework`` (and its TRL trainers), as text:
    ``"0.14.0 to 0.16.1, 0.17.0 to ... (newest read: 1.16.0)"``; :data:`klnotes.frameworks.sources.COVERS`
    is built from it."""
    if framework == "klnotes":
        return "this repository"
    v = "v" if framework != "trl" else ""
    parts = []
    for table in sorted(t for t in RELEASES if t.split(":")[0] == framework):
        ranges = ", ".join(_range_text(r, v) for r in RELEASES[table])
        name = {"trl": "GRPO", "trl:rloo": "RLOO", "trl:ppo": "PPO"}.get(table, "")
        parts.append(f"{name + ': ' if name else ''}{ranges}")
        absent = [
            f"{v}{r.first}" + (f" to {v}{r.last}" if r.last else " on")
            for r in RELEASES[table]
            if any(name == "trainer=ppo" for name, _ in r.absent)
        ]
        if absent:
            parts[-1] += f" (PPO absent from {', '.join(absent)})"
    return (
        f"{framework} release ranges read (klnotes.frameworks.versions.RELEASES): "
        + "; ".join(parts)
        + f"; newest read: {v}{NEWEST[framework]}"
    )


def resolve(framework: str, release: str | None = None) -> tuple[str, str]:
    """``(release, why)``: the named ``release``, else the installed package's version, else the
    newest.

    (:doc:`chapter 9 </book/09_in_practice>`, "Releases, step counts, and never silently wrong"; no
    formula.)

    Raises:
        ValueError: a release older than the first range read (the message gives the range covered).
    """
    if framework == "klnotes":
        return "", "this repository"
    if release:
        v = parse_version(release)
        first = parse_version(RELEASES[framework][0].first)
        if v < first:
            raise ValueError(
                f"{framework} release {release!r} is older than the releases read "
                f"({RELEASES[framework][0].first} onwards)"
            )
        return _show(v), "given with --release"
    try:
        installed = metadata.version(_PYPI[framework])
    except metadata.PackageNotFoundError:
        return NEWEST[framework], "the newest release read (the package is not installed here)"
    try:
        parse_version(installed)
    except ValueError:
        return NEWEST[
            framework
        ], f"the newest release read (installed version {installed!r} not understood)"
    return installed, "the installed package's version"


def defaults_for(framework: str, release: str) -> tuple[dict, str]:
    """``(overrides, source)``: the defaults that differ from the newest at ``release``, and where
    read.

    (:doc:`chapter 9 </book/09_in_practice>`, "Releases, step counts, and never silently wrong"; no
    formula.)
    """
    if not release:
        return {}, RELEASES[framework][-1].source
    v = parse_version(release)
    r = release_range(framework, release)
    if r is not None:
        return dict(r.defaults), r.source
    older = [r for r in RELEASES[framework] if parse_version(r.first or "0.0") <= v]
    if older and older[-1] is not RELEASES[framework][-1]:
        # between two ranges read: take the older one's defaults and say so
        return dict(older[-1].defaults), older[-1].source + (
            f" (release {release} lies between the releases read)"
        )
    return {}, RELEASES[framework][-1].source + (
        f" (release {release} is newer than the releases read)"
    )


def release_range(framework: str, release: str) -> ReleaseRange | None:
    """The :class:`ReleaseRange` of :data:`RELEASES` that holds ``release`` (``""``: the newest),
    else ``None`` (a release between or after the ranges read)."""
    if not release:
        return RELEASES[framework][-1]
    v = parse_version(release)
    for r in RELEASES[framework]:
        lo = parse_version(r.first) if r.first else (0,)
        hi = parse_version(r.last) if r.last else (10**6,)
        if r.last and "post" not in r.last:
            hi = hi[:3] + (10**6,)  # "0.3.0" holds its post-releases (0.3.0.post1)
        if lo <= v <= hi:
            return r
    return None


def absent_settings(framework: str, release: str, values: dict) -> list[str]:
    """Why each of ``values`` (setting name -> value, as given by the user) is not in ``release``:
    the :attr:`ReleaseRange.absent` entries naming the setting, or the setting with its value
    (``"trainer"`` for TRL's trainer), in the order of :attr:`ReleaseRange.absent`."""
    r = release_range(framework, release)
    if r is None:
        return []
    given = set(values) | {f"{k}={v}" for k, v in values.items()}
    return [f"{name}: {why}" for name, why in r.absent if name in given]


#: Framework -> the release ranges of :data:`RELEASES` (:func:`covers`) and what the formulas
#: hold for (:data:`klnotes.frameworks.sources.HOLDS`): the ``covers`` line of every audit.
COVERS: dict[str, str] = {
    fw: covers(fw) + ("" if fw == "klnotes" else f". {HOLDS[fw]}") for fw in HOLDS
}
