"""Turning the values a user wrote into the settings the audit uses: :class:`Setting` and
:class:`Reading`, value conversion and checks, defaults by release, the "did you mean" of unknown
names, command-line parsing and the count of optimizer steps per rollout batch."""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass

from klnotes.frameworks.config_keys import DEFAULTS_VERSION, KEYS, Key
from klnotes.frameworks.files import UsageError
from klnotes.frameworks.versions import defaults_for

__all__ = [
    "Setting",
    "Reading",
    "closest",
    "convert_value",
    "read_settings",
    "check_unknown",
    "step_count",
    "parse_argv",
]


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
    defaults_source: str = ""  # where the defaults of ``release`` were read (versions.defaults_for)
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


def convert_value(key: Key, raw, origin: str):
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


def read_settings(
    framework: str,
    given: dict,
    origin_of: dict,
    release: str = "",
    keys: tuple[Key, ...] | None = None,
    table: str = "",
) -> tuple[list[Setting], dict]:
    """Settings for every key (given or the default at ``release``, read from the
    :data:`~klnotes.frameworks.versions.RELEASES` table ``table``, default ``framework``) and the
    converted values by key name.

    Raises:
        UsageError: a value of the wrong type or not allowed, or a value the audit uses that is an
            unresolved ``${...}`` (a variable or interpolation it cannot follow).
    """
    overrides, _ = defaults_for(table or framework, release) if framework != "klnotes" else ({}, "")
    name = DEFAULTS_VERSION[framework].split()[0]
    label = (
        f"{name} {'' if framework == 'trl' else 'v'}{release}"
        if release
        else DEFAULTS_VERSION[framework]
    )
    values, settings = {}, []
    for key in keys or KEYS[framework]:
        if key.name in given:
            value = convert_value(key, given[key.name], origin_of[key.name][0])
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


def check_unknown(framework: str, names, known: list[str]) -> tuple[list[str], list[str]]:
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


def step_count(formula: str, values: dict, count) -> dict:
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


def parse_argv(
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
