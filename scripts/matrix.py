"""The version matrix: the tests on the declared floors, a Colab-like set and the newest releases.

Each set gets a fresh venv (in a private temporary folder, or under --work to reuse between runs) and a
pytest run of the tests (default: the representative fast subset below; ``--full`` runs the README's
whole suite). What a set installs is resolved first, in seconds and deterministically, by
``uv pip compile`` (uv is taken from PATH or installed from PyPI into ``WORK/_uv``): the package's
requirements (its ``trl`` extra and the test tools; ``--full``: its ``dev`` extra) under the set's pins,
wheels only (``--only-binary :all:``: no release is built from source, so a dependency without a wheel
for the set's Python is passed over rather than compiled), every other release the newest that fits.
pip then installs exactly that list with ``--no-deps`` (no resolution left to pip, whose backtracking
over datasets/huggingface-hub took over 15 minutes on the floors), then the package itself, and runs
``pip check``. The resolved list (``SET-resolved.txt``) and ``pip freeze`` (``SET-freeze.txt``) are kept
beside the log. The table (set, Python and library versions, passed/failed/skipped) is printed and, with
--out, written as Markdown and JSON (with the freeze).

Sets:

* ``floors``: the oldest supported Python and every ``name>=X`` of pyproject.toml's dependencies and of
  the ``trl`` extra installed at exactly ``X`` (indirect requirements and test tools newest).
* ``colab``: Python 3.12 and the torch/transformers/numpy/pandas (and the other libraries klnotes uses)
  of Colab's GPU runtime (googlecolab/backend-info's pip-freeze.gpu.txt, 2026-08; update COLAB with it).
* ``newest``: the newest Python here and the newest release of everything (no constraints at all).

Usage (repository root):  python scripts/matrix.py [--sets floors,colab,newest] [--full] [--work DIR]
    [--out DIR] [--record benchmarks] [--find-links DIR ...] [-- PYTEST ARGS]
``--record benchmarks`` keeps the repository's record (benchmarks/matrix.md and .json) up to date.
Interpreters are found as ``python3.X`` on PATH or under ~/.pyenv/versions; ``--python 3.10=PATH`` names one.
Only PyPI is needed; on Linux, PyPI's torch is a CUDA build (about 3 GB with its libraries) that also runs
on a CPU; ``--find-links`` points pip at wheels downloaded before (``pip download torch==2.6.0 -d DIR``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: The representative fast subset: every test module that exercises torch, transformers, numpy, pandas,
#: matplotlib and TRL through klnotes' public API (math core, exact checks, GPT-2 policies, the trainer,
#: checkpoints, the results store, the TRL plug-in, bad inputs), without the chapters (nbval), the
#: browser test, the gpu-scale chapter runs and the two-process DDP test (minutes each on two cores).
SUBSET = (
    "tests/test_estimators.py",
    "tests/test_coefficients.py",
    "tests/test_surrogates.py",
    "tests/test_exact.py",
    "tests/test_objective.py",
    "tests/test_weighted.py",
    "tests/test_sequences.py",
    "tests/test_policies.py",
    "tests/test_trainer.py",
    "tests/test_trainer_internals.py",
    "tests/test_crash_safety.py",
    "tests/test_experiments.py",
    "tests/test_bad_inputs.py",
    "tests/test_trl_plugin.py",
    "tests/test_plotting.py",
    "tests/test_packaging.py",
)

#: Floors of indirect requirements pinned in the ``floors`` set (none: uv resolves them newest-compatible).
FLOOR_EXTRAS: tuple[str, ...] = ()
#: Test tools installed with ``.[trl]`` for the fast subset (their floors as in the ``dev`` extra).
SUBSET_TOOLS = ("pytest>=8", "nbval>=0.11", "pytest-xdist>=3.5", "setuptools>=77")
#: pyproject.toml's build-system requirement (the package is installed without build isolation).
BUILD = ("setuptools>=77",)

#: Colab's GPU runtime (googlecolab/backend-info, pip-freeze.gpu.txt as of 2026-08-19; Colab's Python
#: became 3.13 that day, 3.12 before). Local version labels (+cu128) dropped.
COLAB = {
    "python": "3.12",
    "pins": [
        "torch==2.11.0",
        "transformers==5.15.0",
        "numpy==2.1.3",
        "pandas==2.2.3",
        "matplotlib==3.10.0",
        "seaborn==0.13.2",
        "tqdm==4.67.3",
        "pyyaml==6.0.3",
        "accelerate==1.14.0",
        "datasets==4.0.0",
        "tokenizers==0.22.2",
    ],
}
SHOWN = ("torch", "transformers", "numpy", "pandas", "trl", "accelerate", "matplotlib")


def _project() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def floor_pins(project: dict) -> list[str]:
    """``name==X`` for every ``name>=X`` among the dependencies and the ``trl`` extra.

    >>> floor_pins({"dependencies": ["torch>=2.6", "tqdm"], "optional-dependencies": {"trl": ["trl>=0.20"]}})
    ['torch==2.6', 'trl==0.20']
    """
    pins = []
    for text in [
        *project["dependencies"],
        *project.get("optional-dependencies", {}).get("trl", []),
    ]:
        match = re.fullmatch(r"\s*([A-Za-z0-9._-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*", text)
        if match:
            pins.append(f"{match[1]}=={match[2]}")
    return pins


def sets(project: dict) -> dict[str, dict]:
    oldest = re.fullmatch(r">=\s*(3\.\d+)", project["requires-python"].strip())
    if oldest is None:
        raise ValueError(
            f"requires-python {project['requires-python']!r} is not of the form '>=3.N'"
        )
    return {
        "floors": {"python": oldest[1], "pins": [*floor_pins(project), *FLOOR_EXTRAS]},
        "colab": COLAB,
        "newest": {"python": "3.13", "pins": []},
    }


def find_python(version: str, given: dict[str, str]) -> str | None:
    if version in given:
        return given[version]
    found = shutil.which(f"python{version}")
    if found and subprocess.run([found, "-c", ""], capture_output=True).returncode == 0:
        return found
    candidates = sorted(
        glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}"))
    )
    return candidates[-1] if candidates else None


def requirements(project: dict, extras: tuple[str, ...]) -> list[str]:
    """The package's dependencies and those of ``extras``, its own extras (``klnotes[book,trl]``) expanded.

    >>> requirements({"name": "k", "dependencies": ["torch>=2.6"], "optional-dependencies":
    ...     {"trl": ["trl>=0.20"], "dev": ["k[trl]", "pytest>=8"]}}, ("dev",))
    ['torch>=2.6', 'trl>=0.20', 'pytest>=8']
    """
    own = re.sub(r"[-_.]+", "-", project["name"]).lower()
    optional = project.get("optional-dependencies", {})
    out: list[str] = []
    seen: set[str] = set()

    def add(text: str) -> None:
        match = re.fullmatch(r"\s*([A-Za-z0-9._-]+)\s*\[([^\]]*)\]\s*", text)
        if match and re.sub(r"[-_.]+", "-", match[1]).lower() == own:
            for extra in (e.strip() for e in match[2].split(",")):
                expand(extra)
        elif text not in out:
            out.append(text)

    def expand(extra: str) -> None:
        if extra in seen:
            return
        if extra not in optional:
            raise ValueError(f"{project['name']} has no extra {extra!r}; it has {sorted(optional)}")
        seen.add(extra)
        for text in optional[extra]:
            add(text)

    for text in project["dependencies"]:
        add(text)
    for extra in extras:
        expand(extra)
    return out


def to_install(project: dict, full: bool) -> list[str]:
    """What a set installs besides the package: its ``dev`` extra (``--full``), else its ``trl`` extra and
    the test tools of the fast subset; and the package's build requirement (it is installed without build
    isolation, from the same resolution)."""
    both = (
        requirements(project, ("dev",))
        if full
        else [*requirements(project, ("trl",)), *SUBSET_TOOLS]
    )
    return [*both, *(r for r in BUILD if r not in both)]


def compile_command(
    uv: list[str], python: str, inputs: Path, constraints: Path, output: Path
) -> list[str]:
    """``uv pip compile`` of ``inputs`` under ``constraints`` for ``python``: wheels only, every release not
    constrained the newest that fits, the result a plain ``name==version`` list."""
    return [
        *uv,
        "pip",
        "compile",
        "--quiet",
        "--python",
        python,
        "--only-binary",
        ":all:",
        "--no-header",
        "--no-annotate",
        "-c",
        str(constraints),
        str(inputs),
        "-o",
        str(output),
    ]


def install_commands(python: str, resolved: Path) -> list[list[str]]:
    """pip installs exactly the resolved list (``--no-deps``: nothing left to resolve), then the package
    (editable, ``--no-deps``), then checks that every requirement is met."""
    pip = [python, "-m", "pip"]
    return [
        [*pip, "install", "-q", "--upgrade", "pip"],
        [*pip, "install", "-q", "--no-deps", "-r", str(resolved)],
        [*pip, "install", "-q", "--no-deps", "--no-build-isolation", "-e", "."],
        [*pip, "check"],
    ]


def pip_env(find_links: list[str] = ()) -> dict[str, str]:
    """The environment of a set's commands: no constraints file from pip's configuration (an empty
    ``PIP_CONSTRAINT`` does not lift a ``constraint =`` of pip.conf, such as a machine's torch cap:
    ``os.devnull`` does), no hub access, nothing of the caller's ``PYTHONPATH``."""
    env = {
        **os.environ,
        "PIP_CONSTRAINT": os.devnull,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_PROGRESS_BAR": "off",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": "",
    }
    if find_links:
        env["PIP_FIND_LINKS"] = " ".join(find_links)
    return env


def find_uv(work: Path, step) -> list[str] | None:
    """uv from PATH, else installed from PyPI into ``work/_uv`` (reused by a later run)."""
    found = shutil.which("uv")
    if found:
        return [found]
    venv = work / "_uv"
    uv = venv / "bin" / "uv"
    if not uv.exists():
        if step([sys.executable, "-m", "venv", str(venv)]).returncode:
            return None
        if step([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "uv"]).returncode:
            return None
    return [str(uv)]


def run_set(
    name: str,
    spec: dict,
    python: str,
    work: Path,
    tests: list[str],
    find_links: list[str],
    log,
    full: bool = False,
) -> dict:
    row = {"set": name, "python": spec["python"], "pins": spec["pins"]}
    venv = work / name
    bin_python = venv / "bin" / "python"
    env = pip_env(find_links)
    pins = work / f"{name}-constraints.txt"
    pins.write_text("".join(p + "\n" for p in spec["pins"]))
    inputs = work / f"{name}-requirements.txt"
    inputs.write_text("".join(r + "\n" for r in to_install(_project(), full)))
    resolved = work / f"{name}-resolved.txt"
    start = time.time()

    def step(args, **kw):
        print("$", " ".join(map(str, args)), file=log, flush=True)
        return subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, **kw)

    row["venv_reused"] = bin_python.exists()  # --work: installs into it take only what changed
    if not row["venv_reused"]:
        if step([python, "-m", "venv", str(venv)]).returncode:
            return {**row, "status": "venv failed"}
    uv = find_uv(work, step)
    if uv is None:
        return {**row, "status": "uv install failed (see the log)"}
    if step(compile_command(uv, str(bin_python), inputs, pins, resolved)).returncode:
        return {**row, "status": "resolution failed (see the log)"}
    row["resolve_s"] = round(time.time() - start)
    for args in install_commands(str(bin_python), resolved):
        done = step(args)
        if done.returncode:
            row["install_s"] = round(time.time() - start)
            return {**row, "status": f"install failed at `{' '.join(args[2:4])}` (see the log)"}
    row["install_s"] = round(time.time() - start)
    freeze = subprocess.run(
        [str(bin_python), "-m", "pip", "freeze", "--exclude-editable"],
        capture_output=True,
        text=True,
        env=env,
    )
    row["freeze"] = freeze.stdout.split()
    (work / f"{name}-freeze.txt").write_text(freeze.stdout)
    probe = (
        "import importlib.metadata as m, json, platform\n"
        f"names = {list(SHOWN)!r}\n"
        "out = {'python': platform.python_version()}\n"
        "for n in names:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: out[n] = '-'\n"
        "print(json.dumps(out))"
    )
    versions = subprocess.run(
        [str(bin_python), "-c", probe], capture_output=True, text=True, env=env
    )
    row["versions"] = json.loads(versions.stdout) if versions.returncode == 0 else {}
    junit = work / f"{name}-junit.xml"
    start = time.time()
    test = step([str(bin_python), "-m", "pytest", *tests, f"--junitxml={junit}"], timeout=3 * 3600)
    row["test_s"] = round(time.time() - start)
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failed = []
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            kinds = {child.tag for child in case}
            if kinds & {"failure", "error"}:
                counts["failed"] += 1
                failed.append(f"{case.get('classname')}::{case.get('name')}")
            elif "skipped" in kinds:
                counts["skipped"] += 1
            else:
                counts["passed"] += 1
    row.update(counts, failed_tests=failed, exit_code=test.returncode)
    row["status"] = "green" if test.returncode == 0 else f"red (pytest exit {test.returncode})"
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| set | python | " + " | ".join(SHOWN) + " | passed | failed | skipped | status |",
        "|" + " --- |" * (len(SHOWN) + 6),
    ]
    for r in rows:
        v = r.get("versions", {})
        lines.append(
            f"| {r['set']} | {v.get('python', r['python'])} | "
            + " | ".join(v.get(n, "?") for n in SHOWN)
            + f" | {r.get('passed', '-')} | {r.get('failed', '-')} | {r.get('skipped', '-')} | {r['status']} |"
        )
    return "\n".join(lines)


def merge_rows(old: list[dict], new: list[dict], order: list[str]) -> list[dict]:
    """``old`` rows with those of ``new`` replacing the rows of the same set, in ``order`` (sets not in it
    last).

    >>> [r["status"] for r in merge_rows([{"set": "a", "status": 1}, {"set": "b", "status": 2}],
    ...                                  [{"set": "a", "status": 3}], ["b", "a"])]
    [2, 3]
    """
    rows = {r["set"]: r for r in old}
    rows.update({r["set"]: r for r in new})
    rank = {name: i for i, name in enumerate(order)}
    return sorted(rows.values(), key=lambda r: rank.get(r["set"], len(order)))


def markdown(rows: list[dict]) -> str:
    """The record: the table, what each set pinned, its timings and failures, and its ``pip freeze``."""
    parts = [
        "# The version matrix, last run",
        "",
        "Written by `python scripts/matrix.py --record benchmarks` (one row per set, replaced when that set is",
        "run again; the fast subset unless a row says otherwise). pyproject.toml's floors are the `floors` row.",
        "",
        table(rows),
        "",
    ]
    for r in rows:
        timing = ", ".join(
            f"{k[:-2]} {r[k]} s" for k in ("resolve_s", "install_s", "test_s") if k in r
        )
        parts += [
            f"## {r['set']}",
            "",
            f"- run: {r.get('date', '?')} on {r.get('machine', '?')}; {timing or 'no timings'}"
            f"{' (into a venv of an earlier run)' if r.get('venv_reused') else ''}; "
            f"tests: {'the whole suite' if r.get('full') else 'the fast subset'}",
            f"- pins: {', '.join(r['pins']) or 'none (the newest of everything)'}",
        ]
        if r.get("failed_tests"):
            parts.append("- failed: " + ", ".join(r["failed_tests"]))
        if r.get("freeze"):
            parts += [
                "",
                "<details><summary>pip freeze</summary>",
                "",
                "```",
                *r["freeze"],
                "```",
                "",
                "</details>",
            ]
        parts.append("")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="floors,colab,newest")
    parser.add_argument(
        "--full", action="store_true", help="the whole suite instead of the fast subset"
    )
    parser.add_argument(
        "--work", help="keep the venvs here (reused by a later run); default: a private temp folder"
    )
    parser.add_argument("--out", help="write matrix.md and matrix.json here")
    parser.add_argument(
        "--record",
        help="merge the rows into DIR/matrix.json (a set run again replaces its row) and rewrite "
        "DIR/matrix.md with the table and each set's pip freeze (the repository's: benchmarks)",
    )
    parser.add_argument("--python", action="append", default=[], metavar="X.Y=PATH")
    parser.add_argument("--find-links", action="append", default=[], metavar="DIR")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    all_sets = sets(_project())
    wanted = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in all_sets]
    if unknown:
        parser.error(f"unknown set(s) {unknown}; allowed: {sorted(all_sets)}")
    given = dict(p.split("=", 1) for p in args.python)
    extra = [a for a in args.pytest_args if a != "--"]
    tests = (["-n", "2", "--dist", "loadscope"] if args.full else [*SUBSET, "-q"]) + extra
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="klnotes-matrix-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in wanted:
        spec = all_sets[name]
        python = find_python(spec["python"], given)
        if python is None:
            rows.append(
                {
                    "set": name,
                    "python": spec["python"],
                    "pins": spec["pins"],
                    "status": f"not run: no python{spec['python']} here (--python {spec['python']}=PATH)",
                }
            )
            continue
        with open(work / f"{name}.log", "a") as log:
            rows.append(run_set(name, spec, python, work, tests, args.find_links, log, args.full))
        rows[-1].update(
            date=time.strftime("%Y-%m-%d", time.gmtime()),
            machine=f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
            full=args.full,
        )
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = table(rows)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "matrix.md").write_text(text + "\n")
        (out / "matrix.json").write_text(json.dumps(rows, indent=1) + "\n")
        for name in wanted:
            for kind in ("resolved", "freeze"):
                made = work / f"{name}-{kind}.txt"
                if made.exists():
                    shutil.copyfile(made, out / made.name)
    if args.record:
        record = Path(args.record)
        record.mkdir(parents=True, exist_ok=True)
        stored = record / "matrix.json"
        old = json.loads(stored.read_text()) if stored.exists() else []
        merged = merge_rows(old, rows, list(all_sets))
        stored.write_text(json.dumps(merged, indent=1) + "\n")
        (record / "matrix.md").write_text(markdown(merged))
    if not args.work:
        print(f"logs and venvs: {work}")
    return 0 if all(r["status"] == "green" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
