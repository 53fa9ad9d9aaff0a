"""Checkpoints of training runs: what :func:`klnotes.gpt2.trainer.train` writes to a ``run_dir`` and resumes from.

A run folder holds ``checkpoint.pt`` (the one unit of progress: weights, optimizer and generator states,
the metric rows so far, the config, a SHA-256 checksum of all of them), ``metrics.csv`` (a copy of the
rows for readers, rewritten from the checkpoint on resume), ``config.json`` and a ``.lock`` file.

Loading never runs code (``torch.load(weights_only=True)``) and trusts nothing: the entries, the config,
the step count, the device, the metric rows, the checksum (a bit flip anywhere in the saved tensors is
caught), finite weights; and restoring the states into the model, optimizer and generator turns torch's
errors into one that names ``checkpoint.pt`` and says what to do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from klnotes.gpt2 import _runio

__all__ = [
    "CHECKPOINT",
    "METRICS_FILE",
    "CONFIG_FILE",
    "LOCK_FILE",
    "RESUMABLE",
    "save",
    "load",
    "restore",
    "digest",
    "load_metrics",
    "write_metrics",
    "config_dict",
    "check_resumable",
    "weights_finite",
]

#: File names in a run folder: the checkpoint, the metrics table, the config, the lock.
CHECKPOINT, METRICS_FILE, CONFIG_FILE, LOCK_FILE = (
    "checkpoint.pt",
    "metrics.csv",
    "config.json",
    ".lock",
)
#: Config fields that may change when a run is resumed (they do not change what the first steps compute).
RESUMABLE = ("steps", "checkpoint_every")
#: 2: metric rows, thread count and device inside the checkpoint; 3: a checksum of every entry.
FORMAT = 3


def config_dict(config) -> dict:
    """The config (a dataclass such as :class:`klnotes.gpt2.trainconfig.TrainConfig`) as a plain dict.

    (:doc:`Chapter 8 </book/08_gpt2_training>`.)
    """
    return dataclasses.asdict(config)


def check_resumable(saved: dict, config, run_dir: Path) -> None:
    """Raise ``ValueError`` naming ``run_dir`` and the differing fields if ``saved`` (a config dict) and
    ``config`` differ in a field other than :data:`RESUMABLE`.

    (:doc:`Chapter 8 </book/08_gpt2_training>`.)
    """
    current = config_dict(config)
    if not isinstance(saved, dict):
        raise ValueError(
            f"checkpoint in {str(run_dir)!r} has a config of type {type(saved).__name__}, "
            "expected a dict; use a new run_dir"
        )
    diff = sorted(
        k
        for k in set(saved) | set(current)
        if k not in RESUMABLE and saved.get(k) != current.get(k)
    )
    if diff:
        details = ", ".join(f"{k}: saved {saved.get(k)!r} vs now {current.get(k)!r}" for k in diff)
        raise ValueError(
            f"run_dir {str(run_dir)!r} holds a run with another config ({details}); "
            f"only {', '.join(RESUMABLE)} may change on resume. Use a new run_dir."
        )


def weights_finite(model: torch.nn.Module) -> bool:
    """Whether every parameter of ``model`` is finite (one host sync).

    (:doc:`Chapter 8 </book/08_gpt2_training>`.)
    """
    params = [p.detach() for p in model.parameters()]
    return bool(torch.stack([torch.isfinite(p).all() for p in params]).all()) if params else True


def _update(h, value) -> None:
    """Feed ``value`` (nested dicts, lists, tuples, tensors, scalars, strings) into the hash ``h`` in a
    canonical order: dict keys sorted by their text, each tensor as its dtype, shape and raw bytes."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(value.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, dict):
        h.update(b"D%d" % len(value))
        for key in sorted(value, key=repr):
            h.update(repr(key).encode())
            _update(h, value[key])
    elif isinstance(value, (list, tuple)):
        h.update(b"L%d" % len(value))
        for item in value:
            _update(h, item)
    else:
        h.update(f"S{type(value).__name__}:{value!r}".encode())


def digest(state: dict) -> str:
    """SHA-256 (hex) of every entry of a checkpoint's ``state`` but ``checksum`` itself: the weights,
    optimizer and generator states, metric rows, config, step, and the rest.

    (:doc:`Chapter 8 </book/08_gpt2_training>`'s resumable runs.)
    """
    h = hashlib.sha256()
    _update(h, {k: v for k, v in state.items() if k != "checksum"})
    return h.hexdigest()


def save(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer,
    generator: torch.Generator,
    config,
    rows: list[dict],
    columns: Sequence[str],
    device_type: str,
) -> Path:
    """Write the run's one unit of progress atomically: ``checkpoint.pt`` holds the weights, optimizer and
    generator states *and* the metric rows of steps ``0 ... step-1`` (``columns`` in order), so that one
    rename commits them together, with their checksum (:func:`digest`); ``metrics.csv`` is then
    rewritten from those rows. Returns the checkpoint's path.

    (:doc:`Chapter 8 </book/08_gpt2_training>`'s resumable runs.)
    """
    state = {
        "format": FORMAT,
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "config": config_dict(config),
        "columns": list(columns),
        "metrics": rows_tensor(rows, columns),
        "threads": torch.get_num_threads(),
        "device": device_type,
    }
    state["checksum"] = digest(state)
    path = _runio.atomic_write(Path(run_dir) / CHECKPOINT, lambda f: torch.save(state, f))
    write_metrics(run_dir, rows, columns)
    return path


def rows_tensor(rows: list[dict], columns: Sequence[str]) -> torch.Tensor:
    """``[steps, len(columns)]`` float64 (exact for float32/float64 metrics and step numbers)."""
    return torch.tensor(
        [[float(r[k]) for k in columns] for r in rows], dtype=torch.float64
    ).reshape(-1, len(columns))


def rows_from_tensor(table: torch.Tensor, columns: Sequence[str]) -> list[dict]:
    """Rows of :func:`rows_tensor`'s table (``step`` stays a float: check the rows before using it)."""
    return [dict(zip(columns, row)) for row in table.tolist()]


def write_metrics(run_dir: Path, rows: list[dict], columns: Sequence[str]) -> None:
    """``metrics.csv`` of ``run_dir`` from ``rows``, atomically, floats written exactly.

    (:doc:`Chapter 8 </book/08_gpt2_training>`.)
    """
    frame = pd.DataFrame(rows, columns=list(columns))
    _runio.atomic_write(
        Path(run_dir) / METRICS_FILE,
        lambda f: frame.to_csv(f, index=False, float_format="%.17g"),
        binary=False,
    )


def _fix(path: Path) -> str:
    return (
        f"delete {str(path)!r} to restart the run from step 0, or restore it from a backup "
        "(klnotes writes checkpoints atomically: a crash cannot damage them)"
    )


def load(
    run_dir: Path, config, device: torch.device, columns: Sequence[str]
) -> tuple[dict, list[dict]] | None:
    """The checkpoint of ``run_dir`` and its metric rows, checked; ``None`` if there is none.

    (:doc:`Chapter 8 </book/08_gpt2_training>`'s resumable runs.)

    Checks: readable (``weights_only``: loading runs no code), the entries present, saved with the same
    config (but :data:`RESUMABLE` fields), ``1 <= step <= config.steps``, the same device type (error) and
    torch thread count (warning: results may differ in the last bits), rows for steps ``0 ... step-1`` all
    present and finite, the checksum (format 3 on), finite weights. Old checkpoints without rows take them
    from a valid ``metrics.csv``.

    Raises:
        ValueError: a damaged or mismatched checkpoint (named, with what to do).
    """
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return None
    fix = _fix(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors all mean: unreadable
        raise ValueError(
            f"checkpoint {str(path)!r} is damaged or not a klnotes checkpoint "
            f"({type(err).__name__}: {str(err)[:200]}); {fix}"
        ) from None
    keys = ("step", "model", "optimizer", "generator", "config")
    if not isinstance(state, dict) or any(k not in state for k in keys):
        missing = [k for k in keys if k not in state] if isinstance(state, dict) else list(keys)
        raise ValueError(f"checkpoint {str(path)!r} lacks the entries {missing}; {fix}")
    check_resumable(state["config"], config, run_dir)
    start = state["step"]
    if isinstance(start, bool) or not isinstance(start, int) or start < 1:
        raise ValueError(
            f"checkpoint {str(path)!r} has step {start!r}, expected an int >= 1; {fix}"
        )
    if start > config.steps:
        raise ValueError(
            f"run_dir {str(run_dir)!r} holds {start} steps, more than config.steps={config.steps}; "
            "pass steps >= that, or use a new run_dir"
        )
    saved_device = state.get("device")
    if saved_device is not None and saved_device != device.type:
        raise ValueError(
            f"checkpoint {str(path)!r} was saved on device {saved_device!r}, the policy is on "
            f"{device.type!r}: the resumed run would not reproduce the uninterrupted one. Move the "
            f"policy to {saved_device!r}, or use a new run_dir"
        )
    threads = state.get("threads")
    if threads is not None and threads != torch.get_num_threads():
        warnings.warn(
            f"resuming {str(path)!r} with {torch.get_num_threads()} torch threads, saved with {threads}: "
            f"the results may differ in the last bits from the uninterrupted run; call "
            f"torch.set_num_threads({threads}) (or OMP_NUM_THREADS={threads}) before training for an "
            "exact resume",
            RuntimeWarning,
            stacklevel=4,
        )
    if "metrics" in state:
        rows = _checked_rows(state, start, columns, path, fix)
    else:  # format 1: rows only in metrics.csv
        metrics = Path(run_dir) / METRICS_FILE
        fix_old = (
            f"this checkpoint (older format) keeps its metrics in {str(metrics)!r}: restore that file, or "
            f"delete {str(path)!r} to restart from step 0"
        )
        frame = load_metrics(run_dir, columns, steps=None) if metrics.is_file() else None
        if frame is None or len(frame) < start:
            raise ValueError(
                f"{str(metrics)!r} holds {0 if frame is None else len(frame)} rows, the checkpoint "
                f"{start} steps; {fix_old}"
            )
        rows = frame.iloc[:start].to_dict("records")
    fmt = state.get("format", 1)
    if isinstance(fmt, int) and fmt >= 3:
        if state.get("checksum") != digest(state):
            raise ValueError(
                f"checkpoint {str(path)!r} does not match its checksum: its contents changed after "
                f"it was written (a damaged disk or copy, or an edit); {fix}"
            )
    model = state["model"]
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise ValueError(
            f"checkpoint {str(path)!r}: its 'model' entry is not a dict of tensors; {fix}"
        )
    bad = [
        k for k, v in model.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise ValueError(
            f"checkpoint {str(path)!r} holds non-finite weights ({len(bad)} tensor(s), first "
            f"{bad[0]!r}): a diverged run; {fix}"
        )
    return state, rows


def _checked_rows(
    state: dict, start: int, columns: Sequence[str], path: Path, fix: str
) -> list[dict]:
    table = state["metrics"]
    if (
        not isinstance(table, torch.Tensor)
        or table.dim() != 2
        or state.get("columns") != list(columns)
        or tuple(table.shape) != (start, len(columns))
    ):
        raise ValueError(
            f"checkpoint {str(path)!r}: its metric rows do not match its step {start} "
            f"(table {getattr(table, 'shape', None)}); {fix}"
        )
    rows = rows_from_tensor(table, columns)
    _runio.validate_table(
        pd.DataFrame(rows, columns=list(columns)), columns=columns, steps=start, path=path, fix=fix
    )
    return [{**row, "step": int(row["step"])} for row in rows]


def restore(
    path: Path, state: dict, model: torch.nn.Module, optimizer, generator: torch.Generator
) -> None:
    """Load a checked checkpoint's ``state`` (:func:`load`) into ``model``, ``optimizer`` and ``generator``.

    (:doc:`Chapter 8 </book/08_gpt2_training>`'s resumable runs.)

    Raises:
        ValueError: an entry that does not fit (a wrong-shaped or missing tensor, an optimizer state of
            another shape, a generator state that is not one): names ``path``, the entry and what to do.
    """
    fix = _fix(Path(path))
    for entry, apply in (
        ("model", lambda v: model.load_state_dict(v)),
        ("optimizer", lambda v: _load_optimizer(optimizer, v)),
        ("generator", lambda v: generator.set_state(v)),
    ):
        try:
            apply(state[entry])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
            text = " ".join(str(err).split())[:300]
            raise ValueError(
                f"checkpoint {str(path)!r}: its {entry!r} entry does not fit this run "
                f"({type(err).__name__}: {text}); {fix}"
            ) from None


def _load_optimizer(optimizer, saved) -> None:
    """``optimizer.load_state_dict(saved)`` after a check torch leaves out: a checkpoint is written after at
    least one step, so its optimizer state is not empty (an empty one would silently reset Adam's moments)."""
    if not isinstance(saved, dict) or not {"state", "param_groups"} <= set(saved):
        raise ValueError(
            f"expected a dict with 'state' and 'param_groups', got {type(saved).__name__}"
            + (f" with keys {sorted(saved)}" if isinstance(saved, dict) else "")
        )
    if not saved["state"]:
        raise ValueError(
            "the optimizer state is empty, but a checkpoint is written after at least one step"
        )
    optimizer.load_state_dict(saved)


def load_metrics(run_dir: str | os.PathLike, columns: Sequence[str], *, steps: int | None = None):
    """The metrics table saved in ``run_dir`` (a ``pandas.DataFrame`` with ``columns``), validated: every
    column, steps ``0, 1, ...`` in order (``steps`` of them if given), finite values.

    (:doc:`Chapter 8 </book/08_gpt2_training>`.)

    Raises:
        FileNotFoundError: no ``metrics.csv`` in ``run_dir``.
        ValueError: a damaged file (cut short, missing rows, non-finite values); the message names it.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no {METRICS_FILE} in {str(run_dir)!r}: not a run_dir of klnotes.gpt2.trainer.train"
        )
    fix = (
        f"if {str(Path(run_dir) / CHECKPOINT)!r} exists, train() with the same run_dir rewrites this file "
        "from it; otherwise delete the run_dir and train again"
    )
    frame = _runio.read_csv(path, fix=fix)
    _runio.validate_table(frame, columns=columns, steps=steps, path=path, fix=fix)
    frame = frame.astype(
        {c: float for c in columns if c != "step"}
    )  # "0" in a column of zeros reads as an int
    frame["step"] = frame["step"].astype(int)
    return frame
