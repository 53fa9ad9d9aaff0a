"""The version matrix's and the lock refresh's resolution and install steps (scripts/matrix.py,
scripts/lock.py): what they ask uv and pip to do, checked without installing anything."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import lock  # noqa: E402  scripts/lock.py
import matrix  # noqa: E402  scripts/matrix.py

PROJECT = {
    "name": "Kl_Notes",
    "dependencies": ["torch>=2.6", "tqdm>=4.66.3"],
    "optional-dependencies": {
        "book": ["jupyter-book>=1.0.4,<2"],
        "trl": ["trl>=0.20", "accelerate>=1.4"],
        "dev": ["kl-notes[book,trl]", "pytest>=8", "setuptools>=77"],
    },
}


def test_requirements_expand_the_package_s_own_extras_once():
    assert matrix.requirements(PROJECT, ("dev", "trl")) == [
        "torch>=2.6",
        "tqdm>=4.66.3",
        "jupyter-book>=1.0.4,<2",
        "trl>=0.20",
        "accelerate>=1.4",
        "pytest>=8",
        "setuptools>=77",
    ]


def test_an_unknown_extra_is_named_with_the_allowed_ones():
    with pytest.raises(ValueError, match=r"no extra 'docs'; it has \['book', 'dev', 'trl'\]"):
        matrix.requirements(PROJECT, ("docs",))


def test_the_subset_installs_the_trl_extra_and_test_tools_not_the_book():
    fast = matrix.to_install(PROJECT, full=False)
    assert "trl>=0.20" in fast and "pytest>=8" in fast
    assert not any(r.startswith("jupyter-book") for r in fast)
    full = matrix.to_install(PROJECT, full=True)
    assert "jupyter-book>=1.0.4,<2" in full
    # The build requirement is there once, whether or not the extra already names it.
    assert fast.count("setuptools>=77") == 1 and full.count("setuptools>=77") == 1


def test_the_real_dev_extra_expands_to_plain_requirements():
    for full in (False, True):
        for text in matrix.to_install(matrix._project(), full):
            assert not text.lower().startswith("klnotes"), text
            assert re.fullmatch(r"[A-Za-z0-9._-]+(\[[\w,]+\])?[<>=!~,.\w]*", text), text


def test_resolution_is_wheels_only_under_the_set_s_pins(tmp_path):
    args = matrix.compile_command(
        ["uv"], "/v/bin/python", tmp_path / "in.txt", tmp_path / "c.txt", tmp_path / "out.txt"
    )
    assert args[:3] == ["uv", "pip", "compile"]
    assert args[args.index("--python") + 1] == "/v/bin/python"
    assert args[args.index("--only-binary") + 1] == ":all:"
    assert args[args.index("-c") + 1] == str(tmp_path / "c.txt")
    assert args[args.index("-o") + 1] == str(tmp_path / "out.txt")
    assert str(tmp_path / "in.txt") in args


def test_pip_installs_exactly_the_resolved_list_then_checks_it(tmp_path):
    steps = matrix.install_commands("/v/bin/python", tmp_path / "resolved.txt")
    installs = [s for s in steps if s[3] == "install" and "--upgrade" not in s]
    assert [s[-1] for s in installs] == [str(tmp_path / "resolved.txt"), "."]
    assert all("--no-deps" in s for s in installs), "pip must not resolve anything itself"
    assert steps[-1] == ["/v/bin/python", "-m", "pip", "check"]


def test_uv_is_taken_from_path_when_there(tmp_path, monkeypatch):
    monkeypatch.setattr(matrix.shutil, "which", lambda name: f"/opt/bin/{name}")

    def no_step(args):
        raise AssertionError(f"nothing should be installed: {args}")

    assert matrix.find_uv(tmp_path, no_step) == ["/opt/bin/uv"]


def test_uv_is_installed_into_the_work_folder_otherwise(tmp_path, monkeypatch):
    monkeypatch.setattr(matrix.shutil, "which", lambda name: None)
    ran = []

    def step(args):
        ran.append(args)
        return type("Done", (), {"returncode": 0})()

    assert matrix.find_uv(tmp_path, step) == [str(tmp_path / "_uv" / "bin" / "uv")]
    assert ran[0][1:] == ["-m", "venv", str(tmp_path / "_uv")]
    assert ran[1][-2:] == ["-q", "uv"]


def test_the_floors_set_pins_every_declared_floor_and_nothing_else():
    sets = matrix.sets(matrix._project())
    assert sets["floors"]["pins"] == matrix.floor_pins(matrix._project())
    assert "sympy==1.13.1" in sets["floors"]["pins"]  # torch 2.6 requires exactly it


def test_the_recorded_floors_run_tested_the_declared_floors():
    """benchmarks/matrix.json holds the last matrix run: its floors set installed each declared floor."""
    rows = {r["set"]: r for r in json.loads((ROOT / "benchmarks" / "matrix.json").read_text())}
    assert set(rows) == {"floors", "colab", "newest"}
    floors = rows["floors"]
    assert floors["status"] == "green", floors["status"]
    installed = {
        lock._canon(name): version
        for name, version in (line.split("==") for line in floors["freeze"])
    }
    for pin in matrix.floor_pins(matrix._project()):
        name, floor = pin.split("==")

        def parts(v):
            return [int(x) for x in re.findall(r"\d+", v.split("+")[0])]

        have = parts(installed[lock._canon(name)])
        want = parts(floor)
        assert have[: len(want)] == want and not any(have[len(want) :]), (
            f"{name}: the floors run had {installed[lock._canon(name)]}, pyproject's floor is {floor}"
        )


def test_a_refresh_reports_the_pins_that_changed():
    assert lock.changed_pins(
        {"torch": "2.13.0", "numpy": "2.4.6", "gone": "1"},
        {"torch": "2.14.1", "numpy": "2.4.6", "new": "2"},
    ) == ["gone: 1 -> -", "new: - -> 2", "torch: 2.13.0 -> 2.14.1"]


def test_a_refresh_runs_the_readme_suite_or_the_matrix_subset():
    assert lock.refresh_tests([], subset=False) == lock.DEFAULT_PYTEST
    assert lock.refresh_tests(["-x"], subset=False) == ["-x"]
    fast = lock.refresh_tests(["-x"], subset=True)
    assert fast[: len(matrix.SUBSET)] == list(matrix.SUBSET) and fast[-1] == "-x"


def test_no_configured_pip_constraint_caps_a_set(monkeypatch):
    """An empty PIP_CONSTRAINT leaves pip.conf's `constraint =` (a machine's torch cap) in force."""
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    env = matrix.pip_env(["/w1", "/w2"])
    assert env["PIP_CONSTRAINT"] == matrix.os.devnull
    assert env["PIP_FIND_LINKS"] == "/w1 /w2" and env["PYTHONPATH"] == ""
    assert "PIP_FIND_LINKS" not in matrix.pip_env([]) or matrix.os.environ.get("PIP_FIND_LINKS")


def test_the_lock_pins_every_requirement_of_the_dev_install():
    """Each requirement the README's test install names (klnotes[dev], expanded) has its pin in the lock
    (an unpinned one, e.g. the formatter, would take whatever release is newest that day)."""
    from packaging.requirements import Requirement

    pins = lock.read_lock()
    for text in matrix.to_install(matrix._project(), full=True):
        name = lock._canon(Requirement(text).name)
        assert name in pins, f"{name} ({text}) is not pinned in constraints.txt"


def test_a_recorded_set_replaces_only_its_own_row():
    old = [{"set": "floors", "status": "red"}, {"set": "newest", "status": "green"}]
    merged = matrix.merge_rows(
        old, [{"set": "floors", "status": "green"}], ["floors", "colab", "newest"]
    )
    assert merged == [{"set": "floors", "status": "green"}, {"set": "newest", "status": "green"}]


def test_the_record_shows_the_table_the_pins_and_the_freeze():
    row = {
        "set": "floors",
        "python": "3.10",
        "pins": ["torch==2.6"],
        "versions": {"python": "3.10.13", "torch": "2.6.0"},
        "passed": 5,
        "failed": 1,
        "skipped": 0,
        "status": "red (pytest exit 1)",
        "failed_tests": ["tests.test_x::test_y"],
        "freeze": ["torch==2.6.0", "numpy==1.24.1"],
        "install_s": 300,
        "date": "2026-12-07",
    }
    text = matrix.markdown([row])
    assert "| floors | 3.10.13 | 2.6.0 |" in text and "| 5 | 1 | 0 | red (pytest exit 1) |" in text
    assert "- pins: torch==2.6" in text and "install 300 s;" in text
    assert "install 300 s (into a venv of an earlier run);" in matrix.markdown(
        [{**row, "venv_reused": True}]
    )
    assert "- failed: tests.test_x::test_y" in text
    assert "```\ntorch==2.6.0\nnumpy==1.24.1\n```" in text
