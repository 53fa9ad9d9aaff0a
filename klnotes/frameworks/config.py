"""Reading a framework's settings as users write them: config files (YAML, JSON, Python literals),
command lines and launch scripts, never running any of it (chapter 9, ``klnotes audit``).

The parts: :mod:`~klnotes.frameworks.config_keys` (the settings each framework has, with defaults),
:mod:`~klnotes.frameworks.config_settings` (:class:`Setting`, :class:`Reading`, conversion and
checks), :mod:`~klnotes.frameworks.config_readers` (one reader per framework) and
:mod:`~klnotes.frameworks.files` (files and launch scripts, read as text); :func:`read` joins them."""

from __future__ import annotations

import re
from dataclasses import replace

from klnotes.frameworks.config_keys import (
    DEFAULTS_FROM,
    DEFAULTS_VERSION,
    KEYS,
    TRL_LOSS_TYPE_NAMES,
    VERL_ADV_ESTIMATORS,
    VERL_LOSS_AGG_MODES,
    Key,
)
from klnotes.frameworks.config_readers import read_klnotes, read_openrlhf, read_trl, read_verl
from klnotes.frameworks.config_settings import Reading, Setting, closest
from klnotes.frameworks.files import UsageError, script_args
from klnotes.frameworks.versions import RELEASES, defaults_for, release_range, resolve

__all__ = [
    "Key",
    "Setting",
    "Reading",
    "UsageError",
    "KEYS",
    "DEFAULTS_FROM",
    "DEFAULTS_VERSION",
    "VERL_ADV_ESTIMATORS",
    "VERL_LOSS_AGG_MODES",
    "TRL_LOSS_TYPE_NAMES",
    "read",
    "args_from_script",
    "closest",
]


def args_from_script(text: str, framework: str) -> list[str]:
    """The framework arguments of a launch script (:func:`klnotes.frameworks.files.script_args`)."""
    return list(script_args(text, framework))


def _older_defaults(framework: str, release: str) -> str:
    """Where the defaults of ``release`` were read when it is older than the newest range read
    (``""`` for the newest, whose source is :data:`DEFAULTS_FROM`)."""
    if framework == "klnotes" or release_range(framework, release) is RELEASES[framework][-1]:
        return ""
    return defaults_for(framework, release)[1]


def _openrlhf_other_trainer(launch: tuple[str, ...] | list[str]) -> str:
    """Why a script whose entry is another OpenRLHF trainer than ``openrlhf.cli.train_ppo_ray``
    (``train_dpo``, ``train_kd``, ``train_sft``, ...; the last token of ``launch``) is not
    modelled; ``""`` for a PPO launch or when no entry is named."""
    found = [m.group(1) for t in launch for m in [re.search(r"openrlhf\.cli\.(train_\w+)", t)] if m]
    if not found or found[-1] in ("train_ppo_ray", "train_ppo"):
        return ""
    return (
        f"the script launches openrlhf.cli.{found[-1]}, not openrlhf.cli.train_ppo_ray: it trains "
        "on a fixed data set (SFT, reward model, DPO/KTO preference pairs whose beta is an implicit "
        "KL to the reference, distillation from a teacher), with no KL term on the policy's own "
        "samples for the audit to read"
    )


def read(
    framework: str,
    config: str | None = None,
    args: list[str] | tuple = (),
    release: str | None = None,
    trainer: str = "",
    unread: tuple[str, ...] = (),
    notes: tuple[str, ...] = (),
    launch: tuple[str, ...] = (),
) -> Reading:
    """Read a framework's settings: a config file (verl YAML; TRL YAML/JSON/Python) and/or command-line
    arguments (verl ``key=value`` overrides, OpenRLHF argv, TRL ``--key value``, klnotes ``key=value``),
    with defaults of ``release`` (:func:`klnotes.frameworks.versions.resolve`: the named release, else the
    installed package's, else the newest). ``trainer`` picks TRL's trainer (``grpo``, ``rloo``, ``ppo``;
    read from a Python config when not given); ``unread`` adds what the caller could not read (a script).

    Raises:
        UsageError: unknown framework, unreadable or hostile file, a value of the wrong type or not allowed,
            an unresolved variable in a setting the audit uses.
    """
    args = list(args)
    if framework not in KEYS:
        raise UsageError(
            f"unknown framework {framework!r}; known: verl, openrlhf, trl, klnotes "
            f"(closest: {closest(framework, ('verl', 'openrlhf', 'trl', 'klnotes'), 0.0)!r})"
        )
    try:
        rel, why = resolve(framework, release)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if framework == "verl":
        r = read_verl(config, args, rel)
    elif framework == "openrlhf":
        if config:
            raise UsageError(
                "openrlhf takes its command line after '--' (or --script FILE), not a config file"
            )
        r = read_openrlhf(args, rel, why == "given with --release")
        other = _openrlhf_other_trainer(launch)
        if other:  # no rollouts: neither a verdict nor a step count
            r = replace(r, unmodelled=other, steps=None)
    elif framework == "trl":
        r = read_trl(config, args, rel, trainer, tuple(launch))
    else:
        r = read_klnotes(([config] if config else []) + args)
    return replace(
        r,
        release=rel,
        release_why=why,
        defaults_source=r.defaults_source or _older_defaults(framework, rel),
        unread=tuple(r.unread) + tuple(unread),
        notes=tuple(r.notes) + tuple(notes),
    )
