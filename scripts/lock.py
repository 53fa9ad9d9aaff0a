"""The locked test environment: write, check or refresh ``constraints.txt``.

``constraints.txt`` pins every distribution that ``pip install -e ".[dev]"`` brings in (the package's
own ranges in pyproject.toml stay open: users are never pinned). The README's two commands install
with ``-c constraints.txt``, so a fresh machine gets what the last green run had.

Usage (repository root):

    python scripts/lock.py write              # pin what the running environment has (klnotes[dev]'s closure)
    python scripts/lock.py check              # exit 1 if the running environment differs from the lock
    python scripts/lock.py refresh [PYTEST ARGS...]
        # a fresh venv in a private temporary folder, the newest releases allowed by pyproject.toml,
        # the test suite (default: the README's test command's pytest arguments) and, only if it passes,
        # constraints.txt rewritten from that venv. --python PATH picks the interpreter (default: this one);
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
from pathlib import Path

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


def refresh(python: str, pytest_args: list[str], keep: bool) -> int:
    work = Path(tempfile.mkdtemp(prefix="klnotes-lock-"))  # private (0700), never a fixed /tmp path
    venv = work / "venv"
    bin_python = venv / "bin" / "python"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PIP_CONSTRAINT": "",
    }  # the newest, not the old lock
    try:
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(bin_python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True, env=env
        )
        subprocess.run(
            [str(bin_python), "-m", "pip", "install", "-q", "-e", ".[dev]"],
            check=True,
            env=env,
            cwd=ROOT,
        )
        done = subprocess.run([str(bin_python), "-m", "pytest", *pytest_args], env=env, cwd=ROOT)
        if done.returncode != 0:
            print(
                f"the suite failed on the newest releases: {LOCK.name} is left as it was",
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
        LOCK.write_text(text)
        print(f"{LOCK} rewritten from a green run ({len(read_lock())} pins)")
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
        args.python, [a for a in args.pytest_args if a != "--"] or DEFAULT_PYTEST, args.keep
    )


if __name__ == "__main__":
    sys.exit(main())
