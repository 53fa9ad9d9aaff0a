"""Named experiments of chapters 7 and 8, with scale presets and results saved to disk.

A :class:`Preset` says what ``smoke`` (CI: seconds), ``cpu`` (a laptop: minutes) and ``gpu`` (one
Colab GPU: GPT-2 124M) mean: the policy, the trainer's settings, the arms, the betas and the seeds
of every experiment. :func:`preset` returns one by name, ``preset()`` the one of :func:`klnotes.scale`.

Results are tidy ``pandas`` frames (one row per run and training step) kept by a :class:`ResultsStore`
as one CSV per run under ``results/<preset>/`` (smoke runs go to a cache folder instead, so CI leaves
the repository clean). A run whose CSV exists is loaded instead of trained: every experiment is
resumable, and a chapter can plot stored results without training anything. Within a run, the
trainer's own checkpoints (``runs/<preset>/<run>``) let an interrupted run continue.

Experiments:

- :func:`run_arms`: every KL arm of :data:`klnotes.gpt2.trainer.ARMS` at each beta and seed (chapter 8).
- :func:`run_off_policy_ablation`: several updates per batch (1, 2, 4), "as loss" arms with and
  without the importance-sampling correction.
- :func:`final_metrics` / :func:`frontier`: reward against exact KL at the end of training.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import hashlib
import json
import math
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from klnotes._scale import SCALES, scale
from klnotes.gpt2 import _runio, devices, policies, tasks, trainer
from klnotes.gpt2 import gradcompare as gc
from klnotes.gpt2.policies import default_cache_dir

#: Preset names: the three scales, and ``full``, the complete experiment set of the ``gpu`` scale's model
#: (several seeds, a second beta, the off-policy ablation, 2,048-sample gradient sweeps) for a datacenter
#: GPU through ``scripts/run_experiments.py --preset full``; the ``gpu`` chapters read its stored results.
PRESET_NAMES: tuple[str, ...] = SCALES + ("full",)
#: Environment variable with a JSON object of preset fields to override, e.g. ``{"steps": 2}`` (dry runs,
#: tests of the ``gpu`` code path on a CPU); applied by :func:`preset`.
OVERRIDES_ENV = "KLNOTES_PRESET_OVERRIDES"

__all__ = [
    "shipped_results_dir",
    "Preset",
    "PRESETS",
    "PRESET_NAMES",
    "OVERRIDES_ENV",
    "preset",
    "stored",
    "step_flops",
    "estimate_seconds",
    "print_estimate",
    "sweep_flops",
    "GPU_THROUGHPUT",
    "RunSpec",
    "ResultsStore",
    "default_results_dir",
    "check_arms",
    "policy_id",
    "config_id",
    "sweep_config_id",
    "run",
    "run_arms",
    "run_off_policy_ablation",
    "moved_policy",
    "reference_policy",
    "gradient_sweeps",
    "final_metrics",
    "frontier",
    "summarize",
    "METRIC_LABELS",
    "metric_label",
    "mean_sd_table",
    "describe",
    "OFF_POLICY_PAIRS",
]

_MAX_SEED = 2**63 - 1  # the largest seed torch.Generator.manual_seed takes


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _is_seed(value) -> bool:
    return _is_int(value) and 0 <= value <= _MAX_SEED


#: Off-policy ablation: each "as loss" arm and its importance-sampling corrected version.
OFF_POLICY_PAIRS: tuple[tuple[str, str], ...] = (
    ("k2-loss", "k2-loss-is"),
    ("k3-loss", "k3-loss-is"),
)


def _allowed_arms() -> tuple[str, ...]:

    return tuple(trainer.ARMS)


def check_arms(arms: Iterable[str]) -> tuple[str, ...]:
    """Validate arm names against :data:`klnotes.gpt2.trainer.ARMS`; return them as a tuple.

    Raises:
        ValueError: an unknown arm (the message lists the allowed ones), or no arm at all.
    """
    if isinstance(arms, str):
        arms = (arms,)
    arms = tuple(arms)
    allowed = _allowed_arms()
    for arm in arms:
        if arm not in allowed:
            raise ValueError(f"unknown arm {arm!r}; allowed: {', '.join(allowed)}")
    if not arms:
        raise ValueError(f"no arm given; allowed: {', '.join(allowed)}")
    return arms


@dataclass(frozen=True)
class Preset:
    """What one scale means for chapters 7 and 8.

    Training (chapter 8; passed to :class:`klnotes.gpt2.trainer.TrainConfig`):

    Attributes:
        name: ``"smoke"``, ``"cpu"`` or ``"gpu"``; also the policy (:func:`klnotes.gpt2.policies.policy_for_scale`)
            and the task (:func:`klnotes.gpt2.tasks.task_for_scale`).
        steps: policy-gradient steps per run.
        group_size: responses per prompt (GRPO group).
        prompts_per_step: prompts per rollout batch.
        max_new_tokens: response length limit.
        lr: Adam learning rate.
        temperature: sampling temperature of rollouts.
        clip_eps: PPO clip range.
        arms: the KL arms of the main comparison.
        betas: KL coefficients; the first is the main one (the paper's 0.5).
        seeds: seeds of the main comparison (bands over seeds).
        ablation_updates: updates per rollout batch in the off-policy ablation.
        ablation_seeds: its seeds.
        ablation_steps: its steps per run (``None``: ``steps``).

    Gradients (chapter 7; :mod:`klnotes.gpt2.gradcompare`):

    Attributes:
        grad_length: response length ``L`` of the comparison.
        grad_alphas: distances along the path from the reference to the moved policy.
        grad_samples: ``None`` = exact enumeration (tiny vocabularies), else Monte Carlo samples per point.
        grad_move_steps: trainer steps without KL that move the policy away from the reference.
        grad_old_lag: how far behind (in ``alpha``) the behaviour policy ``pi_old`` is, off-policy.
    """

    name: str
    steps: int
    group_size: int
    prompts_per_step: int
    max_new_tokens: int
    lr: float
    temperature: float = 1.0
    clip_eps: float = 0.2
    arms: tuple[str, ...] = ("none", "k1-loss", "k2-loss", "k3-loss", "k1-reward")
    betas: tuple[float, ...] = (0.5,)
    seeds: tuple[int, ...] = (0,)
    ablation_updates: tuple[int, ...] = (1, 2, 4)
    ablation_seeds: tuple[int, ...] = (0,)
    ablation_steps: int | None = None
    grad_length: int = 3
    grad_alphas: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
    grad_samples: int | None = None
    grad_move_steps: int = 10
    grad_old_lag: float = 0.25

    def __post_init__(self):
        if self.name not in PRESET_NAMES:
            raise ValueError(
                f"unknown preset name {self.name!r}; allowed: {', '.join(PRESET_NAMES)}"
            )
        for name in (
            "steps",
            "group_size",
            "prompts_per_step",
            "max_new_tokens",
            "grad_length",
            "grad_move_steps",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Preset.{name} must be a positive int, got {value!r}")
        if not self.betas or not all(_is_number(b) and 0 <= b < math.inf for b in self.betas):
            raise ValueError(
                f"Preset.betas must be non-empty finite numbers >= 0, got {self.betas!r}"
            )
        for name in ("lr", "temperature", "clip_eps"):
            value = getattr(self, name)
            if not (_is_number(value) and 0 < value < math.inf):
                raise ValueError(f"Preset.{name} must be a finite number > 0, got {value!r}")
        for name in ("seeds", "ablation_seeds"):
            value = getattr(self, name)
            if not value or not all(_is_seed(v) for v in value):
                raise ValueError(
                    f"Preset.{name} must be a non-empty tuple of ints in [0, {_MAX_SEED}], got {value!r}"
                )
        if not self.ablation_updates or not all(
            _is_int(u) and u >= 1 for u in self.ablation_updates
        ):
            raise ValueError(
                f"Preset.ablation_updates must be ints >= 1, got {self.ablation_updates!r}"
            )
        if self.ablation_steps is not None and not (
            _is_int(self.ablation_steps) and self.ablation_steps >= 1
        ):
            raise ValueError(
                f"Preset.ablation_steps must be a positive int or None, got {self.ablation_steps!r}"
            )

    @property
    def scale(self) -> str:
        """The scale whose policy and task this preset uses (``full`` uses the ``gpu`` scale's)."""
        return "gpu" if self.name == "full" else self.name

    @property
    def beta(self) -> float:
        """The main KL coefficient (first of :attr:`betas`)."""
        return self.betas[0]

    def train_config(
        self,
        arm: str,
        *,
        beta: float,
        seed: int,
        updates_per_batch: int = 1,
        steps: int | None = None,
    ):
        """The :class:`klnotes.gpt2.trainer.TrainConfig` of one run of this preset.

        Raises:
            ValueError: unknown arm (lists the allowed ones).
        """

        (arm,) = check_arms((arm,))
        return trainer.TrainConfig(
            kl=arm,
            beta=float(beta),
            group_size=self.group_size,
            prompts_per_step=self.prompts_per_step,
            max_new_tokens=self.max_new_tokens,
            updates_per_batch=int(updates_per_batch),
            clip_eps=self.clip_eps,
            lr=self.lr,
            steps=int(self.steps if steps is None else steps),
            temperature=self.temperature,
            seed=int(seed),
        )


#: The presets. ``smoke``: CI, each chapter in well under two minutes. ``cpu``: a laptop, minutes,
#: enough steps for the arms' curves to separate, 3 seeds. ``gpu``: GPT-2 124M on one Colab GPU (a T4),
#: sized so that chapters 7 and 8 each finish in about ten minutes from a cold start (one seed, the
#: paper's beta = 0.5, 512-sample gradient sweeps). Its AdamW learning rate, 5e-5, is the smallest of
#: 1e-5, 5e-5, 2e-4 at which a CPU proxy (``benchmarks/proxy_gpu_preset.py``: a GPT-2-shaped model of 0.8M parameters
#: pretrained on the synthetic language, these settings) moves far enough in 60 steps for the KL arms to
#: separate from ``none`` (at 1e-5 every arm ends within 0.012 nats of the reference); GPT-2, six times
#: wider, moves at least as far per Adam step. One seed: within a T4's ten minutes a second seed would
#: halve the steps, and the verdicts' within-run test needs 2.78 standard errors where two seeds need 12.7.
#: ``full``: the complete set on a datacenter GPU
#: (the paper's beta and a smaller one, 3 seeds, the off-policy ablation, 2,048-sample sweeps), run by
#: ``scripts/run_experiments.py --preset full``; the gpu chapters show its stored results when present.
#: Sizing (FLOPs per step, measured seconds): :func:`step_flops`, :func:`estimate_seconds`, the README.
PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        name="smoke",
        steps=3,
        group_size=4,
        prompts_per_step=2,
        max_new_tokens=4,
        lr=1e-2,
        seeds=(0,),
        ablation_updates=(1, 2),
        ablation_seeds=(0,),
        ablation_steps=2,
        grad_length=2,
        grad_alphas=(0.5, 1.0),
        grad_move_steps=3,
    ),
    "cpu": Preset(
        name="cpu",
        steps=60,
        group_size=8,
        prompts_per_step=8,
        max_new_tokens=8,
        lr=3e-3,
        betas=(0.5,),
        seeds=(0, 1, 2),
        ablation_updates=(1, 2, 4),
        ablation_seeds=(0, 1),
        ablation_steps=40,
        grad_length=3,
        grad_alphas=(0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5),
        grad_move_steps=10,
    ),
    "gpu": Preset(
        name="gpu",
        steps=60,
        group_size=8,
        prompts_per_step=8,
        max_new_tokens=24,
        lr=5e-5,
        betas=(0.5,),
        seeds=(0,),
        ablation_updates=(1, 2, 4),
        ablation_seeds=(0,),
        ablation_steps=60,
        grad_length=8,
        grad_alphas=(0.5, 1.0, 2.0),
        grad_samples=512,
        grad_move_steps=20,
    ),
    "full": Preset(
        name="full",
        steps=200,
        group_size=8,
        prompts_per_step=16,
        max_new_tokens=24,
        lr=1e-5,
        betas=(0.5, 0.05),
        seeds=(0, 1, 2),
        ablation_updates=(1, 2, 4),
        ablation_seeds=(0, 1),
        ablation_steps=150,
        grad_length=8,
        grad_alphas=(0.25, 0.5, 1.0, 2.0),
        grad_samples=2048,
        grad_move_steps=50,
    ),
}


def _overrides() -> dict:

    text = os.environ.get(OVERRIDES_ENV, "").strip()
    if not text:
        return {}
    try:
        values = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{OVERRIDES_ENV} must be a JSON object of Preset fields, got {text!r}: {err}"
        ) from err
    fields = {f.name for f in dataclasses.fields(Preset)} - {"name"}
    if not isinstance(values, dict) or set(values) - fields:
        bad = sorted(set(values) - fields) if isinstance(values, dict) else values
        raise ValueError(
            f"{OVERRIDES_ENV}: unknown Preset fields {bad!r}; allowed: {', '.join(sorted(fields))}"
        )
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def preset(name: str | Preset | None = None) -> Preset:
    """The preset called ``name`` (``None``: the one of :func:`klnotes.scale`); a :class:`Preset` passes through.

    A JSON object in ``KLNOTES_PRESET_OVERRIDES`` replaces fields of a named preset, e.g.
    ``{"steps": 2, "seeds": [0]}``: a dry run of the ``gpu`` code path that measures seconds per step,
    or a test. Runs made with overrides are stored like any other: point ``KLNOTES_RESULTS`` elsewhere.

    Raises:
        ValueError: unknown name (the message lists the allowed ones); bad overrides.
    """
    if isinstance(name, Preset):
        return name
    if name is None:
        name = scale()
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; allowed: {', '.join(PRESETS)}")
    overrides = _overrides()
    return dataclasses.replace(PRESETS[name], **overrides) if overrides else PRESETS[name]


# --- results store -------------------------------------------------------------------------------


def _env_folder(variable: str, value: str) -> Path:
    """The folder named by the environment variable ``variable`` (its ``value``); a path that exists and is
    not a folder raises ``NotADirectoryError`` naming the variable."""
    folder = Path(value).expanduser()
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(
            errno.ENOTDIR,
            f"{variable}={value!r} is not a folder (it is a file); point "
            f"{variable} at a folder, or unset it",
        )
    return folder


def _writable_folder(folder: Path, variable: str) -> Path:
    """Create ``folder`` (and its parents) if needed and check that files can be written there; an error
    names the folder and, when it is set, the environment variable that chose it."""
    env = os.environ.get(variable, "").strip()
    hint = (
        f" (set by {variable}={env!r}: point it at a writable folder)"
        if env
        else f" (set {variable} to a writable folder)"
    )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise type(err)(
            err.errno, f"cannot create the folder {str(folder)!r} ({err.strerror or err}){hint}"
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"the folder {str(folder)!r} is not writable{hint}")
    return folder


# The installed package's folder (klnotes/), which holds the shipped results (klnotes/results/).
_PACKAGE = Path(__file__).resolve().parents[1]


def _repo_root() -> Path | None:
    root = Path(__file__).resolve().parents[2]  # klnotes/gpt2/experiments.py -> the checkout
    return root if (root / "_toc.yml").is_file() else None


def shipped_results_dir(preset_name: str) -> Path | None:
    """The results that come with the book for ``preset_name``, whatever ``KLNOTES_RESULTS`` says:
    ``results/<preset>`` in a checkout, ``klnotes/results/<preset>`` in an installed package; ``None``
    when there are none. Chapters read them to check what the book's text says of a stored run."""
    root = _repo_root()
    folder = (root / "results" if root is not None else _PACKAGE / "results") / preset_name
    return folder if folder.is_dir() else None


def default_results_dir(preset_name: str) -> Path:
    """Where the results of a preset live.

    ``$KLNOTES_RESULTS/<preset>`` if that variable is set; otherwise, in a checkout of the repository,
    ``results/<preset>`` (committed) for ``cpu``, ``gpu`` and ``full`` and ``.klnotes_cache/results/smoke``
    (ignored by git) for ``smoke``; outside a checkout (a pip-installed package), the results shipped
    with the package (``klnotes/results/<preset>``, read-only: runs trained there are written to
    ``<cache>/results/<preset>``, which is read first) when it has them, else ``<cache>/results/<preset>``
    (:func:`klnotes.gpt2.policies.default_cache_dir`); never the working directory.
    """
    env = os.environ.get("KLNOTES_RESULTS", "").strip()
    if env:
        return _env_folder("KLNOTES_RESULTS", env) / preset_name
    root = _repo_root()
    if root is None:
        shipped = _PACKAGE / "results" / preset_name
        return shipped if shipped.is_dir() else default_cache_dir() / "results" / preset_name
    if preset_name == "smoke":
        return root / ".klnotes_cache" / "results" / preset_name
    return root / "results" / preset_name


@dataclass(frozen=True)
class RunSpec:
    """One training run: an arm at a beta, a seed and a number of updates per rollout batch."""

    experiment: str
    arm: str
    beta: float
    seed: int
    updates_per_batch: int = 1

    def __post_init__(self):
        if not isinstance(self.experiment, str) or not re.fullmatch(
            r"[A-Za-z0-9_.+\-]+", self.experiment
        ):
            raise ValueError(
                f"RunSpec.experiment must be a name of letters, digits and _ . + -, got {self.experiment!r}"
            )
        check_arms((self.arm,))
        if not (_is_number(self.beta) and self.beta >= 0):
            raise ValueError(f"RunSpec.beta must be a finite number >= 0, got {self.beta!r}")
        if not _is_seed(self.seed):
            raise ValueError(f"RunSpec.seed must be an int in [0, {_MAX_SEED}], got {self.seed!r}")
        if not (_is_int(self.updates_per_batch) and self.updates_per_batch >= 1):
            raise ValueError(
                f"RunSpec.updates_per_batch must be an int >= 1, got {self.updates_per_batch!r}"
            )

    @property
    def key(self) -> str:
        """File-name key, e.g. ``arms/k2-loss_beta0.5_upb1_seed0``."""
        return f"{self.experiment}/{self.arm}_beta{self.beta:g}_upb{self.updates_per_batch}_seed{self.seed}"

    def columns(self) -> dict:
        """The identifying columns added to the run's metrics."""
        return {
            "experiment": self.experiment,
            "arm": self.arm,
            "beta": float(self.beta),
            "seed": int(self.seed),
            "updates_per_batch": int(self.updates_per_batch),
        }


#: A results key: one or more names separated by ``/``, each of letters, digits and ``_ . + -`` not starting
#: with a dot (``.locks/`` holds the store's lock files; ``.``, ``..`` and hidden names are never results).
_KEY = re.compile(r"[A-Za-z0-9_+\-][A-Za-z0-9_.+\-]*(/[A-Za-z0-9_+\-][A-Za-z0-9_.+\-]*)*")


class ResultsStore:
    """Tidy result frames saved as CSV files under one folder, one file per key.

    ``store.save("arms/k2-loss_beta0.5_upb1_seed0", frame)`` writes
    ``<root>/arms/k2-loss_beta0.5_upb1_seed0.csv`` atomically (a uniquely named temporary file renamed
    into place); :meth:`load` reads it back with the same columns and values (floats round-trip
    exactly); :meth:`has` tells a saved key from a missing one. :meth:`lock` serialises the writers of
    one key across processes (lock files under ``<root>/.locks/``).

    ``fallback``: a read-only folder consulted for keys that ``root`` does not have (the results shipped
    inside an installed package): reads see both, writes go to ``root`` only.
    """

    def __init__(self, root: str | os.PathLike, fallback: str | os.PathLike | None = None):
        if not isinstance(root, (str, os.PathLike)) or not str(root).strip():
            raise TypeError(f"ResultsStore root must be a folder path, got {root!r}")
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise NotADirectoryError(
                f"ResultsStore root {str(self.root)!r} exists and is not a folder"
            )
        self.fallback = None if fallback is None else Path(fallback)

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.root)!r})"

    def path(self, key: str) -> Path:
        """The CSV file of ``key``.

        Raises:
            ValueError: a key that is not names of letters, digits and ``_ . + -`` separated by ``/``, each
                not starting with a dot (no empty name, no trailing ``/``, no line break).
        """
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ValueError(
                f"bad results key {key!r}: use names of letters, digits and _ . + - separated by '/', "
                "each not starting with '.' (no empty name, no leading or trailing '/')"
            )
        return self.root / f"{key}.csv"

    def _not_writable(self, err: OSError) -> OSError:
        """``err`` (a failed write under ``root``) as an error that names the folder and what to do."""
        env = os.environ.get("KLNOTES_RESULTS", "").strip()
        hint = (
            f" (set by KLNOTES_RESULTS={env!r}: point it at a writable folder)"
            if env
            else " (set KLNOTES_RESULTS to a writable folder)"
        )
        return type(err)(
            err.errno,
            f"results folder {str(self.root)!r} is not writable ({err.strerror or err}){hint}",
        )

    def _read_path(self, key: str) -> Path:
        """The file ``key`` is read from: ``root``'s if it exists, else the fallback's if that exists."""
        path = self.path(key)
        if (
            not path.is_file()
            and self.fallback is not None
            and (self.fallback / f"{key}.csv").is_file()
        ):
            return self.fallback / f"{key}.csv"
        return path

    def has(self, key: str) -> bool:
        """Whether ``key`` has been saved (in ``root`` or the fallback)."""
        return self._read_path(key).is_file()

    def save(self, key: str, frame: pd.DataFrame) -> Path:
        """Write ``frame`` (without its index) to the CSV of ``key``; return the path."""
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"frame must be a pandas DataFrame, got {type(frame).__name__}")
        path = self.path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with self.lock(key, wait=True):
                _runio.atomic_write(
                    path, lambda f: frame.to_csv(f, index=False, float_format="%.17g"), binary=False
                )
        except (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError) as err:
            raise self._not_writable(err) from None
        except OSError as err:
            if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise self._not_writable(err) from None
            raise
        return path

    def lock(self, key: str, *, wait: bool = True, timeout: float | None = None):
        """Context manager holding the lock of ``key`` (re-entrant in one process): another process that
        locks the same key waits (``wait=True``, at most ``timeout`` s) or fails with
        ``klnotes.gpt2._runio.LockedError`` naming the key and the holder's pid."""
        self.path(key)  # validates the key
        return self._lock(key, wait, timeout)

    @contextlib.contextmanager
    def _lock(self, key: str, wait: bool, timeout: float | None):
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(
                    _runio.lock(
                        self.root / ".locks" / f"{key}.lock",
                        what=f"results {key!r} of {str(self.root)!r}",
                        wait=wait,
                        timeout=timeout,
                    )
                )
            except OSError as err:
                if isinstance(
                    err, (PermissionError, NotADirectoryError, FileExistsError)
                ) or err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                    raise self._not_writable(err) from None
                raise
            yield

    def load(self, key: str) -> pd.DataFrame:
        """Read the frame of ``key``.

        Raises:
            FileNotFoundError: nothing saved under ``key`` (the message names the file).
            ValueError: a file cut short or that cannot be parsed (named).
        """
        path = self._read_path(key)
        if not path.is_file():
            raise FileNotFoundError(f"no results for {key!r}: {path} does not exist")
        return _runio.read_csv(path, fix="delete it and run the experiment again")

    def keys(self, prefix: str = "") -> list[str]:
        """Saved keys starting with ``prefix`` (in ``root`` or the fallback), sorted."""
        keys = set()
        for root in (self.root, self.fallback):
            if root is not None and root.is_dir():
                keys.update(
                    p.relative_to(root).with_suffix("").as_posix()
                    for p in root.rglob("*.csv")
                    if not p.relative_to(root).as_posix().startswith(".")
                )
        return sorted(k for k in keys if k.startswith(prefix))

    def load_all(self, prefix: str = "") -> pd.DataFrame:
        """All frames whose key starts with ``prefix``, concatenated (empty frame if none)."""
        frames = [self.load(k) for k in self.keys(prefix)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _store(p: Preset, store: ResultsStore | str | os.PathLike | None) -> ResultsStore:
    if isinstance(store, ResultsStore):
        return store
    if store is not None:
        return ResultsStore(store)
    root = default_results_dir(p.name)
    if (
        _repo_root() is None
        and not os.environ.get("KLNOTES_RESULTS", "").strip()
        and _is_shipped(root)
    ):
        # a pip-installed package: read the shipped results, write new ones to the cache, never into the package

        return ResultsStore(default_cache_dir() / "results" / p.name, fallback=root)
    return ResultsStore(root)


def _is_shipped(folder: Path) -> bool:
    """Whether ``folder`` lies inside the installed package (its shipped ``results`` data)."""
    return Path(folder).resolve().is_relative_to(_PACKAGE / "results")


# --- running experiments -------------------------------------------------------------------------


@dataclass
class _Models:
    """Policy, frozen reference and task of a preset, loaded once per process."""

    policy: object = None
    reference: object = None
    task: object = None


_LOADED: dict[str, _Models] = {}


def _load(p: Preset, device=None) -> _Models:

    key = (p.scale, policy_id(p), str(device))
    if (
        key not in _LOADED
    ):  # one copy of the initial policy: the frozen reference (runs start from copies)
        devices.configure(device)
        reference = policies.frozen(policies.policy_for_scale(p.scale, device=device))
        _LOADED[key] = _Models(
            policy=reference,
            reference=reference,
            task=tasks.task_for_scale(p.scale, reference.tokenizer),
        )
    return _LOADED[key]


def _fresh_policy(p: Preset, device=None):
    """A fresh trainable copy of the preset's initial policy (every run starts from the reference)."""

    models = _load(p, device)
    model = copy.deepcopy(models.reference.model).requires_grad_(True)
    return policies.Policy(
        model=model, tokenizer=models.reference.tokenizer, source=models.reference.source
    )


def policy_id(p: Preset | str | None = None) -> str:
    """Identifier of the preset's initial policy: ``"gpt2"``, or the tiny model's cache folder name
    (``tiny-lm-<hash of its config>``), computed without loading or building anything.

    Every stored run carries it (column ``policy``); a stored run made with another policy is stale and
    is trained again, so results never silently mix models.
    """

    p = preset(p)
    if p.scale == "gpu":
        name = policies.gpu_policy_name()
        return name if name == "gpt2" else "local-" + Path(name).expanduser().resolve().name
    return policies.tiny_cache_path(policies.TINY_PRESETS[p.name]).name


def _id_problem(frame: pd.DataFrame, column: str, want: str) -> str | None:
    """Why ``frame``'s ``column`` is not ``want`` on every row (``None``: it is). A missing column is a
    problem: a result without its identifier cannot be shown to be current."""
    if column not in frame.columns:
        return f"no {column} column (results from before {column} was recorded cannot be trusted)"
    have = sorted(set(frame[column].astype(str)))
    if have != [want]:
        return f"made with {column} {have if len(have) > 1 else have[0]!r}, the preset now gives {want!r}"
    return None


def _runs_dir(p: Preset) -> Path:
    """Trainer checkpoints: ``$KLNOTES_RUNS`` if set, else ``runs/`` in a checkout, else ``<cache>/runs``."""
    env = os.environ.get("KLNOTES_RUNS", "").strip()
    if env:
        base = _env_folder("KLNOTES_RUNS", env)
    else:
        root = _repo_root()
        base = (root / "runs") if root is not None else default_cache_dir() / "runs"
    return base / p.name / policy_id(p)


def config_id(config) -> str:
    """Short hash of a :class:`klnotes.gpt2.trainer.TrainConfig` (all fields but ``checkpoint_every``): the
    ``config_id`` column of a stored run, compared with the current preset's before a run is reused."""
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k != "checkpoint_every"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def sweep_config_id(p: Preset | str | None = None, seed: int = 0) -> str:
    """Short hash of what chapter 7's gradient sweeps of preset ``p`` depend on: the ``grad_*`` fields and
    the :class:`klnotes.gpt2.trainer.TrainConfig` that moves the policy (:func:`moved_policy`), and ``seed``.
    The ``config_id`` column of the stored sweeps, checked before they are reused."""
    p = preset(p)
    fields = {
        name: getattr(p, name)
        for name in ("grad_length", "grad_alphas", "grad_samples", "grad_old_lag")
    }
    fields["move"] = config_id(p.train_config("none", beta=0.0, seed=seed, steps=p.grad_move_steps))
    fields["seed"] = int(seed)
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def _stored_problem(frame: pd.DataFrame, p: Preset, spec: RunSpec, config) -> str | None:
    """Why a stored run cannot be trusted (``None``: it can): stale policy or config, wrong identifying
    columns, a row count other than the configured steps, steps out of sequence, non-finite metrics."""

    if frame.empty:
        return "no rows"
    for column, want in (("policy", policy_id(p)), ("config_id", config_id(config))):
        problem = _id_problem(frame, column, want)
        if problem is not None:
            return problem
    for name, value in spec.columns().items():
        if name not in frame.columns or not (frame[name] == value).all():
            have = sorted(set(frame[name])) if name in frame.columns else "no such column"
            return f"column {name!r} should be {value!r} on every row, has {have}"
    try:
        metrics = [c for c in trainer.METRICS if c in frame.columns]
        _runio.validate_table(
            frame, columns=("step",), steps=config.steps, path="", fix="", finite=metrics
        )
    except ValueError as err:
        return str(err).removeprefix("'': ").removesuffix("; ")
    return None


def run(
    p: Preset | str,
    spec: RunSpec,
    *,
    store: ResultsStore | str | None = None,
    steps: int | None = None,
    device=None,
    progress: bool = True,
    resume: bool = True,
    keep_checkpoints: bool | None = None,
) -> pd.DataFrame:
    """Train one run (or load it if its results exist, were made with the current policy, and ``resume``).

    A stored run is validated before it is trusted: the current policy and config (``config_id``), the
    identifying columns, one row per configured step ``0 ... steps-1``, finite metrics. A stored file that
    fails is trained again, with a warning naming the file and the problem.

    The run's key is locked in the store while it is checked and trained, so a second process asking for
    the same run waits for it and then loads its result. After the result is saved the run's checkpoint
    is deleted, unless ``keep_checkpoints`` (default: the environment variable
    ``KLNOTES_KEEP_CHECKPOINTS=1``); with ``progress`` the run folder's disk use is printed.

    Returns the trainer's per-step metrics with the identifying columns of ``spec`` (``experiment``,
    ``arm``, ``beta``, ``seed``, ``updates_per_batch``), ``policy`` (:func:`policy_id`) and
    ``config_id`` (:func:`config_id`) in front.

    Raises:
        TypeError: ``spec`` not a :class:`RunSpec`. ValueError: unknown preset or arm, bad ``steps``.
    """

    p = preset(p)
    if not isinstance(spec, RunSpec):
        raise TypeError(f"spec must be a RunSpec, got {type(spec).__name__}: {spec!r}")
    if steps is not None and not (_is_int(steps) and steps >= 1):
        raise ValueError(f"steps must be a positive int or None, got {steps!r}")
    store = _store(p, store)
    check_arms((spec.arm,))
    config = p.train_config(
        spec.arm,
        beta=spec.beta,
        seed=spec.seed,
        updates_per_batch=spec.updates_per_batch,
        steps=steps,
    )
    if keep_checkpoints is None:
        keep_checkpoints = os.environ.get("KLNOTES_KEEP_CHECKPOINTS", "").strip().lower() in (
            "1",
            "true",
            "yes",
        )
    if (
        resume
    ):  # a valid stored run is read without the lock (files are replaced atomically): a read-only
        frame, _ = _checked_stored(
            store, p, spec, config
        )  # store (a shipped or mounted one) stays readable
        if frame is not None:
            return frame
    with store.lock(spec.key, wait=True):
        key_path = store.path(spec.key)
        _runio.remove_stale_temporaries(key_path.parent, (key_path.name,))  # left by a killed save
        if resume and store.has(
            spec.key
        ):  # again under the lock: another process may have just saved it
            frame, problem = _checked_stored(store, p, spec, config)
            if frame is not None:
                return frame
            if not problem.startswith("made with"):
                warnings.warn(
                    f"stored results {str(store._read_path(spec.key))!r} are not valid ({problem}); "
                    "training the run again",
                    RuntimeWarning,
                    stacklevel=2,
                )
        models = _load(p, device)
        run_dir = _writable_folder(_runs_dir(p) / spec.key, "KLNOTES_RUNS")
        metrics = trainer.train(
            _fresh_policy(p, device),
            models.reference,
            models.task,
            config,
            run_dir=run_dir,
            progress=progress,
        )
        frame = metrics.reset_index(drop=("step" in metrics.columns))
        for i, (name, value) in enumerate(
            {**spec.columns(), "policy": policy_id(p), "config_id": config_id(config)}.items()
        ):
            frame.insert(i, name, value)
        store.save(spec.key, frame)
        _finish_run_dir(run_dir, keep=keep_checkpoints, report=progress, key=spec.key)
    return frame


def _checked_stored(
    store: ResultsStore, p: Preset, spec: RunSpec, config
) -> tuple[pd.DataFrame | None, str]:
    """``(frame, "")`` for a valid stored run of ``spec``; ``(None, why)`` otherwise (``why`` empty: none)."""
    if not store.has(spec.key):
        return None, ""
    try:
        frame = store.load(spec.key)
        problem = _stored_problem(frame, p, spec, config)
    except ValueError as err:
        return None, str(err)
    return (frame, "") if problem is None else (None, problem)


def _finish_run_dir(run_dir: Path, *, keep: bool, report: bool, key: str) -> None:
    """Delete the checkpoint of a finished, stored run (unless ``keep``); print the folder's disk use."""

    checkpoint = run_dir / trainer.CHECKPOINT
    size = _runio.disk_use(run_dir)
    if not keep and checkpoint.is_file():
        with _runio.lock(
            run_dir / trainer.LOCK_FILE, what=f"run folder {str(run_dir)!r}", wait=True
        ):
            checkpoint.unlink(missing_ok=True)
    if report:
        left = _runio.disk_use(run_dir)
        note = (
            "checkpoint kept" if keep else f"checkpoint deleted, {_runio.format_bytes(left)} left"
        )
        print(
            f"{key}: run folder {str(run_dir)!r} used {_runio.format_bytes(size)} ({note})",
            flush=True,
        )


def _check_list(name: str, values, ok, allowed: str) -> tuple:
    """``values`` as a non-empty tuple whose items all pass ``ok``; else ValueError naming ``name``."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{name} must be a non-empty list of {allowed}, got {values!r}")
    values = tuple(values)
    bad = [v for v in values if not ok(v)]
    if not values or bad:
        raise ValueError(
            f"{name} must be a non-empty list of {allowed}, got {values!r}"
            + (f" (bad: {bad[0]!r})" if bad else "")
        )
    return values


def run_arms(
    p: Preset | str | None = None,
    arms: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    *,
    betas: Sequence[float] | None = None,
    store: ResultsStore | str | None = None,
    device=None,
    progress: bool = True,
) -> pd.DataFrame:
    """Every arm at every beta and seed of the preset (on-policy, one update per batch), concatenated.

    Runs already in the store are loaded, not trained again (resumable).

    Raises:
        ValueError: unknown preset or arm (lists the allowed ones).
    """
    p = preset(p)
    arms = check_arms(p.arms if arms is None else arms)
    seeds = (
        p.seeds
        if seeds is None
        else _check_list("seeds", seeds, _is_seed, f"ints in [0, {_MAX_SEED}]")
    )
    betas = (
        p.betas
        if betas is None
        else _check_list("betas", betas, lambda b: _is_number(b) and b >= 0, "finite numbers >= 0")
    )
    frames = [
        run(
            p,
            RunSpec("arms", arm, float(beta), int(seed)),
            store=store,
            device=device,
            progress=progress,
        )
        for beta in betas
        for arm in arms
        for seed in seeds
    ]
    return pd.concat(frames, ignore_index=True)


def run_off_policy_ablation(
    p: Preset | str | None = None,
    *,
    pairs: Sequence[tuple[str, str]] = OFF_POLICY_PAIRS,
    extra_arms: Sequence[str] = ("none", "k1-loss"),
    updates: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
    beta: float | None = None,
    store: ResultsStore | str | None = None,
    device=None,
    progress: bool = True,
) -> pd.DataFrame:
    """Several updates per rollout batch, each "as loss" arm with and without the IS correction.

    For every ``(plain, corrected)`` pair, every number of updates in ``updates`` (default the preset's
    ``ablation_updates``) and seed, one run of ``ablation_steps`` steps at ``beta`` (default the main one).
    ``extra_arms`` are run the same way (default ``none`` and ``k1-loss``: does the off-policy
    "k1 as loss" push the policy further than no KL, chapter 7?).
    """
    p = preset(p)
    arms = check_arms([a for pair in pairs for a in pair] + list(extra_arms))
    updates = (
        p.ablation_updates
        if updates is None
        else _check_list("updates", updates, lambda u: _is_int(u) and u >= 1, "ints >= 1")
    )
    seeds = (
        p.ablation_seeds
        if seeds is None
        else _check_list("seeds", seeds, _is_seed, f"ints in [0, {_MAX_SEED}]")
    )
    if beta is not None and not (_is_number(beta) and beta >= 0):
        raise ValueError(f"beta must be a finite number >= 0 or None, got {beta!r}")
    beta = p.beta if beta is None else float(beta)
    frames = [
        run(
            p,
            RunSpec("offpolicy", arm, beta, int(seed), int(u)),
            store=store,
            steps=p.ablation_steps,
            device=device,
            progress=progress,
        )
        for u in updates
        for arm in arms
        for seed in seeds
    ]
    return pd.concat(frames, ignore_index=True)


# --- chapter 7: gradients along a path away from the reference -----------------------------------


def moved_policy(
    p: Preset | str | None = None, *, seed: int = 0, device=None, progress: bool = False
):
    """The reference, a policy moved away from it, and a prompt, for :mod:`klnotes.gpt2.gradcompare`.

    The moved policy is the preset's policy after ``grad_move_steps`` trainer steps of the ``"none"``
    arm (reward only, no KL): a direction a real fine-tuning run takes. Returns
    ``(reference_model, moved_model, prompt_ids [P])``; with exact enumeration (``grad_samples=None``)
    both models are float64 so that identities hold to ~1e-12. The prompt is the task's first one.
    The result is kept for the process: a second call (chapter 7, then :func:`gradient_sweeps`) does not
    move the policy again.
    """

    p = preset(p)
    key = (p, policy_id(p), int(seed), str(device))
    if key in _MOVED:
        return _MOVED[key]
    models = _load(p, device)
    config = p.train_config("none", beta=0.0, seed=seed, steps=p.grad_move_steps)
    moving = _fresh_policy(p, device)
    trainer.train(moving, models.reference, models.task, config, run_dir=None, progress=progress)
    dtype = torch.float64 if p.grad_samples is None else torch.float32
    reference = models.reference.model
    if (
        next(reference.parameters()).dtype != dtype
    ):  # a float64 copy for exact enumeration (tiny models only)
        reference = copy.deepcopy(reference).to(dtype).eval().requires_grad_(False)
    moved = moving.model.to(dtype).eval()
    prompt = torch.tensor(
        models.reference.tokenizer(models.task.prompts[0], add_special_tokens=False).input_ids,
        dtype=torch.long,
    )
    _MOVED[key] = (reference, moved, prompt)
    return _MOVED[key]


_MOVED: dict = {}


def reference_policy(p: Preset | str | None = None, *, device=None):
    """The preset's initial policy, frozen (the reference of every run), loaded once per process."""
    return _load(preset(p), device).reference


def stored(
    p: Preset | str, prefix: str = "", *, store: ResultsStore | str | None = None
) -> pd.DataFrame:
    """Results of preset ``p`` already in its store (keys starting with ``prefix``), without training
    anything; an empty frame when there are none. The ``gpu`` chapters read the ``full`` preset this way.

    Each file is checked as :func:`run` checks it (row count, steps, finite metrics, policy and config);
    one that fails is left out with a warning naming it."""
    p = preset(p)
    store = _store(p, store)
    frames = []
    for key in store.keys(prefix):
        try:
            frame = store.load(key)
            problem = _stored_file_problem(frame, p, key)
        except ValueError as err:
            problem = str(err)
        if problem:
            warnings.warn(
                f"stored results {str(store.path(key))!r} are not valid ({problem}); left out",
                RuntimeWarning,
                stacklevel=2,
            )
        else:
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _stored_file_problem(frame: pd.DataFrame, p: Preset, key: str) -> str | None:
    """:func:`_stored_problem` (training runs) or :func:`_gradients_problem` (``gradients/`` sweeps) of a
    stored file, its run recognised from its identifying columns."""
    if key.startswith("gradients/"):
        seed = re.fullmatch(r"gradients/(?:on|off)policy_seed(\d+)", key)
        if seed is None:
            return f"not a gradient sweep key (gradients/onpolicy_seedN or gradients/offpolicy_seedN): {key!r}"
        return _gradients_problem(frame, p, int(seed[1]))
    ids = ("experiment", "arm", "beta", "seed", "updates_per_batch")
    if frame.empty or any(c not in frame.columns for c in ids):
        return f"expected the columns {list(ids)} and rows, have {len(frame)} rows, {list(frame.columns)}"
    try:
        first = frame.iloc[0]
        spec = RunSpec(
            str(first["experiment"]),
            str(first["arm"]),
            float(first["beta"]),
            int(first["seed"]),
            int(first["updates_per_batch"]),
        )
    except (ValueError, TypeError) as err:
        return f"bad identifying columns ({err})"
    if spec.key != key:
        return f"its columns describe the run {spec.key!r}"
    steps = p.ablation_steps if spec.experiment == "offpolicy" else None
    config = p.train_config(
        spec.arm,
        beta=spec.beta,
        seed=spec.seed,
        updates_per_batch=spec.updates_per_batch,
        steps=steps,
    )
    return _stored_problem(frame, p, spec, config)


def gradient_sweeps(
    p: Preset | str | None = None,
    *,
    store: ResultsStore | str | None = None,
    seed: int = 0,
    device=None,
    progress: bool = True,
    resume: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Chapter 7's two comparisons along ``theta(alpha)``, saved under ``gradients/`` (resumable).

    ``on``: every implementation of :data:`klnotes.gpt2.gradcompare.IMPLEMENTATIONS` against the principled
    gradient, on-policy. ``off``: per-token k1/k2/k3 as loss sampled from ``pi_old = theta(alpha - lag)``,
    with no correction, the per-token ratio and the sequence ratio. Both are rows of
    :func:`klnotes.gpt2.gradcompare.sweep` (``off`` with its ``offpolicy_bias`` column).
    """

    p = preset(p)
    store = _store(p, store)
    keys = (f"gradients/onpolicy_seed{seed}", f"gradients/offpolicy_seed{seed}")
    if resume and all(store.has(k) for k in keys):
        try:
            on, off = store.load(keys[0]), store.load(keys[1])
            problems = [(k, _gradients_problem(f, p, seed)) for k, f in zip(keys, (on, off))]
            if not any(pr for _, pr in problems):
                return on, off
        except ValueError as err:
            problems = [(keys[0], str(err))]
        for k, problem in problems:
            if problem and not problem.startswith("made with"):
                warnings.warn(
                    f"stored results {str(store.path(k))!r} are not valid ({problem}); computing them again",
                    RuntimeWarning,
                    stacklevel=2,
                )
    reference, moved, prompt = moved_policy(p, seed=seed, device=device)
    mc = {} if p.grad_samples is None else {"n_samples": p.grad_samples}
    on = gc.sweep(
        reference, moved, p.grad_alphas, prompt, p.grad_length, progress=progress, seed=seed, **mc
    )
    off_impls = ["k1 as loss", "k2 as loss", "k3 as loss"]
    off = gc.sweep(
        reference,
        moved,
        p.grad_alphas,
        prompt,
        p.grad_length,
        old_lag=p.grad_old_lag,
        implementations=off_impls,
        progress=progress,
        seed=seed,
        **mc,
    )
    for frame in (on, off):
        frame.insert(0, "policy", policy_id(p))
        frame.insert(1, "config_id", sweep_config_id(p, seed))
    store.save(keys[0], on)
    store.save(keys[1], off)
    return on, off


def _gradients_problem(frame: pd.DataFrame, p: Preset, seed: int = 0) -> str | None:
    """Why a stored gradient sweep cannot be trusted (``None``: it can): the current policy and sweep
    config (:func:`sweep_config_id`) on every row, every alpha of the preset, the same implementations at
    each, finite KL values (a cosine may be NaN: "k1 as loss" has a zero gradient)."""
    if frame.empty or not {"alpha", "implementation", "kl"} <= set(frame.columns):
        return f"expected rows with columns alpha, implementation, kl; have {len(frame)} rows, {list(frame.columns)}"
    for column, want in (("policy", policy_id(p)), ("config_id", sweep_config_id(p, seed))):
        problem = _id_problem(frame, column, want)
        if problem is not None:
            return problem
    alphas = sorted(float(a) for a in p.grad_alphas)
    if sorted(frame["alpha"].unique().tolist()) != alphas:
        return f"alphas {sorted(frame['alpha'].unique().tolist())}, the preset has {alphas}"
    per_alpha = frame.groupby("alpha")["implementation"].apply(frozenset)
    if per_alpha.nunique() != 1 or len(frame) != len(alphas) * len(per_alpha.iloc[0]):
        return "not the same implementations at every alpha (a file cut short?)"
    if not np.isfinite(frame["kl"].to_numpy(dtype=float)).all():
        return "non-finite KL values"
    return None


# --- sizing: FLOPs and run-time estimates --------------------------------------------------------

#: Assumed sustained throughput (FLOP/s) of ``(no-grad passes, training passes)`` per GPU kind: sampling
#: and reference passes under autocast (float16 on a T4, bfloat16 on Ampere and later), training passes
#: in float32 on a T4 (no bfloat16 there) and under bfloat16 autocast elsewhere; about a quarter of the
#: data-sheet peaks (T4: 65 TFLOP/s float16, 8 float32; H100: about 990 bfloat16), since these small
#: batches do not fill the GPU: 5-25 %. Estimates, not measurements (no GPU was available to calibrate them).
GPU_THROUGHPUT: dict[str, tuple[float, float]] = {
    "T4": (8e12, 2e12),
    "L4": (25e12, 12e12),
    "A10": (25e12, 12e12),
    "A100": (50e12, 25e12),
    "H100": (100e12, 50e12),
    "H200": (100e12, 50e12),
}
#: Seconds per sampled token on a GPU that do not shrink with FLOPs (one small kernel per layer and
#: operation while decoding with a KV cache): added per step by :func:`estimate_seconds`.
DECODE_LATENCY_S = 0.002
_PROMPT_TOKENS = 12  # a typical prompt of the tasks (GPT-2 prompts are 5-15 BPE tokens)


def _matmul_params(n_params: int, n_positions_params: int = 0) -> int:
    return max(int(n_params) - int(n_positions_params), 1)


def step_flops(p: Preset | str, n_params: int) -> tuple[float, float]:
    """FLOPs of one training step of preset ``p`` with a model of ``n_params`` parameters.

    ``(no_grad, grad)``: sampling ``B = prompts_per_step * group_size`` completions with a KV cache and
    the reference's pass over them, ``2 N B T`` each; the policy's forward and backward passes, ``6 N B T``
    (all minibatches together), where ``T`` = prompt (about 12 tokens) + ``max_new_tokens`` (an upper
    bound: completions that end early cost less). Attention's ``T^2`` term is negligible at these lengths.
    """
    p = preset(p)
    tokens = (p.prompts_per_step * p.group_size) * (_PROMPT_TOKENS + p.max_new_tokens)
    return 4.0 * n_params * tokens, 6.0 * n_params * tokens


def sweep_flops(p: Preset | str, n_params: int) -> tuple[float, float]:
    """FLOPs of chapter 7's Monte Carlo sweeps (:func:`gradient_sweeps`) for preset ``p``: ``(no_grad, grad)``.

    Per distance ``alpha``: the on-policy comparison (every implementation) and the off-policy one (3 per-token
    losses x 3 corrections, plus their on-policy means): about 24 labels, each one forward and one backward
    pass over ``n`` responses of ``prompt + L`` tokens (``6 N n T``), plus sampling and reference passes.
    Zero for exact enumeration (tiny models: seconds).
    """
    p = preset(p)
    if p.grad_samples is None:
        return 0.0, 0.0
    tokens = p.grad_samples * (_PROMPT_TOKENS + p.grad_length)
    per_alpha_grad = 24 * 6.0 * n_params * tokens
    per_alpha_nograd = 4 * 2.0 * n_params * tokens
    return len(p.grad_alphas) * per_alpha_nograd, len(p.grad_alphas) * per_alpha_grad


def _throughput(device) -> tuple[float, float, str]:
    """``(no-grad FLOP/s, training FLOP/s, name)`` of ``device``: :data:`GPU_THROUGHPUT` by GPU name,
    else a 0.2-second matrix-product probe (a quarter of it: small batches do not reach matmul speed)."""

    device = torch.device(device) if device is not None else torch.device("cpu")
    name = "CPU"
    if device.type == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(device)
        for kind, rates in GPU_THROUGHPUT.items():
            if kind in name.replace("-", " ").upper().split() or f" {kind}" in name.upper():
                return rates[0], rates[1], name
    a = torch.randn(512, 512, device=device)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < 0.2:
        a @ a
        n += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    rate = 0.25 * n * 2 * 512**3 / (time.perf_counter() - start)
    return rate, rate, name


def estimate_seconds(
    p: Preset | str,
    n_params: int,
    *,
    device=None,
    runs: int = 1,
    steps: int | None = None,
    sweeps: bool = False,
) -> float:
    """Estimated seconds of ``runs`` training runs of ``steps`` (default the preset's) steps, or of the
    gradient sweeps (``sweeps=True``), from :func:`step_flops` / :func:`sweep_flops` and the device's
    throughput (:data:`GPU_THROUGHPUT`, or a matrix-product probe). An estimate: the GPU
    throughputs are assumed, not measured.

    Raises:
        ValueError: ``n_params`` or ``runs`` not an int >= 1, ``steps`` not an int >= 1 or None.
    """
    p = preset(p)
    for name, value in (
        ("n_params", n_params),
        ("runs", runs),
        ("steps", 1 if steps is None else steps),
    ):
        if not (_is_int(value) and value >= 1):
            raise ValueError(
                f"{name} must be an int >= 1{' or None' if name == 'steps' else ''}, got {value!r}"
            )
    no_grad, grad = sweep_flops(p, n_params) if sweeps else step_flops(p, n_params)
    count = 1 if sweeps else runs * (p.steps if steps is None else steps)
    no_grad, grad = no_grad * count, grad * count
    fast, slow, name = _throughput(device)
    latency = 0.0 if sweeps or name == "CPU" else count * p.max_new_tokens * DECODE_LATENCY_S
    return no_grad / fast + grad / slow + latency


def print_estimate(
    what: str,
    p: Preset | str,
    model,
    *,
    device=None,
    runs: int = 1,
    steps: int | None = None,
    sweeps: bool = False,
) -> float:
    """Print the FLOPs and estimated run time of ``what`` (before starting it); return the seconds."""
    p = preset(p)
    n = sum(x.numel() for x in model.parameters())
    no_grad, grad = sweep_flops(p, n) if sweeps else step_flops(p, n)
    count = 1 if sweeps else runs * (p.steps if steps is None else steps)
    seconds = estimate_seconds(p, n, device=device, runs=runs, steps=steps, sweeps=sweeps)
    _, _, name = _throughput(device)
    print(
        f"{what}: {count * (no_grad + grad) / 1e12:,.1f} TFLOP ({n / 1e6:.1f}M parameters); "
        f"estimated {seconds / 60:.1f} min on this {name} (from FLOPs and an assumed throughput)",
        flush=True,
    )
    return seconds


# --- analysis ------------------------------------------------------------------------------------

_ID_COLUMNS = ("experiment", "arm", "beta", "seed", "updates_per_batch", "policy")


def final_metrics(
    frame: pd.DataFrame, *, last: int = 5, metrics: Sequence[str] | None = None
) -> pd.DataFrame:
    """Per run, the mean of each metric over its last ``last`` steps: one row per run.

    ``metrics`` default: every numeric column other than the identifiers and ``step``.
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame must be a pandas DataFrame, got {type(frame).__name__}")
    if frame.empty:
        raise ValueError("empty results frame: run an experiment first")
    if not _is_int(last) or last < 1:
        raise ValueError(f"last must be an int >= 1 (steps averaged at the end), got {last!r}")
    if "step" not in frame.columns:
        raise ValueError(f"results frame has no 'step' column (columns: {list(frame.columns)})")
    ids = [c for c in _ID_COLUMNS if c in frame.columns]
    if metrics is None:
        metrics = [c for c in frame.select_dtypes("number").columns if c not in ids and c != "step"]
    tail = frame.sort_values("step").groupby(ids, group_keys=False).tail(last)
    return tail.groupby(ids, as_index=False)[list(metrics)].mean()


def frontier(
    frame: pd.DataFrame, *, reward: str = "reward", kl: str = "kl_seq_exact", last: int = 5
) -> pd.DataFrame:
    """Reward against KL at the end of training: per run, columns of the ids, ``reward`` and ``kl``."""
    out = final_metrics(frame, last=last, metrics=[reward, kl])
    return out.rename(columns={reward: "reward", kl: "kl"})


def summarize(
    frame: pd.DataFrame,
    *,
    metrics: Sequence[str],
    by: Sequence[str] = ("arm", "beta"),
    last: int = 5,
) -> pd.DataFrame:
    """Mean and standard deviation over seeds of each metric's final value, one row per ``by`` group."""
    fin = final_metrics(frame, last=last, metrics=metrics)
    out = fin.groupby(list(by))[list(metrics)].agg(["mean", "std"])
    out.columns = [f"{m}_{s}" for m, s in out.columns]
    return out.reset_index()


#: Axis labels of the trainer's logged metrics (the raw column names are for code, not for readers).
METRIC_LABELS: dict[str, str] = {
    "reward": "reward",
    "kl_seq_exact": "sequence KL (nats, exact)",
    "logprob_diff": "Logprob Diff (mean log-ratio)",
    "entropy": "entropy (nats per token)",
    "response_length": "response length (tokens)",
    "frac_abs_log_ratio_gt_1": r"share of tokens with $|u_t| > 1$",
}


def metric_label(metric: str) -> str:
    """Readable axis label of a logged metric (:data:`METRIC_LABELS`); unknown names pass through."""
    return METRIC_LABELS.get(metric, metric)


def mean_sd_table(summary: pd.DataFrame, *, digits: int = 3) -> pd.DataFrame:
    """A :func:`summarize` frame for reading: each metric's ``<m>_mean`` and ``<m>_std`` columns become
    one column ``"mean ± sd"`` headed by :func:`metric_label` (without matplotlib's ``$`` signs), so the
    table stays narrow.

    Raises:
        ValueError: a ``_mean`` column without its ``_std`` partner (names it).
    """
    means = [c[: -len("_mean")] for c in summary.columns if c.endswith("_mean")]
    missing = [m for m in means if f"{m}_std" not in summary.columns]
    if missing:
        raise ValueError(f"no _std column for {missing}; columns: {list(summary.columns)}")
    keys = [c for c in summary.columns if not any(c in (f"{m}_mean", f"{m}_std") for m in means)]
    out = summary[keys].copy()
    for m in means:
        out[metric_label(m).replace("$", "")] = [
            f"{a:.{digits}f} ± {b:.{digits}f}"
            for a, b in zip(summary[f"{m}_mean"], summary[f"{m}_std"].fillna(0.0))
        ]
    return out


def describe(p: Preset | str | None = None) -> pd.DataFrame:
    """The preset's settings as a two-column table (for the chapters)."""
    p = preset(p)
    return pd.DataFrame(
        [(f.name, getattr(p, f.name)) for f in dataclasses.fields(p)], columns=["setting", "value"]
    )
