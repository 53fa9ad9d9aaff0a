"""The wheel ships every subpackage of klnotes (a pip-installed reader, e.g. on Colab, imports them all)."""
from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def test_every_klnotes_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "klnotes").rglob("__init__.py")}
    missing = found - listed
    assert not missing, f"subpackages not shipped in the wheel (add them to [tool.setuptools] packages): {sorted(missing)}"
