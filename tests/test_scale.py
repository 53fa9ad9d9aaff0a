"""klnotes.scale() and klnotes.seed_everything(): presets chosen by environment, clear errors."""

import numpy as np
import pytest
import torch

import klnotes


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("KLNOTES_SCALE", raising=False)
    monkeypatch.delenv("CI", raising=False)
    return monkeypatch


@pytest.mark.parametrize("name", ["smoke", "cpu", "gpu"])
def test_env_var_overrides_everything(clean_env, name):
    clean_env.setenv("CI", "true")
    clean_env.setenv("KLNOTES_SCALE", name)
    assert klnotes.scale() == name


def test_env_var_is_case_and_space_insensitive(clean_env):
    clean_env.setenv("KLNOTES_SCALE", "  CPU ")
    assert klnotes.scale() == "cpu"


def test_ci_means_smoke(clean_env):
    clean_env.setenv("CI", "true")
    assert klnotes.scale() == "smoke"


def test_without_ci_the_device_decides(clean_env, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert klnotes.scale() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert klnotes.scale() == "gpu"


def test_empty_env_var_is_ignored(clean_env, monkeypatch):
    clean_env.setenv("KLNOTES_SCALE", "")
    clean_env.setenv("CI", "1")
    assert klnotes.scale() == "smoke"


def test_bad_scale_names_the_value_and_the_allowed_ones(clean_env):
    clean_env.setenv("KLNOTES_SCALE", "huge")
    with pytest.raises(ValueError, match=r"'huge'.*smoke, cpu, gpu"):
        klnotes.scale()


def test_seed_everything_makes_torch_and_numpy_reproducible():
    klnotes.seed_everything(123)
    a = (torch.rand(3), np.random.rand(3))
    klnotes.seed_everything(123)
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, "0", True, None])
def test_seed_everything_rejects_bad_seeds(bad):
    with pytest.raises((TypeError, ValueError), match="seed"):
        klnotes.seed_everything(bad)
