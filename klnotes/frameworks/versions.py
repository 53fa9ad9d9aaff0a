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

__all__ = [
    "ReleaseRange",
    "RELEASES",
    "NEWEST",
    "resolve",
    "defaults_for",
    "release_range",
    "absent_settings",
    "parse_version",
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


_TG = "huggingface/trl trl/trainer/grpo_config.py"
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
            absent=(
                (
                    "trainer=ppo",
                    "PPOConfig/PPOTrainer are not in trl 1.13.0 or later (trl/experimental/ppo is "
                    "absent from the 1.13.0 to 1.16.0 wheels; last in 1.12.0): give --release "
                    "1.12.0 or older if you run an older TRL",
                ),
            ),
        ),
    ),
    "openrlhf": (
        ReleaseRange(
            "0.5.0",
            "0.6.3",
            (("--algo.advantage.lambd", 0.95),),
            "OpenRLHF openrlhf/cli/train_ppo_ray.py before 8ff73978 (March 2025, first in v0.6.4): "
            "--lambd 0.95",
        ),
        ReleaseRange(
            "0.6.4",
            "0.10.1",
            (),
            "OpenRLHF v0.6.4 to v0.10.1: the newest KL defaults, older flag "
            "spellings (--init_kl_coef ...; renamed in v0.10.2, ed62d0e2)",
        ),
        ReleaseRange(
            "0.10.2",
            "",
            (),
            "OpenRLHF openrlhf/cli/train_ppo_ray.py @ v0.11.0 (3c3be623): "
            "--algo.kl.init_coef 0.01, --algo.kl.estimator k1, --algo.advantage.estimator gae",
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
    """``"v0.19.1"`` -> ``(0, 19, 1)``.

    Used by :func:`resolve` (:doc:`chapter 9 </book/09_in_practice>`); no formula.

    Raises:
        ValueError: not of the form ``[v]MAJOR.MINOR[.PATCH]`` (the message shows the value).
    """
    m = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.(\d+))?(?:[.\-+]?\w*)?", str(text).strip())
    if not m:
        raise ValueError(f"release {text!r} is not a version like 0.19.0 or v0.9.0")
    return tuple(int(x or 0) for x in m.groups())


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
        return ".".join(map(str, v)), "given with --release"
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
