"""Named experiments of :doc:`chapters 7 </book/07_gpt2_gradients>` and
:doc:`8 </book/08_gpt2_training>`: training runs of every KL arm, the off-policy ablation and
the gradient sweeps, each stored once and reused.

The pieces around the runs live beside this module: the scale presets (:mod:`klnotes.gpt2.presets`:
what ``smoke``, ``cpu``, ``gpu`` and ``full`` mean), the results store with the identifiers that
make a stored run trustworthy (:mod:`klnotes.gpt2.store`), the run-time estimates
(:mod:`klnotes.gpt2.sizing`) and the tables of finished runs (:mod:`klnotes.gpt2.tables`). Their
public names are importable from here as well (the paths the chapters use).

A run whose CSV exists is loaded instead of trained: every experiment is resumable, and a chapter
can plot stored results without training anything. Within a run, the trainer's own checkpoints
(``runs/<preset>/<run>``) let an interrupted run continue.

Experiments:

- :func:`run_arms`: every KL arm of :data:`klnotes.gpt2.trainconfig.ARMS` at each beta and seed
  (:doc:`chapter 8 </book/08_gpt2_training>`).
- :func:`run_off_policy_ablation`: several updates per batch (1, 2, 4), "as loss" arms with and
  without the importance-sampling correction (:doc:`chapter 8 </book/08_gpt2_training>`, the setting
  of :eq:`eq-6-correction`).
- :func:`moved_policy` and :func:`gradient_sweeps`: :doc:`chapter 7 </book/07_gpt2_gradients>`'s
  policies along a path away from the reference and each implementation's gradient against the
  principled one there.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from klnotes.gpt2 import _runio, devices, policies, presets, sizing, store, tables, tasks, trainer
from klnotes.gpt2 import gradcompare as gc
from klnotes.gpt2._checks import check_betas, check_seeds, check_updates, is_int, is_number
from klnotes.gpt2.checkpoint import CHECKPOINT, LOCK_FILE
from klnotes.gpt2.presets import *  # noqa: F403 - re-exported (__all__)
from klnotes.gpt2.presets import OFF_POLICY_PAIRS, Preset, check_arms, preset
from klnotes.gpt2.sizing import *  # noqa: F403 - re-exported (__all__)
from klnotes.gpt2.store import *  # noqa: F403 - re-exported (__all__)
from klnotes.gpt2.store import (
    ResultsStore,
    RunSpec,
    checked_run,
    config_id,
    gradients_problem,
    policy_id,
    results_store,
    runs_dir,
    sweep_config_id,
)
from klnotes.gpt2.tables import *  # noqa: F403 - re-exported (__all__)

#: The experiments of this module, then the public names of the modules around it, importable
#: from here too (the paths the chapters use).
__all__ = [
    "run",
    "run_arms",
    "run_off_policy_ablation",
    "moved_policy",
    "reference_policy",
    "gradient_sweeps",
]
__all__ += presets.__all__ + store.__all__ + sizing.__all__ + tables.__all__


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

    :doc:`Chapter 8 </book/08_gpt2_training>`: one run of the trainer
    (:func:`klnotes.gpt2.trainer.train`) with one KL arm.

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
    if steps is not None and not (is_int(steps) and steps >= 1):
        raise ValueError(f"steps must be a positive int or None, got {steps!r}")
    store = results_store(p, store)
    config = spec.train_config(p, steps=steps)
    if keep_checkpoints is None:
        keep_checkpoints = os.environ.get("KLNOTES_KEEP_CHECKPOINTS", "").strip().lower() in (
            "1",
            "true",
            "yes",
        )
    if (
        resume
    ):  # a valid stored run is read without the lock (files are replaced atomically): a read-only
        frame, _ = checked_run(
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
            frame, problem = checked_run(store, p, spec, config)
            if frame is not None:
                return frame
            if not problem.startswith("made with"):
                warnings.warn(
                    f"stored results {str(store.read_path(spec.key))!r} are not valid ({problem}); "
                    "training the run again",
                    RuntimeWarning,
                    stacklevel=2,
                )
        models = _load(p, device)
        run_dir = _runio.writable_folder(runs_dir(p) / spec.key, "KLNOTES_RUNS")
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


def _finish_run_dir(run_dir: Path, *, keep: bool, report: bool, key: str) -> None:
    """Delete the checkpoint of a finished, stored run (unless ``keep``); print the folder's disk use."""

    checkpoint = run_dir / CHECKPOINT
    size = _runio.disk_use(run_dir)
    if not keep and checkpoint.is_file():
        with _runio.lock(run_dir / LOCK_FILE, what=f"run folder {str(run_dir)!r}", wait=True):
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

    :doc:`Chapter 8 </book/08_gpt2_training>`'s main comparison: each arm's KL term
    (:eq:`eq-3-as-loss`, :eq:`eq-3-in-reward`).

    Runs already in the store are loaded, not trained again (resumable).

    Raises:
        ValueError: unknown preset or arm (lists the allowed ones).
    """
    p = preset(p)
    arms = check_arms(p.arms if arms is None else arms)
    seeds = p.seeds if seeds is None else check_seeds("seeds", seeds)
    betas = p.betas if betas is None else check_betas("betas", betas)
    grid = [(float(beta), arm, seed, 1) for beta in betas for arm in arms for seed in seeds]
    return _run_grid(p, "arms", grid, None, store=store, device=device, progress=progress)


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

    The naive heads follow :eq:`eq-6-naive` from the second update on; the corrected ones
    :eq:`eq-6-correction`, clipped as :eq:`eq-6-clip` (:doc:`chapter 8 </book/08_gpt2_training>`).

    For every ``(plain, corrected)`` pair, every number of updates in ``updates`` (default the preset's
    ``ablation_updates``) and seed, one run of ``ablation_steps`` steps at ``beta`` (default the main one).
    ``extra_arms`` are run the same way (default ``none`` and ``k1-loss``: does the off-policy
    "k1 as loss" push the policy further than no KL, :doc:`chapter 7 </book/07_gpt2_gradients>`?).
    """
    p = preset(p)
    arms = check_arms([a for pair in pairs for a in pair] + list(extra_arms))
    updates = p.ablation_updates if updates is None else check_updates("updates", updates)
    seeds = p.ablation_seeds if seeds is None else check_seeds("seeds", seeds)
    if beta is not None and not (is_number(beta) and beta >= 0):
        raise ValueError(f"beta must be a finite number >= 0 or None, got {beta!r}")
    beta = p.beta if beta is None else float(beta)
    grid = [(beta, arm, seed, u) for u in updates for arm in arms for seed in seeds]
    return _run_grid(
        p, "offpolicy", grid, p.ablation_steps, store=store, device=device, progress=progress
    )


def _run_grid(p: Preset, experiment: str, grid, steps: int | None, **options) -> pd.DataFrame:
    """:func:`run` of every ``(beta, arm, seed, updates_per_batch)`` of ``grid`` in ``experiment``,
    concatenated in that order (``options``: ``store``, ``device``, ``progress``)."""
    frames = [
        run(p, RunSpec(experiment, arm, beta, int(seed), int(u)), steps=steps, **options)
        for beta, arm, seed, u in grid
    ]
    return pd.concat(frames, ignore_index=True)


# --- chapter 7: gradients along a path away from the reference -----------------------------------


def moved_policy(
    p: Preset | str | None = None, *, seed: int = 0, device=None, progress: bool = False
):
    r"""The reference, a policy moved away from it, and a prompt, for :mod:`klnotes.gpt2.gradcompare`.

    The moved policy is :math:`\theta_1` of the path :eq:`eq-7-path` (:doc:`chapter 7 </book/07_gpt2_gradients>`).

    The moved policy is the preset's policy after ``grad_move_steps`` trainer steps of the ``"none"``
    arm (reward only, no KL): a direction a real fine-tuning run takes. Returns
    ``(reference_model, moved_model, prompt_ids [P])``; with exact enumeration (``grad_samples=None``)
    both models are float64 so that identities hold to ~1e-12. The prompt is the task's first one.
    The result is kept for the process: a second call (:doc:`chapter 7 </book/07_gpt2_gradients>`,
    then :func:`gradient_sweeps`) does not
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
    r"""The preset's initial policy, frozen (the reference of every run), loaded once per process.

    :math:`\pi_{\mathrm{ref}}` of the objective :eq:`eq-1-objective`
    (:doc:`chapters 7 </book/07_gpt2_gradients>` and :doc:`8 </book/08_gpt2_training>`).
    """
    return _load(preset(p), device).reference


def gradient_sweeps(
    p: Preset | str | None = None,
    *,
    store: ResultsStore | str | None = None,
    seed: int = 0,
    device=None,
    progress: bool = True,
    resume: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    r""":doc:`Chapter 7 </book/07_gpt2_gradients>`'s two comparisons along ``theta(alpha)``, saved
    under ``gradients/`` (resumable).

    Each implementation's expected gradient :eq:`eq-7-expected` against the principled one
    :eq:`eq-7-principled`, at the points :math:`\theta(\alpha)` of :eq:`eq-7-path`.

    ``on``: every implementation of :data:`klnotes.gpt2.gradients.IMPLEMENTATIONS` against the principled
    gradient, on-policy. ``off``: per-token k1/k2/k3 as loss sampled from ``pi_old = theta(alpha - lag)``,
    with no correction, the per-token ratio and the sequence ratio. Both are rows of
    :func:`klnotes.gpt2.gradcompare.sweep` (``off`` with its ``offpolicy_bias`` column).
    """

    p = preset(p)
    store = results_store(p, store)
    keys = (f"gradients/onpolicy_seed{seed}", f"gradients/offpolicy_seed{seed}")
    if resume and all(store.has(k) for k in keys):
        try:
            on, off = store.load(keys[0]), store.load(keys[1])
            problems = [(k, gradients_problem(f, p, seed)) for k, f in zip(keys, (on, off))]
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
