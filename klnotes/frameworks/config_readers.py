"""Each framework's settings reader: verl (YAML and ``key=value`` overrides), OpenRLHF (argv),
TRL (a config file and ``--key value``) and the klnotes plug-in (``key=value``); each returns a
:class:`~klnotes.frameworks.config_settings.Reading`."""

from __future__ import annotations

from klnotes.frameworks.config_keys import KEYS, TRL_TRAINER_DEFAULTS, Key
from klnotes.frameworks.config_settings import (
    Reading,
    check_unknown,
    closest,
    parse_argv,
    read_settings,
    step_count,
)
from klnotes.frameworks.files import UsageError, load_mapping
from klnotes.frameworks.options import TRL_LOSS_TYPES

__all__ = ["read_verl", "read_openrlhf", "read_trl", "read_klnotes"]


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
    rejected = ""
    for on, key in ((in_reward, a + "kl_penalty"), (as_loss, act + "kl_loss_type")):
        if on and v[key] == "full":
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


def read_openrlhf(argv: list[str], release: str = "") -> Reading:
    """OpenRLHF's settings from its command line ``argv`` (current or pre-v0.10.2 flag spelling), with
    the defaults of ``release``."""
    keys = KEYS["openrlhf"]
    hyphens = [a for a in argv if a.startswith("--") and "-" in a[2:].split("=")[0]]
    given, origin_of, unknown, _, spellings = parse_argv(argv, keys)
    known = [k.name for k in keys] + [k.alias for k in keys if k.alias]
    problems, ignored = check_unknown("openrlhf", unknown, known)
    for h in hyphens:
        name = h.split("=")[0]
        near = closest(name.replace("-", "_").replace("__", "--", 1), known, 0.8)
        if near:
            problems.append(
                f"OpenRLHF's argparse rejects {name!r} (hyphens); it spells it {near!r}"
            )
    settings, v = read_settings("openrlhf", given, origin_of, release)
    notes, rejected = [], ""
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
        tuple(Key("--" + k.name, k.kwarg, k.kind, k.default, k.allowed, role=k.role) for k in keys),
    )
    for k, val in cli_given.items():
        given[k[2:]], origin_of[k[2:]] = val, cli_origin[k]
    return given, origin_of, unknown, stray, unread, trainer


def read_trl(config: str | None, argv: list[str], release: str = "", trainer: str = "") -> Reading:
    """TRL's settings from a ``config`` file (YAML, JSON or a Python ``GRPOConfig(...)``/
    ``RLOOConfig(...)``/``PPOConfig(...)`` call) and ``--key value`` arguments, for ``trainer`` (else the
    one the file names, else ``grpo``), with the defaults of ``release`` (GRPO)."""
    keys = KEYS["trl"]
    given, origin_of, unknown, stray, unread, found = _trl_given(config, argv, keys)
    trainer = trainer or found or "grpo"
    if trainer not in ("grpo", "rloo", "ppo"):
        raise UsageError(f"--trainer {trainer!r} is not allowed; allowed: grpo, rloo, ppo")
    if trainer == "ppo" and "kl_coef" in given:
        given["beta"], origin_of["beta"] = given.pop("kl_coef"), origin_of.pop("kl_coef")
    known = [k.name for k in keys] + ["kl_coef"]
    names = [k for k in given if k not in known] + [u.lstrip("-") for u in unknown]
    problems, ignored = check_unknown("trl", names, known)
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
    )
    settings, v = read_settings(
        "trl",
        {k: given[k] for k in given if k in known},
        origin_of,
        release if trainer == "grpo" else "",
        tkeys,
    )
    notes, unmodelled = [f"trainer: {trainer} (TRL {trainer.upper()}Config)"], ""
    if trainer == "grpo" and v["loss_type"] not in TRL_LOSS_TYPES and v["beta"] != 0.0:
        unmodelled = (
            f"loss_type={v['loss_type']}: a TRL loss the audit does not model "
            f"(modelled: {', '.join(TRL_LOSS_TYPES)})"
        )
    gen, per_dev, gas = (
        v["generation_batch_size"],
        v["per_device_train_batch_size"],
        v["gradient_accumulation_steps"],
    )
    spg = v["steps_per_generation"]
    if isinstance(gen, int) and isinstance(per_dev, int):
        spg = (
            gen // per_dev
        )  # one process assumed (the launcher's process count is not in the config)
        notes.append(
            "generation_batch_size given: steps_per_generation = generation_batch_size / "
            "(per_device_train_batch_size x processes), with 1 process assumed (not in the config)"
        )
    elif spg is None:
        spg = gas  # TRL: steps_per_generation defaults to gradient_accumulation_steps
    steps = step_count(
        "num_iterations x steps_per_generation / gradient_accumulation_steps (steps_per_generation "
        "defaults to gradient_accumulation_steps; trl/trainer/grpo_config.py)",
        {
            "num_iterations": v["num_iterations"],
            "steps_per_generation": spg,
            "gradient_accumulation_steps": gas,
        },
        lambda n, s, g: n * max(1, s // g),
    )
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
