"""The wheel ships every subpackage of klnotes (a pip-installed reader, e.g. on Colab, imports them all)."""

from __future__ import annotations

from pathlib import Path

import pytest

try:
    import tomllib  # Python 3.11+
except ModuleNotFoundError:  # Python 3.10: tomli (pytest's own dependency there) is the same parser
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


def test_every_klnotes_subpackage_is_listed_in_pyproject():
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "klnotes").rglob("__init__.py")
    }
    missing = found - listed
    assert not missing, (
        f"subpackages not shipped in the wheel (add them to [tool.setuptools] packages): {sorted(missing)}"
    )


def test_every_results_folder_is_listed_in_pyproject():
    """A results folder not listed as a package would make setuptools warn (and one day drop it)."""
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    folders = {
        "klnotes.results." + ".".join(p.relative_to(ROOT / "results").parts)
        for p in (ROOT / "results").rglob("*")
        if p.is_dir() and not any(part.startswith(".") for part in p.relative_to(ROOT).parts)
    }
    assert folders, "no results folders found"
    assert not folders - listed, (
        f"results folders not listed in pyproject.toml: {sorted(folders - listed)}"
    )


def test_pip_wheel_prints_no_setuptools_warnings(tmp_path):
    """`pip wheel .` builds without setuptools' deprecation and "absent from packages" warnings, and the
    wheel ships GPT-2's tokenizer files and every committed result."""
    import subprocess
    import sys
    import zipfile

    pytest.importorskip("setuptools")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    printed = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if "warning" in line.lower() and "Location 'file" not in line
    ]
    assert not printed, "\n".join(printed)
    (wheel,) = tmp_path.glob("klnotes-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"klnotes/data/gpt2_vocab.json", "klnotes/data/gpt2_merges.txt"} <= names
    shipped = {n for n in names if n.startswith("klnotes/results/") and n.endswith(".csv")}
    assert len(shipped) == len(list((ROOT / "results").rglob("*.csv")))
