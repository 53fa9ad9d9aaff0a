"""Tests of klnotes.gpt2.devices: CPU behaviour of the GPU settings (no GPU in CI)."""

from __future__ import annotations

import contextlib

import torch

from klnotes.gpt2 import devices


def test_cpu_needs_no_mixed_precision_and_no_tf32(monkeypatch):
    monkeypatch.delenv(devices.DETERMINISTIC_ENV, raising=False)
    assert devices.amp_dtype("cpu") is None and devices.amp_dtype(None) is None
    assert isinstance(devices.autocast("cpu"), contextlib.nullcontext)
    assert isinstance(devices.autocast("cpu", training=True), contextlib.nullcontext)
    assert devices.configure("cpu") == {"tf32": False, "deterministic": False}


def test_deterministic_mode_from_the_environment(monkeypatch):
    monkeypatch.setenv(devices.DETERMINISTIC_ENV, "1")
    try:
        assert devices.configure("cpu")["deterministic"] is True
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
