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

__all__ = ["ReleaseRange", "RELEASES", "NEWEST", "resolve", "defaults_for", "parse_version"]

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


_TG = "huggingface/trl trl/trainer/grpo_config.py"
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
            "1.9.0",
            (("beta", 0.0), ("loss_type", "dapo"), ("use_bias_correction_kl", False)),
            f"{_TG}:671,791,962 @ v1.9.0 (35def3ee): beta 0.0, loss_type dapo, "
            f"use_bias_correction_kl "
            "False (added in v0.26.0, 84794a7d:762)",
        ),
        ReleaseRange(
            "1.16.0",
            "",
            (),
            "trl 1.16.0 from PyPI (trl/trainer/grpo_config.py): use_bias_correction_kl "
            "True; the flip happened between 1.9.0 and 1.16.0 (the releases in between were not "
            "read)",
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
    for r in RELEASES[framework]:
        lo = parse_version(r.first) if r.first else (0,)
        hi = parse_version(r.last) if r.last else (10**6,)
        if lo <= v <= hi:
            return dict(r.defaults), r.source
    later = [r for r in RELEASES[framework] if parse_version(r.first or "0.0") > v]
    if later:  # between two ranges read: take the older one's defaults and say so
        prev = [r for r in RELEASES[framework] if parse_version(r.first or "0.0") <= v][-1]
        return dict(
            prev.defaults
        ), prev.source + f" (release {release} lies between the releases read)"
    return {}, RELEASES[framework][
        -1
    ].source + f" (release {release} is newer than the releases read)"
