"""The locked test environment: write, check or refresh ``constraints.txt``.

``constraints.txt`` pins every distribution that ``pip install -e ".[dev]"`` brings in (the package's
own ranges in pyproject.toml stay open: users are never pinned). The README's two commands install
with ``-c constraints.txt``, so a fresh machine gets what the last green run had.

Usage (repository root):

    python scripts/lock.py write              # pin what the running environment has (klnotes[dev]'s closure)
    python scripts/lock.py check              # exit 1 if the running environment differs from the lock
    python scripts/lock.py refresh [--subset] [--output FILE] [--constraint FILE] [PYTEST ARGS...]
        # a fresh venv in a private temporary folder, the newest releases allowed by pyproject.toml
        # (resolved by `uv pip compile`, installed by pip --no-deps, as scripts/matrix.py does), the test
        # suite (default: the README's test command's pytest arguments; --subset: the version matrix's
        # fast subset) and, only if it passes, constraints.txt (or --output FILE) rewritten from that venv,
        # with the pins that changed printed. --python PATH picks the interpreter (default: this one);
        # --keep keeps the venv and prints its path.

The lock holds ``name==version`` lines without local version labels (``torch==2.13.0`` also matches a
local ``2.13.0+cpu`` build), for the platform and Python version named in its header.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import matrix  # noqa: E402  scripts/matrix.py: the same resolution, install and fast subset

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"
DEFAULT_PYTEST = ["-n", "2", "--dist", "loadscope"]


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _project() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def closure(extras: tuple[str, ...] = ("dev",)) -> dict[str, str]:
    """``{canonical name: version}`` of every installed distribution that klnotes with ``extras`` needs,
    found by following the requirements (markers evaluated for this interpreter) through the running
    environment. A required distribution that is not installed raises ``LookupError`` naming it."""
    from packaging.requirements import Requirement

    project = _project()
    own = _canon(project["name"])
    optional = project.get("optional-dependencies", {})
    todo: list[tuple[str, frozenset[str]]] = []
    seen_extras: set[str] = set()

    def own_extra(extra: str) -> None:
        if extra in seen_extras:
            return
        if extra not in optional:
            raise LookupError(f"klnotes has no extra {extra!r}; it has {sorted(optional)}")
        seen_extras.add(extra)
        for text in optional[extra]:
            add(Requirement(text), extra)

    def add(req, extra: str | None) -> None:
        env = {"extra": extra or ""}
        if req.marker is not None and not req.marker.evaluate(env):
            return
        if _canon(req.name) == own:
            for e in req.extras:
                own_extra(e)
            return
        todo.append((req.name, frozenset(req.extras)))

    for text in project["dependencies"]:
        add(Requirement(text), None)
    for e in extras:
        own_extra(e)
    pinned: dict[str, str] = {}
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, wanted = todo.pop()
        key = (_canon(name), wanted)
        if key in done:
            continue
        done.add(key)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            raise LookupError(
                f"{name} is required by klnotes[{','.join(extras)}] but not installed"
            ) from None
        pinned[_canon(name)] = dist.version.split("+")[0]
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None:
                todo.append((req.name, frozenset(req.extras)))
                continue
            for extra in ("", *wanted):
                if req.marker.evaluate({"extra": extra}):
                    todo.append((req.name, frozenset(req.extras)))
                    break
    return dict(sorted(pinned.items()))


def render(pins: dict[str, str]) -> str:
    head = (
        "# The locked test environment: what the last green run of the test suite had (scripts/lock.py).\n"
        "# Used by the README's commands as `pip install -c constraints.txt ...`; pyproject.toml's ranges\n"
        "# stay open. Refresh with `python scripts/lock.py refresh` (runs the suite on the newest releases).\n"
        f"# Made on Python {platform.python_version()}, {sys.platform}-{platform.machine()}.\n"
    )
    return head + "".join(f"{name}=={version}\n" for name, version in pins.items())


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """``{canonical name: version}`` of a constraints file; a line that is not ``name==version`` raises
    ``ValueError`` naming the file and line."""
    pins = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.!+_-]+)", line)
        if match is None:
            raise ValueError(f"{path}:{number}: {line!r} is not a `name==version` pin")
        pins[_canon(match[1])] = match[2]
    return pins


def check() -> int:
    locked, have = read_lock(), closure()
    diff = [
        f"{n}: locked {locked.get(n, '-')}, installed {have.get(n, '-')}"
        for n in sorted(set(locked) | set(have))
        if locked.get(n) != have.get(n)
    ]
    print("\n".join(diff) if diff else f"the environment matches {LOCK.name} ({len(locked)} pins)")
    return 1 if diff else 0


def changed_pins(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """One line per pin that differs between two locks: ``name: old -> new`` (``-`` where absent).

    >>> changed_pins({"torch": "2.13.0", "tqdm": "4.67.1"}, {"torch": "2.14.1", "tqdm": "4.67.1", "x": "1"})
    ['torch: 2.13.0 -> 2.14.1', 'x: - -> 1']
    """
    return [
        f"{n}: {old.get(n, '-')} -> {new.get(n, '-')}"
        for n in sorted(set(old) | set(new))
        if old.get(n) != new.get(n)
    ]


def refresh_tests(pytest_args: list[str], subset: bool) -> list[str]:
    """The pytest arguments of a refresh: the README's suite (``DEFAULT_PYTEST``) unless other arguments
    are given, or, with ``subset``, the version matrix's fast subset (scripts/matrix.py ``SUBSET``)."""
    if subset:
        return [*matrix.SUBSET, "-q", *pytest_args]
    return pytest_args or DEFAULT_PYTEST


def refresh(
    python: str,
    pytest_args: list[str],
    keep: bool,
    subset: bool = False,
    output: Path = LOCK,
    constraints: tuple[str, ...] = (),
) -> int:
    work = Path(tempfile.mkdtemp(prefix="klnotes-lock-"))  # private (0700), never a fixed /tmp path
    venv = work / "venv"
    bin_python = venv / "bin" / "python"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PIP_CONSTRAINT": os.devnull,  # the newest, not the old lock nor pip.conf's (see matrix.pip_env)
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }

    def step(args, **kw):
        print("$", " ".join(map(str, args)), flush=True)
        return subprocess.run(args, env=env, cwd=ROOT, **kw)

    start = time.time()
    try:
        step([python, "-m", "venv", str(venv)], check=True)
        # Resolved by uv (seconds, deterministic, wheels only), installed by pip with --no-deps, as in
        # scripts/matrix.py: the newest releases that klnotes[dev] allows (and --constraint files).
        uv = matrix.find_uv(work, step)
        if uv is None:
            print("uv could not be installed", file=sys.stderr)
            return 1
        inputs, pins, resolved = work / "requirements.txt", work / "c.txt", work / "resolved.txt"
        inputs.write_text("".join(r + "\n" for r in matrix.to_install(_project(), full=True)))
        pins.write_text("".join(Path(c).read_text() + "\n" for c in constraints))
        step(matrix.compile_command(uv, str(bin_python), inputs, pins, resolved), check=True)
        for args in matrix.install_commands(str(bin_python), resolved):
            step(args, check=True)
        installed = time.time()
        done = step([str(bin_python), "-m", "pytest", *refresh_tests(pytest_args, subset)])
        tested = time.time()
        print(f"install {installed - start:.0f} s, tests {tested - installed:.0f} s")
        if done.returncode != 0:
            print(
                f"the suite failed on the newest releases: {output.name} is left as it was",
                file=sys.stderr,
            )
            return done.returncode
        text = subprocess.run(
            [str(bin_python), str(Path(__file__).resolve()), "print"],
            check=True,
            env=env,
            capture_output=True,
            text=True,
        ).stdout
        old = read_lock() if LOCK.exists() else {}
        output.write_text(text)
        changes = changed_pins(old, read_lock(output))
        print(f"{output} written from a green run ({len(read_lock(output))} pins); ", end="")
        print(f"{len(changes)} differ from {LOCK.name}:", *changes, sep="\n  ")
        return 0
    finally:
        if keep:
            print(f"venv kept: {venv}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("write", help=f"pin the running environment into {LOCK.name}")
    sub.add_parser("print", help="print the pins of the running environment")
    sub.add_parser("check", help=f"compare the running environment with {LOCK.name}")
    ref = sub.add_parser(
        "refresh", help="newest releases in a fresh venv; the suite; the lock if green"
    )
    ref.add_argument("--python", default=sys.executable)
    ref.add_argument("--keep", action="store_true")
    ref.add_argument(
        "--subset",
        action="store_true",
        help="run the version matrix's fast subset (scripts/matrix.py SUBSET), not the whole suite",
    )
    ref.add_argument(
        "--output",
        type=Path,
        default=LOCK,
        help=f"write the new lock here (default: {LOCK.name}), e.g. to review it before it replaces the lock",
    )
    ref.add_argument(
        "--constraint",
        action="append",
        default=[],
        metavar="FILE",
        help="also hold the newest releases to this constraints file (e.g. a machine's torch cap)",
    )
    ref.add_argument("pytest_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "print":
        sys.stdout.write(render(closure()))
        return 0
    if args.command == "write":
        LOCK.write_text(render(closure()))
        print(f"{LOCK}: {len(read_lock())} pins")
        return 0
    if args.command == "check":
        return check()
    return refresh(
        args.python,
        [a for a in args.pytest_args if a != "--"],
        args.keep,
        subset=args.subset,
        output=args.output.resolve(),
        constraints=tuple(args.constraint),
    )


if __name__ == "__main__":
    sys.exit(main())
