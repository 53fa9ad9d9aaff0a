"""ruff (configured in pyproject.toml) finds nothing to fix: lint and format, notebooks included."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _ruff(*args: str) -> subprocess.CompletedProcess:
    try:
        import ruff  # noqa: F401  (the dev extra installs it)
    except ImportError:
        if shutil.which("ruff") is None:
            pytest.skip("ruff is not installed: pip install -e '.[dev]'")
        return subprocess.run(["ruff", *args], cwd=ROOT, capture_output=True, text=True)
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True
    )


def test_ruff_check_passes():
    out = _ruff("check", "--no-cache", ".")
    assert out.returncode == 0, (
        f"ruff check found problems (fix: ruff check --fix .):\n{out.stdout[-4000:]}"
    )


def test_ruff_format_check_passes():
    out = _ruff("format", "--check", "--no-cache", ".")
    assert out.returncode == 0, (
        f"files ruff would reformat (fix: ruff format .):\n{out.stdout[-4000:]}"
    )
