"""Each framework's settings reader: verl (YAML and ``key=value`` overrides), OpenRLHF (argv),
TRL (a config file and ``--key value``) and the klnotes plug-in (``key=value``); each returns a
:class:`~klnotes.frameworks.config_settings.Reading`."""

from __future__ import annotations

import re
from dataclasses import replace

from klnotes.frameworks.config_keys import KEYS, TRL_PPO_ONLY, TRL_TRAINER_DEFAULTS, Key
from klnotes.frameworks.config_settings import (
    Reading,
    Setting,
    check_unknown,
    closest,
    parse_argv,
    read_settings,
    step_count,
)
from klnotes.frameworks.files import UsageError, load_mapping
from klnotes.frameworks.options import TRL_LOSS_TYPES
from klnotes.frameworks.versions import absent_settings, defaults_for, release_range, table_for

__all__ = [
    "read_verl",
    "read_openrlhf",
    "read_trl",
    "read_klnotes",
    "launch_processes",
    "LAUNCH_FLAGS",
    "trl_trainer_of_launch",
]


def _resolve_interpolations(given: dict) -> None:
    """OmegaConf ``${a.b}`` values that name another setting of the same file take its value."""
    for _ in range(8):  # chains of interpolations, bounded
        changed = False
        for k, v in given.items():
            if isinstance(v, str) and v.startswith("${") and v.endswith("}") and v[2:-1] in given:
                given[k] = given[v[2:-1]]
                changed = True
        if not changed:
            return


def _verl_absent(user: dict, origin_of: dict, release: str, notes: list) -> list[str]:
    """What of the user's verl settings ``release`` does not have (:func:`absent_settings`): a
    value it does not know, or a key given on the command line without ``+`` (Hydra rejects it),
    is returned; a key from a file or given with ``+`` is ignored by verl, which ``notes`` says."""
    out = []
    for why in absent_settings("verl", release, user):
        name = why.split(":", 1)[0]
        where, written = origin_of.get(name, ("", ""))
        if "=" in name or (where == "command line" and not written.startswith("+")):
            out.append(f"verl {release} rejects {why}")
        else:
            notes.append(
                f"{name} is not in verl {release}: given with '+' or in a config file, "
                "verl ignores it"
            )
    return out


def _verl_kl_in_reward_unless_kl_loss(settings: list, v: dict, release: str, notes: list):
    """verl before v0.4.0: the KL is in the reward exactly when ``actor.use_kl_loss`` is False
    (``ray_trainer.py:882`` @ v0.3.0.post1); ``algorithm.use_kl_in_reward`` takes that value."""
    key, loss = "algorithm.use_kl_in_reward", "actor_rollout_ref.actor.use_kl_loss"
    on = v[loss] is not True
    origin = next(s.origin for s in settings if s.key == loss)
    rule = f"verl {release}: not {loss} (no use_kl_in_reward switch before v0.4.0)"
    derived = f"default ({rule})" if origin.startswith("default") else f"derived ({rule})"
    settings = [replace(s, value=on, origin=derived) if s.key == key else s for s in settings]
    notes.append(
        f"verl {release} (before v0.4.0, 072fc9fe) puts the KL in the reward exactly when {loss} "
        f"is False (verl/trainer/ppo/ray_trainer.py:882 @ v0.3.0.post1): "
        + ("in the reward here" if on else "not in the reward here")
    )
    return settings, {**v, key: on}


def _apply_renames(rng, given: dict, origin_of: dict, where: str) -> list[str]:
    """Move the settings ``rng`` (a :class:`~klnotes.frameworks.versions.ReleaseRange`) spells
    differently to the audit's names, in place; the notes that say so."""
    notes = []
    for written, name, value in rng.renames if rng is not None else ():
        if written not in given:
            continue
        if name in given:
            raise UsageError(
                f"{written} and {name} are both given: {where} reads {written} as {name}; give one"
            )
        raw = given.pop(written)
        given[name], origin_of[name] = raw if value is None else value, origin_of.pop(written)
        notes.append(
            f"{where} spells {name} as {written}" + ("" if value is None else f" ({name}={value})")
        )
    return notes


def read_verl(config: str | None, overrides: list[str], release: str = "") -> Reading:
    """verl's settings from a YAML ``config`` (flattened to dotted keys) and Hydra ``overrides``
    (``key=value``, ``+key=value``, ``~key``), with the defaults of ``release``."""
    given, origin_of, unread = {}, {}, ()
    if config:
        mapping, unread, _ = load_mapping(config)
        for k, v in mapping.items():
            given[k], origin_of[k] = v, (str(config), k)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.lstrip("+")
        if key.startswith("~"):
            given.pop(key[1:], None)
            origin_of.pop(key[1:], None)
            continue
        if not sep:
            raise UsageError(
                f"verl override {item!r} must be key=value (e.g. algorithm.use_kl_in_reward=True)"
            )
        given[key], origin_of[key] = raw, ("command line", item)
    _resolve_interpolations(given)
    known = [k.name for k in KEYS["verl"]]
    problems, ignored = check_unknown("verl", [k for k in given if k not in known], known)
    settings, v = read_settings(
        "verl", {k: given[k] for k in given if k in known}, origin_of, release
    )
    a, act = "algorithm.", "actor_rollout_ref.actor."
    notes = []
    user = {k: v[k] for k in given if k in known}
    absent = _verl_absent(user, origin_of, release, notes)
    rng = release_range("verl", release)
    if rng is not None and rng.kl_in_reward_unless_kl_loss and not absent:
        settings, v = _verl_kl_in_reward_unless_kl_loss(settings, v, release, notes)
    in_reward, as_loss = v[a + "use_kl_in_reward"], v[act + "use_kl_loss"]
    for on, coef in (
        (a + "use_kl_in_reward", a + "kl_ctrl.kl_coef"),
        (act + "use_kl_loss", act + "kl_loss_coef"),
    ):
        c = v[coef]
        if v[on] is True and isinstance(c, float) and c == 0.0:
            notes.append(f"{on}=True but {coef}=0: the term has weight 0, so there is no KL term")
            if on.endswith("use_kl_in_reward"):
                in_reward = False
            else:
                as_loss = False
        elif v[on] is True and isinstance(c, str):
            notes.append(f"{coef}={c} is not resolved here; taken as > 0")
    if in_reward and v[a + "kl_ctrl.type"] == "adaptive":
        notes.append(
            "kl_ctrl.type=adaptive: the coefficient changes during training (the objective does not)"
        )
    flags = dict(
        use_kl_in_reward=in_reward,
        kl_penalty=v[a + "kl_penalty"],
        use_kl_loss=as_loss,
        kl_loss_type=v[act + "kl_loss_type"],
        adv_estimator=v[a + "adv_estimator"],
        norm_adv_by_std_in_grpo=v[a + "norm_adv_by_std_in_grpo"],
    )
    unmodelled = ""
    if in_reward and v[a + "adv_estimator"] == "opo":
        unmodelled = (
            "algorithm.adv_estimator=opo with the KL in the reward: OPO's baseline is the "
            "length-weighted mean of the group's sequence rewards, the sample's own included "
            "(sum_j l_j R_j / sum_j l_j, compute_opo_outcome_advantage, "
            "verl/trainer/ppo/core_algos.py:683 @ v0.9.0); at equal response lengths the KL term "
            "is the sequence reverse KL scaled by 1 - 1/G, but at unequal lengths the sample's "
            "weight l_i / sum_j l_j changes with the sample, and the audit's exact problem has "
            "one length only, so no verdict is given"
        )
    if str(given.get("distillation.enabled", "")).strip().lower() == "true":
        mode = given.get("distillation.distillation_loss.loss_mode", "its default")
        unmodelled = (
            f"on-policy distillation (distillation.enabled=True, loss_mode={mode}): the update "
            "follows a KL to a teacher model (verl/trainer/distillation/losses.py @ v0.9.0), not "
            "the KL to the reference that the audit models"
        )
    rejected = "; ".join(absent)
    for on, key in ((in_reward, a + "kl_penalty"), (as_loss, act + "kl_loss_type")):
        if on and v[key] == "full" and not rejected:
            rejected = (
                f"verl rejects {key}=full: kl_penalty_forward raises NotImplementedError "
                f"(verl/trainer/ppo/core_algos.py)"
            )
        if on and str(v[key]).endswith("+"):
            notes.append(
                f"{key}={v[key]} needs verl v0.8.0 or later; earlier versions raise NotImplementedError"
            )
    act = "actor_rollout_ref.actor."
    steps = step_count(
        "ppo_epochs x ceil(train_batch_size / ppo_mini_batch_size) (both counted in prompts; "
        "verl/workers/actor/dp_actor.py update_policy)",
        {
            "ppo_epochs": v[act + "ppo_epochs"],
            "train_batch_size": v["data.train_batch_size"],
            "ppo_mini_batch_size": v[act + "ppo_mini_batch_size"],
        },
        lambda e, b, m: e * -(-b // m),
    )
    return Reading(
        "verl",
        tuple(settings),
        flags,
        tuple(problems),
        rejected,
        unmodelled,
        tuple(ignored),
        tuple(notes),
        unread=tuple(unread),
        steps=steps,
    )


def read_openrlhf(argv: list[str], release: str = "", release_given: bool = False) -> Reading:
    """OpenRLHF's settings from its command line ``argv`` (current or pre-v0.10.2 flag spelling), with
    the defaults of ``release``; a flag spelling ``release`` does not accept is an error when
    ``release_given`` (named with ``--release``), else a warning."""
    keys = KEYS["openrlhf"]
    rng = release_range("openrlhf", release)
    flag_renames = {w for w, _, value in (rng.renames if rng else ()) if value is not None}
    renamed_flags = [a for a in argv if a in flag_renames]
    argv = [a for a in argv if a not in flag_renames]
    hyphens = [a for a in argv if a.startswith("--") and "-" in a[2:].split("=")[0]]
    given, origin_of, unknown, _, spellings = parse_argv(argv, keys)
    known = [k.name for k in keys] + [k.alias for k in keys if k.alias]
    absent = [
        f"OpenRLHF {release} rejects {why}"
        for why in absent_settings("openrlhf", release, {**given, **{u: True for u in unknown}})
    ]
    problems, ignored = check_unknown("openrlhf", unknown, known)
    for h in hyphens:
        name = h.split("=")[0]
        near = closest(name.replace("-", "_").replace("__", "--", 1), known, 0.8)
        if near:
            problems.append(
                f"OpenRLHF's argparse rejects {name!r} (hyphens); it spells it {near!r}"
            )
    for flag in renamed_flags:
        given[flag], origin_of[flag] = True, ("command line", flag)
    notes = _apply_renames(rng, given, origin_of, f"OpenRLHF {release}")
    if rng is not None and rng.note:
        notes.append(f"OpenRLHF {release}: {rng.note}")
    settings, v = read_settings("openrlhf", given, origin_of, release)
    missing = {n for n, _ in (rng.absent if rng else ()) if "=" not in n} - {
        n for _, n, _ in (rng.renames if rng else ())
    }
    settings = [
        replace(
            s, origin=f"{s.origin}, not a flag of OpenRLHF {release} (its behaviour without it)"
        )
        if s.key in missing and s.origin.startswith("default")
        else s
        for s in settings
    ]
    problems = absent + problems
    rejected = ""
    if rng is not None and rng.spelling and spellings - {rng.spelling}:
        wrong = "old" if rng.spelling == "current" else "current"
        why = f"OpenRLHF {release} rejects the {wrong} flag spelling " + (
            "(--init_kl_coef ...: renamed --algo.kl.init_coef ... in v0.10.2, ed62d0e2)"
            if wrong == "old"
            else "(--algo.kl.* ...: introduced in v0.10.2, ed62d0e2; before it --init_kl_coef ...)"
        )
        if release_given:
            problems.append(why)
        else:
            notes.append(
                f"WARNING: {why}; the defaults assumed are those of {release} (not given with "
                "--release): give --release with the OpenRLHF you run"
            )
    if spellings == {"old"}:
        notes.append(
            "older flag spelling (OpenRLHF < v0.10.2); v0.10.2 and later spell them --algo.kl.* etc. "
            "and reject the old names"
        )
    elif spellings == {"current", "old"}:
        rejected = (
            "OpenRLHF rejects this command line: it mixes the old flag spelling (before v0.10.2) with the "
            "current one (v0.10.2+); no version accepts both"
        )
    coef = v["--algo.kl.init_coef"]
    if v["--algo.kl.target"] is not None and not v["--algo.kl.use_loss"]:
        notes.append(
            "--algo.kl.target set: an adaptive controller changes the coefficient (not the objective)"
        )
    steps = step_count(
        "max_epochs x rollout.batch_size x n_samples_per_prompt / train.batch_size "
        "(openrlhf/cli/train_ppo_ray.py:373-414 @ v0.11.0)",
        {
            "max_epochs": v["--train.max_epochs"],
            "rollout_batch_size": v["--rollout.batch_size"],
            "n_samples_per_prompt": v["--rollout.n_samples_per_prompt"],
            "train_batch_size": v["--train.batch_size"],
        },
        lambda e, r, n, b: e * max(1, -(-(r * n) // b)),
    )
    flags = dict(
        init_kl_coef=coef,
        kl_estimator=v["--algo.kl.estimator"],
        use_kl_loss=v["--algo.kl.use_loss"],
        advantage_estimator=v["--algo.advantage.estimator"],
    )
    spelling = "old" if spellings == {"old"} else "current"
    return Reading(
        "openrlhf",
        tuple(settings),
        flags,
        tuple(problems),
        rejected,
        "",
        tuple(ignored),
        tuple(notes),
        spelling,
        steps=steps,
    )


#: Launcher flags that give the number of training processes: flag -> (launcher, role).
LAUNCH_FLAGS = {
    "--num_processes": ("accelerate", "total"),
    "--num-processes": ("accelerate", "total"),
    "--nproc_per_node": ("torchrun", "per node"),
    "--nproc-per-node": ("torchrun", "per node"),
    "--nnodes": ("torchrun", "nodes"),
    "--num_gpus": ("deepspeed", "per node"),
    "--num-gpus": ("deepspeed", "per node"),
    "--num_nodes": ("deepspeed", "nodes"),
    "--num-nodes": ("deepspeed", "nodes"),
    "--multi_gpu": ("accelerate", "switch"),
    "--multi-gpu": ("accelerate", "switch"),
    "--config_file": ("accelerate", "file"),
    "--config-file": ("accelerate", "file"),
}


def launch_processes(tokens, where: str) -> tuple[list[str], dict]:
    """The launcher flags of :data:`LAUNCH_FLAGS` in ``tokens`` (``--flag N`` or ``--flag=N``), taken
    out: ``(the other tokens, {"count", "written_as", "why"})``. ``count`` is accelerate's
    ``--num_processes`` (all machines), else torchrun's ``--nproc_per_node`` x ``--nnodes`` or
    deepspeed's ``--num_gpus`` x ``--num_nodes``; ``None`` when no count is given (``why`` says
    what was seen: nothing, ``--multi_gpu`` alone, an accelerate config file, a non-integer)."""
    rest, seen, i = [], {}, 0
    tokens = list(tokens)
    while i < len(tokens):
        name, eq, value = str(tokens[i]).partition("=")
        i += 1
        if name not in LAUNCH_FLAGS:
            rest.append(tokens[i - 1])
            continue
        launcher, role = LAUNCH_FLAGS[name]
        if role != "switch" and not eq and i < len(tokens):
            value, i = str(tokens[i]), i + 1
        seen[role] = (name, value)
        while i < len(tokens) and not str(tokens[i]).startswith("--"):
            i += 1  # the launched script (train.py, -m module): not a setting
    written = " ".join(f"{n} {v}".strip() for n, v in seen.values())
    total = seen.get("total") or seen.get("per node")
    if total is None:
        if "switch" in seen or "file" in seen:
            why = (
                f"{written} on the {where} gives no process count (accelerate then uses its "
                "config file or every visible GPU, not read here)"
            )
        else:
            why = f"no --num_processes / --nproc_per_node / --num_gpus on the {where}"
        return rest, {"count": None, "written_as": written, "why": why}
    numbers = [total[1]] + (
        [seen["nodes"][1]] if "nodes" in seen and total is not seen.get("total") else []
    )
    if not all(n.isdigit() and int(n) > 0 for n in numbers):
        why = f"{written}: not a positive integer (a variable or range the audit cannot follow)"
        return rest, {"count": None, "written_as": written, "why": why}
    count = 1
    for n in numbers:
        count *= int(n)
    return rest, {"count": count, "written_as": written, "why": f"read from the {where}"}


#: TRL trainers the audit models (``--trainer``).
TRL_TRAINERS = ("grpo", "rloo", "ppo")

#: Name parts of TRL's other training scripts and ``trl`` commands: trainers on a fixed data set or
#: on-line preference methods whose KL (or ``beta``) the audit does not read.
TRL_OTHER_TRAINERS = frozenset(
    "sft dpo kto orpo cpo bco xpo gkd prm reward nash online distillation".split()
)


def trl_trainer_of_launch(launch: tuple[str, ...], argv: list[str]) -> tuple[str, str, bool]:
    """The TRL trainer that a launch names, ``(trainer, where, subcommand)``.

    ``launch`` is the launch line up to the entry (``... python examples/scripts/rloo/rloo.py``,
    ``... trl``, ``python -m trl.scripts.grpo``); for ``trl <command>`` the command is ``argv[0]``
    (``subcommand`` is then True: the caller drops it from the arguments). ``trainer`` is one of
    :data:`TRL_TRAINERS`, ``"other"`` for a script or command of another TRL trainer
    (:data:`TRL_OTHER_TRAINERS`: SFT, DPO, ...), or ``""`` when the name says nothing (``train.py``).
    """
    entry = launch[-1] if launch else ""
    subcommand = bool(re.search(r"(^|/)trl$", entry) and argv and not argv[0].startswith("-"))
    name = argv[0] if subcommand else re.split(r"[/.]", re.sub(r"\.py$", "", entry))[-1]
    if not name:
        return "", "", False
    parts = set(re.split(r"[_\-]", name.lower()))
    where = f"the command 'trl {name}'" if subcommand else f"the script's entry {entry}"
    for trainer in TRL_TRAINERS:
        if trainer in parts:
            return trainer, where, subcommand
    if parts & TRL_OTHER_TRAINERS:
        return "other", where, subcommand
    return "", where, subcommand


def _trl_trainer(explicit: str, from_file: str, launched: str, where: str) -> tuple:
    """``(trainer, notes, unmodelled)``: the trainer named by ``--trainer``, else by the Python
    config (``RLOOConfig(...)``), else by the launch (``launched``, ``where``: what
    :func:`trl_trainer_of_launch` read), else GRPO, said to be assumed; ``unmodelled`` says why a
    launch of another TRL trainer is not read."""
    chosen = explicit or from_file
    if chosen:
        named = "--trainer" if explicit else "the config file"
        clash = launched and launched != chosen
        note = f"{where} names {launched}, {named} {chosen}: audited as {chosen}" if clash else ""
        return chosen, [note] if note else [], ""
    if launched in TRL_TRAINERS:
        return launched, [f"trainer {launched}: read from {where}"], ""
    if launched == "other":
        why = (
            f"{where} is not a GRPO, RLOO or PPO trainer of TRL: it trains on a fixed data set "
            "(SFT, reward model, DPO/KTO/ORPO-style preference pairs whose beta is an implicit KL "
            "to the reference, distillation) or is an on-line preference method whose KL the "
            "audit does not read"
        )
        return "grpo", [], why
    why = f" ({where} does not name one)" if where else ""
    assumed = (
        f"ASSUMED: the GRPO trainer: nothing names the trainer{why}; pass --trainer rloo or "
        "--trainer ppo for the others"
    )
    return "grpo", [assumed], ""


#: Settings of GRPOConfig that the RLOO and PPO trainers do not read.
TRL_GRPO_ONLY = ("use_bias_correction_kl", "loss_type", "importance_sampling_level")

#: Settings of older TRL configs that the audit reads under another name
#: (:attr:`~klnotes.frameworks.versions.ReleaseRange.renames`).
TRL_OLD_SPELLINGS = (
    Key("kl_coef", "", "float", None, role="coef"),
    Key("normalize_advantage", "", "bool", False),
)


def _trl_given(config, argv, keys):
    given, origin_of, unread, trainer = {}, {}, (), ""
    if config:
        mapping, unread, trainer = load_mapping(config)
        for k, val in mapping.items():
            given[k], origin_of[k] = val, (str(config), k)
    # HfArgumentParser accepts --use-bias-correction-kl as well as --use_bias_correction_kl
    argv = [
        ("--" + a[2:].split("=")[0].replace("-", "_") + a[2:][len(a[2:].split("=")[0]) :])
        if a.startswith("--")
        else a
        for a in argv
    ]
    cli_given, cli_origin, unknown, stray, _ = parse_argv(
        argv,
        tuple(
            Key("--" + k.name, k.kwarg, k.kind, k.default, k.allowed, role=k.role)
            for k in (*keys, *TRL_OLD_SPELLINGS)
        ),
    )
    for k, val in cli_given.items():
        given[k[2:]], origin_of[k[2:]] = val, cli_origin[k]
    return given, origin_of, unknown, stray, unread, trainer


def read_trl(
    config: str | None,
    argv: list[str],
    release: str = "",
    trainer: str = "",
    launch: tuple[str, ...] = (),
) -> Reading:
    """TRL's settings from a ``config`` file (YAML, JSON or a Python ``GRPOConfig(...)``/
    ``RLOOConfig(...)``/``PPOConfig(...)`` call) and ``--key value`` arguments, for ``trainer`` (else the
    one the file names, else ``grpo``), with the defaults of ``release`` (GRPO). The number of
    processes comes from launcher flags (:func:`launch_processes`) in ``argv`` or in ``launch``
    (the launch line of a script); without them it is assumed to be 1, and the reading says so."""
    keys = KEYS["trl"]
    argv, procs = launch_processes(argv, "script" if launch else "command line")
    if procs["count"] is None and launch:
        _, from_launch = launch_processes(launch, "launch line")
        if from_launch["count"] is not None or from_launch["written_as"]:
            procs = from_launch
    if trainer and trainer not in TRL_TRAINERS:
        raise UsageError(f"--trainer {trainer!r} is not allowed; allowed: grpo, rloo, ppo")
    launched, where, subcommand = trl_trainer_of_launch(launch, argv)
    if subcommand:  # `trl rloo --beta ...`: the command is not a setting
        argv = argv[1:]
    given, origin_of, unknown, stray, unread, found = _trl_given(config, argv, keys)
    trainer, trainer_notes, other = _trl_trainer(trainer, found, launched, where)
    table = table_for("trl", trainer)
    rng = release_range(table, release)
    old_loop = bool(rng and rng.steps)
    absent = [
        f"trl {release} has no {why}"
        for why in absent_settings(
            table, release, {**given, **{u.lstrip("-"): True for u in unknown}, "trainer": trainer}
        )
    ]
    renamed = _apply_renames(rng, given, origin_of, f"trl {release}")
    known = [k.name for k in keys if trainer == "ppo" or old_loop or k.name not in TRL_PPO_ONLY] + [
        "kl_coef"
    ]
    names = [k for k in given if k not in known] + [u.lstrip("-") for u in unknown]
    problems, ignored = check_unknown("trl", names, known)
    problems = absent + [p for p in problems if not any(p.split("'")[1] in a for a in absent)]
    if stray:
        problems.append(
            f"unexpected argument(s) {stray}: give one config file, then --key value pairs"
        )
    tkeys = tuple(
        Key(
            k.name,
            k.kwarg,
            k.kind,
            TRL_TRAINER_DEFAULTS[trainer].get(k.name, k.default),
            k.allowed,
            role=k.role,
        )
        for k in keys
        if trainer == "ppo" or old_loop or k.name not in TRL_PPO_ONLY
    )
    settings, v = read_settings(
        "trl", {k: given[k] for k in given if k in known}, origin_of, release, tkeys, table
    )
    notes = [f"trainer: {trainer} (TRL {trainer.upper()}Config)", *trainer_notes, *renamed]
    unmodelled = ""
    missing = {name for name, _ in (rng.absent if rng else ()) if "=" not in name} - {
        name for _, name, _ in (rng.renames if rng else ())
    }  # a setting read under its older name is read
    for i, s in enumerate(settings):
        if not s.origin.startswith("default"):
            continue
        if s.key in missing:  # shown with a default, said to be absent from this release
            settings[i] = replace(s, origin=f"{s.origin}, not in trl {release}: not read")
        elif trainer != "grpo" and s.key in TRL_GRPO_ONLY:
            settings[i] = replace(s, origin=f"{s.origin}, not read by the {trainer} trainer")
    if trainer == "rloo" and old_loop:
        notes.append(
            f"trl {release}'s RLOO clips the sequence's ratio exp(sum_t log ratio_t) "
            "(trl/trainer/rloo_trainer.py:476-484 @ v0.21.0), not per-token ratios: the "
            "off-policy verdict below is that of per-token ratios"
        )
    nproc = procs["count"] or 1
    settings.append(
        Setting(
            "num_processes",
            nproc,
            procs["why"].removeprefix("read from the ") if procs["count"] else "assumed",
            procs["written_as"] or procs["why"],
        )
    )
    if procs["count"] is None:
        notes.append(
            f"ASSUMED: 1 training process ({procs['why']}); TRL's steps per generation depend on "
            "the number of processes when generation_batch_size is given"
        )
    if (
        trainer == "grpo"
        and v["beta"] != 0.0
        and v["use_bias_correction_kl"] is True
        and v["importance_sampling_level"] == "sequence"
    ):
        unmodelled = (
            "importance_sampling_level=sequence with use_bias_correction_kl=True: TRL multiplies "
            "each token's k3 by the sequence's differentiable weight exp(mean_t log ratio) "
            "(trl/trainer/grpo_trainer.py:3086-3105 @ 1.16.0), whose gradient adds "
            "k3(u_t) x the mean of the sequence's score functions to every token; the audit models "
            "the per-token ratio only (importance_sampling_level=token)"
        )
    elif trainer == "grpo" and v["loss_type"] not in TRL_LOSS_TYPES and v["beta"] != 0.0:
        unmodelled = (
            f"loss_type={v['loss_type']}: a TRL loss the audit does not model "
            f"(modelled: {', '.join(TRL_LOSS_TYPES)})"
        )
    steps = _trl_steps(trainer, v, nproc, procs["count"] is not None, notes, rng)
    if other:  # another TRL trainer: neither a verdict nor a step count
        unmodelled, steps = other, None
    flags = dict(
        beta=v["beta"],
        use_bias_correction_kl=v["use_bias_correction_kl"],
        num_iterations=v["num_iterations"],
        loss_type=v["loss_type"] if v["loss_type"] in TRL_LOSS_TYPES else "dapo",
        trainer=trainer,
        kl_estimator=v["kl_estimator"],
        lam=v["lam"],
        normalize_advantages=v["normalize_advantages"],
    )
    return Reading(
        "trl",
        tuple(settings),
        flags,
        tuple(problems),
        "",
        unmodelled,
        tuple(ignored),
        tuple(notes),
        unread=tuple(unread),
        steps=steps,
        defaults_source=defaults_for(table, release)[1] if table != "trl" else "",
    )


def _trl_steps(trainer: str, v: dict, nproc: int, read: bool, notes: list, rng=None) -> dict:
    """Optimizer steps per generation (rollout) batch of TRL's trainers (:func:`step_count`);
    ``rng`` (a :class:`~klnotes.frameworks.versions.ReleaseRange`) with ``steps`` set: the older
    loop of one optimizer step per mini-batch."""
    gas = v["gradient_accumulation_steps"]
    if rng is not None and rng.steps:
        return step_count(
            "num_ppo_epochs x num_mini_batches: one optimizer step per mini-batch of "
            f"per_device_train_batch_size x gradient_accumulation_steps samples ({rng.steps})",
            {"num_ppo_epochs": v["num_ppo_epochs"], "num_mini_batches": v["num_mini_batches"]},
            lambda e, m: e * m,
        )
    if trainer == "ppo":
        return step_count(
            "num_ppo_epochs x (num_mini_batches x ceil(gradient_accumulation_steps / "
            "num_mini_batches)) / gradient_accumulation_steps: optimizer steps of the accumulated "
            "micro-batches in each epoch (trl/experimental/ppo/ppo_trainer.py:802-849 @ 1.12.0)",
            {
                "num_ppo_epochs": v["num_ppo_epochs"],
                "num_mini_batches": v["num_mini_batches"],
                "gradient_accumulation_steps": gas,
            },
            lambda e, m, g: e * max(1, (m * -(-g // m)) // g),
        )
    gen, per_dev, spg = (
        v["generation_batch_size"],
        v["per_device_train_batch_size"],
        v["steps_per_generation"],
    )
    values = {"num_iterations": v["num_iterations"]}
    if isinstance(gen, int) and isinstance(per_dev, int):
        # trl/trainer/grpo_config.py:1101-1110 @ 1.16.0 (the same in rloo_config.py)
        spg = gen // (per_dev * nproc)
        notes.append(
            "generation_batch_size given: steps_per_generation = generation_batch_size / "
            f"(per_device_train_batch_size x num_processes) = {gen} / ({per_dev} x {nproc})"
            + ("" if read else ", with 1 process ASSUMED (not read)")
        )
        values.update(
            generation_batch_size=gen, per_device_train_batch_size=per_dev, num_processes=nproc
        )
        if gen % (per_dev * nproc):
            notes.append(
                f"TRL raises: generation_batch_size ({gen}) must be divisible by "
                f"per_device_train_batch_size x num_processes ({per_dev * nproc})"
            )
    elif spg is None:
        spg = gas  # TRL: steps_per_generation defaults to gradient_accumulation_steps
    values.update(steps_per_generation=spg, gradient_accumulation_steps=gas)
    return step_count(
        "num_iterations x steps_per_generation / gradient_accumulation_steps (steps_per_generation "
        "defaults to gradient_accumulation_steps, or is generation_batch_size / "
        "(per_device_train_batch_size x num_processes); trl/trainer/grpo_config.py:1096-1112, "
        "rloo_config.py:659-675 @ 1.16.0)",
        values,
        lambda *x: x[0] * max(1, x[-2] // x[-1]),
    )


def read_klnotes(items: list[str]) -> Reading:
    """The plug-in's settings from ``key=value`` items (``kl``, ``level``, ``clip``)."""
    given, origin_of = {}, {}
    for item in items:
        key, sep, raw = item.lstrip("-").partition("=")
        if not sep:
            raise UsageError(
                f"klnotes setting {item!r} must be key=value (kl=..., level=..., clip=...)"
            )
        given[key], origin_of[key] = raw, ("command line", item)
    known = [k.name for k in KEYS["klnotes"]]
    unknown = [k for k in given if k not in known]
    if unknown:
        raise UsageError(
            f"unknown key {unknown[0]!r}; closest known: {closest(unknown[0], known, 0.0)!r}"
        )
    settings, v = read_settings("klnotes", given, origin_of)
    return Reading("klnotes", tuple(settings), dict(kl=v["kl"], level=v["level"], clip=v["clip"]))
