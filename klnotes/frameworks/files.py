"""Reading configuration files and launch scripts safely, never running them (``klnotes audit``).

Every reader has limits, so a hostile or broken file fails fast with a clear message instead of
hanging or ending in a traceback: at most :data:`MAX_BYTES` bytes from a regular file, strict UTF-8,
at most :data:`MAX_DEPTH` levels of nesting and :data:`MAX_ENTRIES` settings after YAML aliases are
expanded, at most :data:`MAX_AST_NODES` nodes in a Python file. YAML is read with
``yaml.safe_load``, Python with ``ast`` (literal keyword arguments of the TRL ``*Config(...)``
calls only), shell scripts with ``shlex`` after following the common wrappers (``bash -c``,
``ray job submit --``, ``srun``, ``torchrun``, heredocs, ``NAME=value`` variables).
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import stat
import textwrap
from pathlib import Path

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_ENTRIES",
    "MAX_AST_NODES",
    "UsageError",
    "FileError",
    "read_text",
    "load_mapping",
    "flatten",
    "config_kwargs",
    "ScriptArgs",
    "script_args",
    "TRL_CONFIGS",
]

#: Largest file read (bytes).
MAX_BYTES = 2_000_000
#: Deepest nesting of mappings/lists followed.
MAX_DEPTH = 64
#: Most settings a file may hold once YAML aliases are expanded.
MAX_ENTRIES = 20_000
#: Most syntax-tree nodes in a Python file.
MAX_AST_NODES = 200_000
#: The TRL configuration classes whose keyword arguments are read, and the trainer each configures.
TRL_CONFIGS = {"GRPOConfig": "grpo", "RLOOConfig": "rloo", "PPOConfig": "ppo"}


class UsageError(ValueError):
    """Unknown key, flag or value, a bad value, or an unreadable file (``klnotes audit`` exits
    with 2).

    Raised by the readers of :doc:`chapter 9 </book/09_in_practice>`'s ``klnotes audit``; no
    formula.
    """


class FileError(UsageError):
    """A file that cannot be read as settings (too large, not text, too deep, not parseable).

    Raised by the readers of :doc:`chapter 9 </book/09_in_practice>`'s ``klnotes audit``; no
    formula.
    """


def read_text(path) -> str:
    """The text of ``path``: a regular file of at most :data:`MAX_BYTES` bytes, strict UTF-8.

    The first step of ``klnotes audit FILE`` (:doc:`chapter 9 </book/09_in_practice>`, "From your
    own configuration"); no formula.

    Raises:
        FileError: missing or unreadable, not a regular file (``/dev/zero``, a folder, a pipe),
        larger
            than the limit, or not UTF-8 (the message gives the offset of the first bad byte).
    """
    p = Path(path)
    try:
        info = os.stat(p)
    except OSError as err:
        raise FileError(f"cannot read {p}: {err.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise FileError(
            f"{p} is not a regular file (a device, folder or pipe); give a config file or script"
        )
    if info.st_size > MAX_BYTES:
        raise FileError(
            f"{p} has {info.st_size:,} bytes; the audit reads files of at most {MAX_BYTES:,} bytes"
        )
    try:
        with open(p, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except OSError as err:
        raise FileError(f"cannot read {p}: {err.strerror}") from None
    if len(data) > MAX_BYTES:
        raise FileError(
            f"{p} has more than {MAX_BYTES:,} bytes; the audit reads files of at most that size"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FileError(
            f"{p} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
            "save it as UTF-8"
        ) from None


def flatten(tree, prefix: str = "") -> dict:
    """Nested mappings to dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``); Hydra's top-level
    ``defaults`` list is skipped. Iterative, with :data:`MAX_DEPTH` and :data:`MAX_ENTRIES` limits
    (YAML aliases share objects, so a 1 KB file can expand to billions of entries) and cycle checks.

    Used by :func:`load_mapping` (:doc:`chapter 9 </book/09_in_practice>`); no formula.

    Raises:
        FileError: deeper than :data:`MAX_DEPTH`, more than :data:`MAX_ENTRIES` entries, or a
            mapping that contains itself (a recursive alias).
    """
    out: dict = {}
    stack = [(tree, prefix, 0, ())]
    visited = 0
    while stack:
        node, pre, depth, ancestors = stack.pop()
        if depth > MAX_DEPTH:
            raise FileError(
                f"settings nested deeper than {MAX_DEPTH} levels "
                f"(at {pre.rstrip('.') or 'the top'})"
            )
        if id(node) in ancestors:
            raise FileError(
                f"a mapping contains itself (recursive YAML alias at {pre.rstrip('.')})"
            )
        for k, v in node.items():
            visited += 1
            if visited > MAX_ENTRIES:
                raise FileError(
                    f"more than {MAX_ENTRIES:,} settings once YAML aliases are expanded; "
                    "the audit refuses files this large"
                )
            if pre == "" and k == "defaults":
                continue
            name = f"{pre}{k}"
            if isinstance(v, dict):
                stack.append((v, name + ".", depth + 1, ancestors + (id(node),)))
            else:
                if isinstance(v, list) and _depth(v, depth) > MAX_DEPTH:
                    raise FileError(f"settings nested deeper than {MAX_DEPTH} levels (at {name})")
                out[name] = v
    return out


def _depth(value, depth: int) -> int:
    """Nesting depth of lists (iterative; stops counting past :data:`MAX_DEPTH`)."""
    best, stack = depth, [(value, depth)]
    while stack:
        v, d = stack.pop()
        best = max(best, d)
        if d > MAX_DEPTH:
            return d
        if isinstance(v, (list, tuple)):
            stack.extend((x, d + 1) for x in v[:1000])
        elif isinstance(v, dict):
            stack.extend((x, d + 1) for x in list(v.values())[:1000])
    return best


def _yaml(text: str, path) -> object:
    import yaml

    # Cheap pre-check: the pure-Python YAML parser recurses once per nesting level.
    depth = best = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            best = max(best, depth)
        elif ch in "]}":
            depth -= 1
    if best > MAX_DEPTH:
        raise FileError(
            f"{path}: brackets nested {best} deep; the audit follows at most {MAX_DEPTH} levels"
        )
    try:
        return yaml.safe_load(text)
    except RecursionError:
        raise FileError(
            f"{path}: nested too deeply to parse; the audit follows at most {MAX_DEPTH} levels"
        ) from None
    except yaml.YAMLError as err:
        raise FileError(f"{path} is not valid YAML/JSON: {err}") from None


def load_mapping(path) -> tuple[dict, tuple[str, ...], str]:
    """``(settings, unread, trainer)`` of a YAML/JSON file or of a Python file's TRL
    ``*Config(...)`` call.

    What ``klnotes audit FILE`` reads (:doc:`chapter 9 </book/09_in_practice>`, "From your own
    configuration"); no formula.

    ``settings`` is a flat ``{dotted key: value}`` mapping; ``unread`` lists what could not be read
    (e.g. a ``**cfg`` whose keys are not literal); ``trainer`` is ``"grpo"``, ``"rloo"`` or
    ``"ppo"``
    for a Python TRL config, ``""`` otherwise.

    Raises:
        FileError: see :func:`read_text`, :func:`flatten`; invalid YAML/Python; not a mapping.
    """
    text = read_text(path)
    if str(path).endswith(".py"):
        return config_kwargs(text, path)
    tree = _yaml(text, path)
    if tree is None:
        return {}, (), ""
    if not isinstance(tree, dict):
        raise FileError(f"{path} must hold a mapping of settings, found {type(tree).__name__}")
    return flatten(tree), (), ""


def _literal_dicts(tree: ast.AST) -> dict[str, dict]:
    """``name = {...}`` / ``name = dict(...)`` assignments with literal contents, by name."""
    out = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            try:
                if isinstance(node.value, ast.Dict):
                    value = ast.literal_eval(node.value)
                elif (
                    isinstance(node.value, ast.Call)
                    and getattr(node.value.func, "id", "") == "dict"
                    and not node.value.args
                ):
                    value = {
                        kw.arg: ast.literal_eval(kw.value) for kw in node.value.keywords if kw.arg
                    }
                else:
                    continue
            except (ValueError, TypeError, SyntaxError, RecursionError):
                continue
            if isinstance(value, dict):
                out[node.targets[0].id] = value
    return out


def config_kwargs(text: str, path) -> tuple[dict, tuple[str, ...], str]:
    """Keyword arguments of the ``GRPOConfig``/``RLOOConfig``/``PPOConfig`` call in a Python
    snippet.

    Used by :func:`load_mapping` for TRL's Python configs (:doc:`chapter 9 </book/09_in_practice>`);
    no formula.

    Literal values are read with ``ast.literal_eval``; a ``**name`` splat is followed when
    ``name`` is a
    literal dict assigned in the same file, and listed in ``unread`` otherwise; a non-literal
    value is
    kept as ``${expression}`` (unresolved). Nothing is executed.

    Raises:
        FileError: not valid Python, too many nodes, nested too deeply, or no such call.
    """
    text = textwrap.dedent(text)  # a code block copied out of a documentation page may be indented
    try:
        tree = ast.parse(text)
    except (RecursionError, MemoryError):
        raise FileError(f"{path}: an expression nested too deeply to parse") from None
    except SyntaxError as err:
        raise FileError(f"{path} is not valid Python: {err.msg} (line {err.lineno})") from None
    nodes = sum(1 for _ in ast.walk(tree))
    if nodes > MAX_AST_NODES:
        raise FileError(
            f"{path} has {nodes:,} syntax nodes; the audit reads Python files of at most "
            f"{MAX_AST_NODES:,}"
        )
    dicts = _literal_dicts(tree)
    out, unread, trainer = {}, [], ""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        fn = node.func
        name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
        if name not in TRL_CONFIGS:
            continue
        trainer = trainer or TRL_CONFIGS[name]
        for kw in node.keywords:
            if kw.arg is None:
                splat = (
                    kw.value.id if isinstance(kw.value, ast.Name) else ast.unparse(kw.value)[:60]
                )
                if splat in dicts:
                    for k, v in dicts[splat].items():
                        out.setdefault(str(k), v)
                else:
                    unread.append(
                        f"{name}(**{splat}, ...) at line {node.lineno}: the keys of {splat} are "
                        f"not "
                        "literal in this file, so they cannot be read"
                    )
                continue
            try:
                out[kw.arg] = ast.literal_eval(kw.value)
            except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
                out[kw.arg] = "${" + ast.unparse(kw.value)[:80] + "}"  # not a literal: unresolved
    if not trainer:
        raise FileError(f"{path}: no {'/'.join(TRL_CONFIGS)}(...) call found")
    return out, tuple(unread), trainer


# ---------------------------------------------------------------------------------------------
# Launch scripts
# ---------------------------------------------------------------------------------------------

_ASSIGN = re.compile(
    r"^(?:export\s+|local\s+|declare\s+(?:-\w+\s+)?)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$"
)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-=]([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")


class ScriptArgs(tuple):
    """The framework arguments of a script (a tuple of strings) with ``unread`` (what could not be
    read)
    and ``notes``.

    Returned by :func:`script_args` (:doc:`chapter 9 </book/09_in_practice>`); no formula.
    """

    unread: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    #: OpenRLHF/TRL: the tokens before the framework's arguments (the launcher: ``accelerate
    #: launch --num_processes 8 ...``, ``torchrun --nproc_per_node 8 ...``).
    launch: tuple[str, ...] = ()


def _heredocs(text: str) -> str:
    """Unfold heredocs: their bodies become ordinary script lines (a ``python - <<EOF`` or
    ``cat > run.sh <<EOF`` body holds the same settings)."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        line = lines[i]
        m = _HEREDOC.search(line)
        out.append(_HEREDOC.sub(" ", line) if m else line)
        i += 1
        if m:
            tag = m.group(2)
            while i < len(lines) and lines[i].strip() != tag:
                out.append(lines[i])
                i += 1
            i += 1
    return "\n".join(out)


def _expand(token: str, env: dict, unresolved: set) -> str:
    def sub(m):
        name = m.group(1) or m.group(3)
        if name in env:
            return env[name]
        if m.group(2) is not None:
            return m.group(2)
        unresolved.add(name)
        return m.group(0)

    return _VAR.sub(sub, token)


def _tokens(text: str, env: dict, unresolved: set, depth: int = 0) -> list[str]:
    """shlex tokens of ``text`` with variables expanded and ``bash -c "..."`` strings split
    again."""
    if depth > 4:
        raise FileError("bash -c nested more than 4 levels deep")
    text = _heredocs(text.replace("\\\r\n", " ").replace("\\\n", " "))
    out: list[str] = []
    array: list[str] | None = None  # inside NAME=( ... )
    array_name = ""
    for line in text.split("\n"):
        try:
            toks = shlex.split(line, comments=True)
        except ValueError:  # an unbalanced quote on this line: split on whitespace
            toks = line.split("#")[0].split()
        for j, tok in enumerate(toks):
            if array is not None:
                if tok == ")":
                    env[array_name + "[@]"] = " ".join(shlex.quote(a) for a in array)
                    array = None
                else:
                    array.append(_expand(tok.rstrip(")"), env, unresolved))
                    if tok.endswith(")") and not tok.endswith("\\)"):
                        env[array_name + "[@]"] = " ".join(shlex.quote(a) for a in array)
                        array = None
                continue
            am = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=\((.*)", tok)
            if am:
                array, array_name = [], am.group(1)
                rest = am.group(2)
                if rest.endswith(")"):
                    array += [rest[:-1]] if rest[:-1] else []
                    env[array_name + "[@]"] = " ".join(shlex.quote(a) for a in array)
                    array = None
                elif rest:
                    array.append(rest)
                continue
            arr = re.fullmatch(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\[[@*]\]\}", tok)
            if arr:
                if arr.group(1) + "[@]" in env:
                    out.extend(shlex.split(env[arr.group(1) + "[@]"]))
                else:
                    unresolved.add(arr.group(1))
                    out.append(tok)
                continue
            m = _ASSIGN.match(tok)
            if m and j == 0 or (m and j > 0 and toks[j - 1] in ("export", "local", "declare")):
                env[m.group(1)] = _expand(m.group(2), env, set())
                continue
            tok = _expand(tok, env, unresolved)
            if j > 0 and toks[j - 1] == "-c" and " " in tok:
                out.extend(_tokens(tok, env, unresolved, depth + 1))
                continue
            out.append(tok)
    return out


def script_args(text: str, framework: str) -> ScriptArgs:
    """The framework arguments of a launch script: verl ``key.sub=value`` overrides, or OpenRLHF/TRL
    ``--flag [value]`` tokens (those after ``openrlhf.cli.train_*``/``trl``'s entry when present,
    else
    after the first ``--``-flag), through ``bash -c``, ``ray job submit --``, ``srun``/``torchrun``/
    ``deepspeed``/``accelerate launch`` and heredocs, with shell variables resolved where the script
    assigns them. ``unread`` names what could not be followed (``$@``, variables never assigned).

    What ``klnotes audit script.sh`` reads (:doc:`chapter 9 </book/09_in_practice>`, "From your own
    configuration"); no formula.
    """
    env: dict = {}
    unresolved: set = set()
    tokens = _tokens(text, env, unresolved)
    unread, notes = [], []
    if any(t in ("$@", "$*", "${@}") or "$@" in t for t in tokens):
        notes.append(
            "the script forwards its own arguments ($@): add the ones you pass to it to this "
            "command"
        )
    if framework == "verl":
        args = [
            t
            for t in tokens
            if re.match(r"^[+~]*[A-Za-z_][\w-]*(\.[\w-]+)+(=|$)", t)
            and ("=" in t or t.startswith("~"))
            and not t.startswith(("http", "ray."))
        ]
    else:
        entry = next(
            (
                i
                for i, t in enumerate(tokens)
                if re.search(r"openrlhf\.cli\.train_|trl\.scripts|\btrl$", t)
            ),
            None,
        )
        if entry is None:  # the training script (``accelerate launch --num_processes 8 x.py``)
            entry = next((i for i, t in enumerate(tokens) if t.endswith(".py")), None)
        if entry is None:
            entry = (
                next(
                    (i for i, t in enumerate(tokens) if t.startswith("--") and t != "--"),
                    len(tokens),
                )
                - 1
            )
        args = [
            t for t in tokens[entry + 1 :] if t not in ("(", ")", "--") and not t.endswith("=(")
        ]
    for name in sorted(unresolved):  # a variable passed whole as arguments may hold any setting
        if any(re.fullmatch(r"\$\{?" + name + r"(\[[@*]\])?\}?", a) for a in args + tokens[-50:]):
            unread.append(
                f"${name} is passed as arguments but never assigned in the script: its settings "
                f"are "
                "unknown (add them to this command)"
            )
    out = ScriptArgs(args)
    out.unread, out.notes = tuple(unread), tuple(notes)
    if framework != "verl":
        out.launch = tuple(tokens[: entry + 1])
    return out
