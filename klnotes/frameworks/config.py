"""Reading a framework's settings as users write them: config files (YAML, JSON, Python literals),
command lines and launch scripts, never running any of it (chapter 9, ``klnotes audit``)."""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, replace

from klnotes.core.variants import ESTIMATORS
from klnotes.frameworks.files import UsageError, load_mapping, script_args
from klnotes.frameworks.options import OPENRLHF_ADV, TRL_LOSS_TYPES, VERL_LOSS_KINDS
from klnotes.frameworks.sources import OPENRLHF_FLAG_ALIASES
from klnotes.frameworks.versions import defaults_for, resolve

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

# ---------------------------------------------------------------------------------------------
# What each framework accepts (read from its source; see frameworks.SOURCES) and what it defaults to.
# ---------------------------------------------------------------------------------------------

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
_TRL_TRAINER_DEFAULTS = {"grpo": {}, "rloo": {"beta": 0.05}, "ppo": {"beta": 0.05}}


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
    )


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


# ---------------------------------------------------------------------------------------------
# Reading settings
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """A value the audit uses: ``key`` in today's spelling, where it came from (``origin``: the file,
    ``command line`` or ``default (<version>)``) and how the user spelled it (``written_as``)."""

    key: str
    value: object
    origin: str
    written_as: str = ""
    alias: str = ""


@dataclass(frozen=True)
class Reading:
    """Everything read from the user's settings. ``flags`` are :func:`klnotes.frameworks.audit`'s keyword
    arguments (``None`` when the settings cannot be audited: see ``problems``, ``rejected``,
    ``unmodelled``)."""

    framework: str
    settings: tuple[Setting, ...]
    flags: dict | None
    problems: tuple[str, ...] = ()
    rejected: str = ""
    unmodelled: str = ""
    ignored: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    spelling: str = ""  # OpenRLHF: "current" or "old"
    unread: tuple[str, ...] = ()
    release: str = ""
    release_why: str = ""
    steps: dict | None = None

    @property
    def defaults_only(self) -> bool:
        """No setting that shapes the KL term was read from the user (all are the framework's defaults)."""
        relevant = {k.name for k in KEYS[self.framework] if k.kwarg or k.role == "coef"}
        return all(s.origin.startswith("default") for s in self.settings if s.key in relevant)

    def value(self, key: str):
        """The value the audit uses for ``key`` (read or default)."""
        return next(s.value for s in self.settings if s.key == key)

    def origin(self, key: str) -> str:
        """Where the value of ``key`` came from (a file and line, the command line, or a default)."""
        return next(s.origin for s in self.settings if s.key == key)


def closest(word: str, known, cutoff: float = 0.6) -> str:
    """The entry of ``known`` most similar to ``word`` (difflib ratio >= ``cutoff``), else ``""``:
    the "did you mean" of the error messages."""
    match = difflib.get_close_matches(str(word), [str(k) for k in known], n=1, cutoff=cutoff)
    return match[0] if match else ""


def _unknown_value(key: str, value, allowed) -> str:
    near = closest(value, allowed, cutoff=0.0)
    shown = ", ".join(str(a) for a in allowed)
    return f"{key}={value!r} is not a known value (closest: {near!r}); allowed: {shown}"


def _convert(key: Key, raw, origin: str):
    """Convert ``raw`` (a string from a command line, or a YAML/JSON/literal value) to ``key``'s type;
    raise ``UsageError`` naming the bad value and what is allowed."""
    if isinstance(raw, str) and re.search(r"\$\{|\$[A-Za-z_]", raw):
        return raw  # an unresolved interpolation or shell variable: reported as such
    if key.kind in ("bool", "flag"):
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
            return raw.strip().lower() == "true"
        raise UsageError(f"{key.name}={raw!r} must be True or False")
    if key.kind in ("float", "int"):
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("null", "none")):
            return None
        try:
            number = float(raw) if not isinstance(raw, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None:
            raise UsageError(f"{key.name}={raw!r} must be a number")
        if not math.isfinite(number):
            raise UsageError(
                f"{key.name}={raw!r} is not allowed; allowed: a finite number"
                + (" >= 0" if key.role in ("coef", "updates") else "")
            )
        if key.role == "coef" and number < 0:
            raise UsageError(
                f"{key.name}={raw!r} is not allowed: a negative KL coefficient rewards moving away "
                "from the reference (a KL bonus); allowed: a finite number >= 0"
            )
        if key.kind == "int":
            if number != int(number):
                raise UsageError(f"{key.name}={raw!r} must be an integer")
            if key.role == "updates" and number < 1:
                raise UsageError(f"{key.name}={raw!r} is not allowed; allowed: an integer >= 1")
            return int(number)
        return number
    value = str(raw).strip().strip("'\"")
    if key.allowed and value not in key.allowed:
        raise UsageError(_unknown_value(key.name, value, key.allowed))
    return value


def args_from_script(text: str, framework: str) -> list[str]:
    """The framework arguments of a launch script (:func:`klnotes.frameworks.files.script_args`)."""
    return list(script_args(text, framework))


def _settings(
    framework: str,
    given: dict,
    origin_of: dict,
    release: str = "",
    keys: tuple[Key, ...] | None = None,
) -> tuple[list[Setting], dict]:
    """Settings for every key (given or the default at ``release``) and the converted values by key name.

    Raises:
        UsageError: a value of the wrong type or not allowed, or a value the audit uses that is an
            unresolved ``${...}`` (a variable or interpolation it cannot follow).
    """
    overrides, _ = defaults_for(framework, release) if framework != "klnotes" else ({}, "")
    name = DEFAULTS_VERSION[framework].split()[0]
    label = (
        f"{name} {'' if framework == 'trl' else 'v'}{release}"
        if release
        else DEFAULTS_VERSION[framework]
    )
    values, settings = {}, []
    for key in keys or KEYS[framework]:
        if key.name in given:
            value = _convert(key, given[key.name], origin_of[key.name][0])
            if (
                isinstance(value, str)
                and re.search(r"\$\{|\$[A-Za-z_]", value)
                and (key.kwarg or key.role)
            ):
                raise UsageError(
                    f"{key.name}={value} is not resolved (a variable or interpolation the audit "
                    f"cannot follow, from {origin_of[key.name][0]}); give its value, e.g. "
                    f"{key.name}=<value>"
                    + (f"; allowed: {', '.join(map(str, key.allowed))}" if key.allowed else "")
                )
            settings.append(
                Setting(key.name, value, origin_of[key.name][0], origin_of[key.name][1], key.alias)
            )
        else:
            value = overrides.get(key.name, key.default)
            settings.append(Setting(key.name, value, f"default ({label})", "", key.alias))
        values[key.name] = value
    return settings, values


def _split_key(name: str) -> tuple[str, str]:
    parent, _, last = name.rpartition(".")
    return parent, last


def _check_unknown(framework: str, names, known: list[str]) -> tuple[list[str], list[str]]:
    """(problems, ignored): a name is a likely typo of a KL key (one that switches, shapes or weighs the
    term) when its last segment is close to that key's (difflib ratio >= 0.85) under the same parent, or
    equal to it under another parent (for names with 'kl' in them); other names are settings that
    do not touch the KL term."""
    kl_keys = {k.name for k in KEYS[framework] if k.kwarg or k.role == "coef" or "kl" in k.name}
    kl_keys |= {k.alias for k in KEYS[framework] if k.alias and k.name in kl_keys}
    problems, ignored = [], []
    for name in names:
        parent, last = _split_key(name)
        near = ""
        for k in sorted(kl_keys):
            kp, kl = _split_key(k)
            if (kp == parent and difflib.SequenceMatcher(None, last, kl).ratio() >= 0.85) or (
                kp != parent and kl == last and "kl" in kl
            ):
                near = k
                break
        if near:
            problems.append(
                f"unknown {'flag' if name.startswith('-') else 'key'} {name!r}; "
                f"closest known: {near!r}"
            )
        else:
            ignored.append(name)
    return problems, ignored


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


def _read_verl(config: str | None, overrides: list[str], release: str = "") -> Reading:
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
    problems, ignored = _check_unknown("verl", [k for k in given if k not in known], known)
    settings, v = _settings("verl", {k: given[k] for k in given if k in known}, origin_of, release)
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
    steps = _steps(
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


def _steps(formula: str, values: dict, count) -> dict:
    """``{"steps", "formula", "values", "text"}``: optimizer steps per rollout batch from the values read
    (``steps`` is ``None`` when a value is missing or not a positive integer)."""
    ok = all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in values.values())
    n = count(*values.values()) if ok else None
    shown = ", ".join(f"{k}={x}" for k, x in values.items())
    if n is None:
        text = f"optimizer steps per rollout batch unknown: {formula} with {shown}"
    elif n == 1:
        text = f"1 optimizer step per rollout batch ({formula}; {shown}): on-policy"
    else:
        text = (
            f"{n} optimizer steps per rollout batch ({formula}; {shown}): off-policy from the second step, "
            "so the off-policy verdict below applies"
        )
    return {"steps": n, "formula": formula, "values": values, "text": text}


def _parse_argv(
    argv: list[str], keys: tuple[Key, ...]
) -> tuple[dict, dict, list[str], list[str], set]:
    """``--flag value``, ``--flag=value`` and store-true flags, old or current spelling.

    Returns (given by current name, origin by current name, unknown flags, stray tokens, spellings used)."""
    by_name = {k.name: k for k in keys}
    by_name.update({k.alias: k for k in keys if k.alias})
    given, origin_of, unknown, stray, spellings = {}, {}, [], [], set()
    i = 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        if not tok.startswith("--"):
            stray.append(tok)
            continue
        name, eq, inline = tok.partition("=")
        key = by_name.get(name)
        if key is None:
            unknown.append(name)
            while not eq and i < len(argv) and not argv[i].startswith("--"):
                i += 1  # its value(s)
            continue
        spellings.add("old" if name == key.alias and key.alias != key.name else "current")
        if key.kind == "flag":
            raw = inline if eq else True
        elif key.kind == "bool" and not eq:  # HfArgumentParser: --flag, or --flag true/false
            nxt = argv[i].lower() if i < len(argv) else ""
            raw = True
            if nxt in ("true", "false"):
                raw, i = nxt, i + 1
        elif eq:
            raw = inline
        elif i < len(argv) and not argv[i].startswith("--"):
            raw = argv[i]
            i += 1
        else:
            raise UsageError(f"{name} needs a value")
        given[key.name], origin_of[key.name] = raw, ("command line", name)
    return given, origin_of, unknown, stray, spellings


def _read_openrlhf(argv: list[str], release: str = "") -> Reading:
    keys = KEYS["openrlhf"]
    hyphens = [a for a in argv if a.startswith("--") and "-" in a[2:].split("=")[0]]
    given, origin_of, unknown, _, spellings = _parse_argv(argv, keys)
    known = [k.name for k in keys] + [k.alias for k in keys if k.alias]
    problems, ignored = _check_unknown("openrlhf", unknown, known)
    for h in hyphens:
        name = h.split("=")[0]
        near = closest(name.replace("-", "_").replace("__", "--", 1), known, 0.8)
        if near:
            problems.append(
                f"OpenRLHF's argparse rejects {name!r} (hyphens); it spells it {near!r}"
            )
    settings, v = _settings("openrlhf", given, origin_of, release)
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
    steps = _steps(
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
    cli_given, cli_origin, unknown, stray, _ = _parse_argv(
        argv,
        tuple(Key("--" + k.name, k.kwarg, k.kind, k.default, k.allowed, role=k.role) for k in keys),
    )
    for k, val in cli_given.items():
        given[k[2:]], origin_of[k[2:]] = val, cli_origin[k]
    return given, origin_of, unknown, stray, unread, trainer


def _read_trl(config: str | None, argv: list[str], release: str = "", trainer: str = "") -> Reading:
    keys = KEYS["trl"]
    given, origin_of, unknown, stray, unread, found = _trl_given(config, argv, keys)
    trainer = trainer or found or "grpo"
    if trainer not in ("grpo", "rloo", "ppo"):
        raise UsageError(f"--trainer {trainer!r} is not allowed; allowed: grpo, rloo, ppo")
    if trainer == "ppo" and "kl_coef" in given:
        given["beta"], origin_of["beta"] = given.pop("kl_coef"), origin_of.pop("kl_coef")
    known = [k.name for k in keys] + ["kl_coef"]
    names = [k for k in given if k not in known] + [u.lstrip("-") for u in unknown]
    problems, ignored = _check_unknown("trl", names, known)
    if stray:
        problems.append(
            f"unexpected argument(s) {stray}: give one config file, then --key value pairs"
        )
    tkeys = tuple(
        Key(
            k.name,
            k.kwarg,
            k.kind,
            _TRL_TRAINER_DEFAULTS[trainer].get(k.name, k.default),
            k.allowed,
            role=k.role,
        )
        for k in keys
    )
    settings, v = _settings(
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
    steps = _steps(
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


def _read_klnotes(items: list[str]) -> Reading:
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
    settings, v = _settings("klnotes", given, origin_of)
    return Reading("klnotes", tuple(settings), dict(kl=v["kl"], level=v["level"], clip=v["clip"]))


def read(
    framework: str,
    config: str | None = None,
    args: list[str] | tuple = (),
    release: str | None = None,
    trainer: str = "",
    unread: tuple[str, ...] = (),
    notes: tuple[str, ...] = (),
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
        r = _read_verl(config, args, rel)
    elif framework == "openrlhf":
        if config:
            raise UsageError(
                "openrlhf takes its command line after '--' (or --script FILE), not a config file"
            )
        r = _read_openrlhf(args, rel)
    elif framework == "trl":
        r = _read_trl(config, args, rel, trainer)
    else:
        r = _read_klnotes(([config] if config else []) + args)
    return replace(
        r,
        release=rel,
        release_why=why,
        unread=tuple(r.unread) + tuple(unread),
        notes=tuple(r.notes) + tuple(notes),
    )
