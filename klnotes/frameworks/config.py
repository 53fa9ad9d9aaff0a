"""Reading a framework's settings as users write them: config files (YAML, JSON, Python literals),
command lines and launch scripts, never running any of it (chapter 9, ``klnotes audit``)."""
from __future__ import annotations

import ast
import difflib
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from klnotes.frameworks.options import OPENRLHF_ADV, TRL_LOSS_TYPES, VERL_LOSS_KINDS
from klnotes.frameworks.sources import OPENRLHF_FLAG_ALIASES

__all__ = ["Key", "Setting", "Reading", "UsageError", "KEYS", "DEFAULTS_FROM", "DEFAULTS_VERSION",
           "VERL_ADV_ESTIMATORS", "VERL_LOSS_AGG_MODES", "TRL_LOSS_TYPE_NAMES", "read", "args_from_script",
           "closest"]

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
VERL_ADV_ESTIMATORS = ("gae", "grpo", "reinforce_plus_plus", "reinforce_plus_plus_baseline", "remax", "rloo", "opo",
                       "grpo_passk", "gpg", "rloo_vectorized", "grpo_vectorized", "optimal_token_baseline",
                       "tir_optimal_token_baseline", "gdpo")
VERL_LOSS_AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean",
                       "seq-mean-token-sum-norm")
#: trl 1.16.0 ``GRPOConfig.loss_type`` values; the audit models four of them.
TRL_LOSS_TYPE_NAMES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")


#: The release the defaults are read from (shown next to each default).
DEFAULTS_VERSION: dict[str, str] = {"verl": "verl v0.9.0", "openrlhf": "OpenRLHF v0.11.0", "trl": "trl 1.16.0",
                                    "klnotes": "klnotes"}


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
        Key("--algo.kl.init_coef", "init_kl_coef", "float", 0.01, alias=al["--algo.kl.init_coef"]),
        Key("--algo.kl.estimator", "kl_estimator", "str", "k1", ("k1", "k2", "k3"), al["--algo.kl.estimator"]),
        Key("--algo.kl.use_loss", "use_kl_loss", "flag", False, alias=al["--algo.kl.use_loss"]),
        Key("--algo.advantage.estimator", "advantage_estimator", "str", "gae", OPENRLHF_ADV,
            al["--algo.advantage.estimator"]),
        Key("--algo.kl.target", "", "float", None, alias=al["--algo.kl.target"]),
        Key("--algo.kl.horizon", "", "int", 10000, alias=al["--algo.kl.horizon"]),
        Key("--algo.advantage.lambd", "", "float", 1.0, alias=al["--algo.advantage.lambd"]),
        Key("--algo.advantage.gamma", "", "float", 1.0, alias=al["--algo.advantage.gamma"]),
        Key("--actor.eps_clip", "", "float", 0.2, alias=al["--actor.eps_clip"]),
        Key("--train.max_epochs", "", "int", 1, alias=al["--train.max_epochs"], role="updates"),
    )


def _trl_keys() -> tuple[Key, ...]:
    return (
        Key("beta", "beta", "float", 0.0),
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

    def value(self, key: str):
        return next(s.value for s in self.settings if s.key == key)

    def origin(self, key: str) -> str:
        return next(s.origin for s in self.settings if s.key == key)


class UsageError(ValueError):
    """Unknown key, flag or value, or an unreadable file (exit status 2)."""


def closest(word: str, known, cutoff: float = 0.6) -> str:
    match = difflib.get_close_matches(str(word), [str(k) for k in known], n=1, cutoff=cutoff)
    return match[0] if match else ""


def _unknown_value(key: str, value, allowed) -> str:
    near = closest(value, allowed, cutoff=0.0)
    shown = ", ".join(str(a) for a in allowed)
    return f"{key}={value!r} is not a known value (closest: {near!r}); allowed: {shown}"


def _convert(key: Key, raw, origin: str):
    """Convert ``raw`` (a string from a command line, or a YAML/JSON/literal value) to ``key``'s type;
    raise ``UsageError`` naming the bad value and what is allowed."""
    if isinstance(raw, str) and "${" in raw:
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
        if key.kind == "int":
            if number != int(number):
                raise UsageError(f"{key.name}={raw!r} must be an integer")
            return int(number)
        return number
    value = str(raw).strip().strip("'\"")
    if key.allowed and value not in key.allowed:
        raise UsageError(_unknown_value(key.name, value, key.allowed))
    return value


def _flatten(tree, prefix: str = "") -> dict:
    """Nested mappings to dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``); Hydra's ``defaults`` list is skipped."""
    out = {}
    for k, v in tree.items():
        if prefix == "" and k == "defaults":
            continue
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def _load_mapping(path: Path) -> dict:
    """A YAML or JSON file (``yaml.safe_load``), or a Python file's ``GRPOConfig(...)`` literal keyword
    arguments (``ast``, nothing is executed), as a flat ``{dotted key: value}`` mapping."""
    try:
        text = path.read_text()
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror}") from None
    if path.suffix == ".py":
        return _grpo_config_kwargs(text, path)
    import yaml

    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UsageError(f"{path} is not valid YAML/JSON: {err}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise UsageError(f"{path} must hold a mapping of settings, found {type(tree).__name__}")
    return _flatten(tree)


def _grpo_config_kwargs(text: str, path) -> dict:
    """Keyword arguments of the ``GRPOConfig(...)`` calls in a Python snippet (literals only)."""
    try:
        tree = ast.parse(text)
    except SyntaxError as err:
        raise UsageError(f"{path} is not valid Python: {err.msg} (line {err.lineno})") from None
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if name.endswith("GRPOConfig"):
                for kw in node.keywords:
                    if kw.arg is None:
                        continue
                    try:
                        out[kw.arg] = ast.literal_eval(kw.value)
                    except ValueError:
                        out[kw.arg] = "${" + ast.unparse(kw.value) + "}"  # not a literal: unresolved
    if not out:
        raise UsageError(f"{path}: no GRPOConfig(...) call with keyword arguments found")
    return out


def args_from_script(text: str, framework: str) -> list[str]:
    """The framework arguments of a launch script (shell): verl ``key.sub=value`` overrides, or
    OpenRLHF/TRL ``--flag [value]`` tokens, with ``NAME=${NAME:-default}`` shell variables resolved.

    The script is split with ``shlex`` (comments dropped), never run.
    """
    text = text.replace("\\\n", " ")
    tokens = shlex.split(text, comments=True)
    env = {}
    for tok in tokens:
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", tok)
        if m and "(" not in m.group(2):
            env[m.group(1)] = re.sub(r"^\$\{[A-Za-z_][A-Za-z0-9_]*:-(.*)\}$", r"\1", m.group(2))

    def subst(tok):
        return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)",
                      lambda m: env.get(m.group(1) or m.group(2), m.group(0)), tok)

    tokens = [subst(t) for t in tokens]
    if framework == "verl":
        return [t for t in tokens if re.match(r"^[+~]*[A-Za-z_][\w-]*(\.[\w-]+)+(=|$)", t) and ("=" in t or
                                                                                               t.startswith("~"))]
    start = next((i for i, t in enumerate(tokens) if t.startswith("--")), len(tokens))
    return [t for t in tokens[start:] if t not in ("(", ")") and not t.endswith("=(")]


def _settings(framework: str, given: dict, origin_of: dict) -> tuple[list[Setting], dict]:
    """Settings for every key (given or default) and the converted values by key name."""
    values, settings = {}, []
    for key in KEYS[framework]:
        if key.name in given:
            value = _convert(key, given[key.name], origin_of[key.name][0])
            settings.append(Setting(key.name, value, origin_of[key.name][0], origin_of[key.name][1], key.alias))
        else:
            value = key.default
            settings.append(Setting(key.name, value, f"default ({DEFAULTS_VERSION[framework]})", "", key.alias))
        values[key.name] = value
    return settings, values


def _split_key(name: str) -> tuple[str, str]:
    parent, _, last = name.rpartition(".")
    return parent, last


def _check_unknown(framework: str, names, known: list[str]) -> tuple[list[str], list[str]]:
    """(problems, ignored): a name is a likely typo of a KL key (one that switches, shapes or weighs the
    term) when its last segment is close to that key's (difflib ratio >= 0.85) under the same parent, or
    equal to it under another parent (for names with 'kl' in them); other names are settings that do not touch the KL term."""
    kl_keys = {k.name for k in KEYS[framework] if k.kwarg or k.role == "coef" or "kl" in k.name}
    kl_keys |= {k.alias for k in KEYS[framework] if k.alias and k.name in kl_keys}
    problems, ignored = [], []
    for name in names:
        parent, last = _split_key(name)
        near = ""
        for k in sorted(kl_keys):
            kp, kl = _split_key(k)
            if (kp == parent and difflib.SequenceMatcher(None, last, kl).ratio() >= 0.85) or (kp != parent and
                                                                                             kl == last and "kl" in kl):
                near = k
                break
        if near:
            problems.append(f"unknown {'flag' if name.startswith('-') else 'key'} {name!r}; "
                            f"closest known: {near!r}")
        else:
            ignored.append(name)
    return problems, ignored


def _read_verl(config: str | None, overrides: list[str]) -> Reading:
    given, origin_of = {}, {}
    if config:
        for k, v in _load_mapping(Path(config)).items():
            given[k], origin_of[k] = v, (str(config), k)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.lstrip("+")
        if key.startswith("~"):
            given.pop(key[1:], None)
            origin_of.pop(key[1:], None)
            continue
        if not sep:
            raise UsageError(f"verl override {item!r} must be key=value (e.g. algorithm.use_kl_in_reward=True)")
        given[key], origin_of[key] = raw, ("command line", item)
    known = [k.name for k in KEYS["verl"]]
    problems, ignored = _check_unknown("verl", [k for k in given if k not in known], known)
    settings, v = _settings("verl", {k: given[k] for k in given if k in known}, origin_of)
    a, act = "algorithm.", "actor_rollout_ref.actor."
    notes = []
    in_reward, as_loss = v[a + "use_kl_in_reward"], v[act + "use_kl_loss"]
    for on, coef in ((a + "use_kl_in_reward", a + "kl_ctrl.kl_coef"), (act + "use_kl_loss", act + "kl_loss_coef")):
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
        notes.append("kl_ctrl.type=adaptive: the coefficient changes during training (the objective does not)")
    flags = dict(use_kl_in_reward=in_reward, kl_penalty=v[a + "kl_penalty"], use_kl_loss=as_loss,
                 kl_loss_type=v[act + "kl_loss_type"], adv_estimator=v[a + "adv_estimator"],
                 norm_adv_by_std_in_grpo=v[a + "norm_adv_by_std_in_grpo"])
    unmodelled = ""
    rejected = ""
    for on, key in ((in_reward, a + "kl_penalty"), (as_loss, act + "kl_loss_type")):
        if on and v[key] == "full":
            rejected = (f"verl rejects {key}=full: kl_penalty_forward raises NotImplementedError "
                        f"(verl/trainer/ppo/core_algos.py)")
        if on and str(v[key]).endswith("+"):
            notes.append(f"{key}={v[key]} needs verl v0.8.0 or later; earlier versions raise NotImplementedError")
    updates = _verl_updates(v)
    if updates:
        notes.append(updates)
    return Reading("verl", tuple(settings), flags, tuple(problems), rejected, unmodelled, tuple(ignored),
                   tuple(notes))


def _verl_updates(v) -> str:
    act = "actor_rollout_ref.actor."
    epochs, mini, batch = v[act + "ppo_epochs"], v[act + "ppo_mini_batch_size"], v["data.train_batch_size"]
    if not all(isinstance(x, int) and x > 0 for x in (epochs, mini, batch)):
        return ""
    n = epochs * max(1, batch // mini)
    if n == 1:
        return "one actor update per rollout batch: on-policy"
    return (f"{n} actor updates per rollout batch (ppo_epochs={epochs} x train_batch_size/ppo_mini_batch_size="
            f"{batch}/{mini}): off-policy from the second update")


def _parse_argv(argv: list[str], keys: tuple[Key, ...]) -> tuple[dict, dict, list[str], list[str], set]:
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


def _read_openrlhf(argv: list[str]) -> Reading:
    keys = KEYS["openrlhf"]
    given, origin_of, unknown, _, spellings = _parse_argv(argv, keys)
    known = [k.name for k in keys] + [k.alias for k in keys if k.alias]
    problems, ignored = _check_unknown("openrlhf", unknown, known)
    settings, v = _settings("openrlhf", given, origin_of)
    notes, rejected = [], ""
    if spellings == {"old"}:
        notes.append("older flag spelling (OpenRLHF < v0.10.2); v0.10.2 and later spell them --algo.kl.* etc. "
                     "and reject the old names")
    elif spellings == {"current", "old"}:
        rejected = ("OpenRLHF rejects this command line: it mixes the old flag spelling (before v0.10.2) with the "
                    "current one (v0.10.2+); no version accepts both")
    coef = v["--algo.kl.init_coef"]
    if isinstance(coef, str):
        notes.append(f"--algo.kl.init_coef={coef} is not resolved here; taken as > 0")
        coef = 0.01
    if isinstance(coef, float) and coef < 0:
        notes.append("--algo.kl.init_coef < 0 is treated as 0 by OpenRLHF (no KL term)")
        coef = 0.0
    if v["--algo.kl.target"] is not None and not v["--algo.kl.use_loss"]:
        notes.append("--algo.kl.target set: an adaptive controller changes the coefficient (not the objective)")
    epochs = v["--train.max_epochs"]
    if isinstance(epochs, int) and epochs > 1:
        notes.append(f"--train.max_epochs={epochs}: off-policy from the second epoch")
    flags = dict(init_kl_coef=coef, kl_estimator=v["--algo.kl.estimator"], use_kl_loss=v["--algo.kl.use_loss"],
                 advantage_estimator=v["--algo.advantage.estimator"])
    spelling = "old" if spellings == {"old"} else "current"
    return Reading("openrlhf", tuple(settings), flags, tuple(problems), rejected, "", tuple(ignored), tuple(notes),
                   spelling)


def _read_trl(config: str | None, argv: list[str]) -> Reading:
    keys = KEYS["trl"]
    given, origin_of = {}, {}
    if config:
        for k, val in _load_mapping(Path(config)).items():
            given[k], origin_of[k] = val, (str(config), k)
    cli_given, cli_origin, unknown, stray, _ = _parse_argv(
        argv, tuple(Key("--" + k.name, k.kwarg, k.kind, k.default, k.allowed) for k in keys))
    for k, val in cli_given.items():
        given[k[2:]], origin_of[k[2:]] = val, cli_origin[k]
    known = [k.name for k in keys]
    names = [k for k in given if k not in known] + [u.lstrip("-") for u in unknown]
    problems, ignored = _check_unknown("trl", names, known)
    if stray:
        problems.append(f"unexpected argument(s) {stray}: give one config file, then --key value pairs")
    settings, v = _settings("trl", {k: given[k] for k in given if k in known}, origin_of)
    notes, unmodelled = [], ""
    if isinstance(v["beta"], str):
        notes.append(f"beta={v['beta']} is not resolved here; taken as > 0")
        v["beta"] = 0.04
    if v["loss_type"] not in TRL_LOSS_TYPES and v["beta"] != 0.0:
        unmodelled = (f"loss_type={v['loss_type']}: a TRL loss the audit does not model "
                      f"(modelled: {', '.join(TRL_LOSS_TYPES)})")
    spg, gas, iters = v["steps_per_generation"], v["gradient_accumulation_steps"], v["num_iterations"]
    if isinstance(iters, int) and isinstance(gas, int) and gas > 0:
        spg = spg if isinstance(spg, int) else gas  # TRL: steps_per_generation defaults to gradient_accumulation_steps
        n = iters * max(1, spg // gas)
        notes.append("one optimizer step per generation batch: on-policy" if n == 1 else
                     f"{n} optimizer steps per generation batch (num_iterations={iters}, steps_per_generation/"
                     f"gradient_accumulation_steps={spg or gas}/{gas}): off-policy from the second step")
    flags = dict(beta=v["beta"], use_bias_correction_kl=v["use_bias_correction_kl"], num_iterations=v["num_iterations"],
                 loss_type=v["loss_type"] if v["loss_type"] in TRL_LOSS_TYPES else "dapo")
    return Reading("trl", tuple(settings), flags, tuple(problems), "", unmodelled, tuple(ignored), tuple(notes))


def _read_klnotes(items: list[str]) -> Reading:
    given, origin_of = {}, {}
    for item in items:
        key, sep, raw = item.lstrip("-").partition("=")
        if not sep:
            raise UsageError(f"klnotes setting {item!r} must be key=value (kl=..., level=..., clip=...)")
        given[key], origin_of[key] = raw, ("command line", item)
    known = [k.name for k in KEYS["klnotes"]]
    unknown = [k for k in given if k not in known]
    if unknown:
        raise UsageError(f"unknown key {unknown[0]!r}; closest known: {closest(unknown[0], known, 0.0)!r}")
    settings, v = _settings("klnotes", given, origin_of)
    return Reading("klnotes", tuple(settings), dict(kl=v["kl"], level=v["level"], clip=v["clip"]))


def read(framework: str, config: str | None = None, args: list[str] | tuple = ()) -> Reading:
    """Read a framework's settings: a config file (verl YAML; TRL YAML/JSON/Python) and/or command-line
    arguments (verl ``key=value`` overrides, OpenRLHF argv, TRL ``--key value``, klnotes ``key=value``).

    Raises:
        UsageError: unknown framework, unreadable file, a value of the wrong type or not allowed.
    """
    args = list(args)
    if framework == "verl":
        return _read_verl(config, args)
    if framework == "openrlhf":
        if config:
            raise UsageError("openrlhf takes its command line after '--' (or --script FILE), not a config file")
        return _read_openrlhf(args)
    if framework == "trl":
        return _read_trl(config, args)
    if framework == "klnotes":
        return _read_klnotes(([config] if config else []) + args)
    raise UsageError(f"unknown framework {framework!r}; known: verl, openrlhf, trl, klnotes "
                     f"(closest: {closest(framework, ('verl', 'openrlhf', 'trl', 'klnotes'), 0.0)!r})")

