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

- :func:`run_arms`: every KL arm of :data:`klnotes.trainer.ARMS` at each beta and seed (chapter 8).
- :func:`run_off_policy_ablation`: several updates per batch (1, 2, 4), "as loss" arms with and
  without the importance-sampling correction.
- :func:`final_metrics` / :func:`frontier`: reward against exact KL at the end of training.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from klnotes._scale import SCALES

__all__ = [
    "Preset",
    "PRESETS",
    "preset",
    "RunSpec",
    "ResultsStore",
    "default_results_dir",
    "check_arms",
    "policy_id",
    "run",
    "run_arms",
    "run_off_policy_ablation",
    "moved_policy",
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

#: Off-policy ablation: each "as loss" arm and its importance-sampling corrected version.
OFF_POLICY_PAIRS: tuple[tuple[str, str], ...] = (("k2-loss", "k2-loss-is"), ("k3-loss", "k3-loss-is"))


def _allowed_arms() -> tuple[str, ...]:
    from klnotes import trainer

    return tuple(trainer.ARMS)


def check_arms(arms: Iterable[str]) -> tuple[str, ...]:
    """Validate arm names against :data:`klnotes.trainer.ARMS`; return them as a tuple.

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

    Training (chapter 8; passed to :class:`klnotes.trainer.TrainConfig`):

    Attributes:
        name: ``"smoke"``, ``"cpu"`` or ``"gpu"``; also the policy (:func:`klnotes.policies.policy_for_scale`)
            and the task (:func:`klnotes.tasks.task_for_scale`).
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

    Gradients (chapter 7; :mod:`klnotes.gradcompare`):

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
        if self.name not in SCALES:
            raise ValueError(f"unknown preset name {self.name!r}; allowed: {', '.join(SCALES)}")
        for name in ("steps", "group_size", "prompts_per_step", "max_new_tokens", "grad_length", "grad_move_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Preset.{name} must be a positive int, got {value!r}")
        if not self.betas or any(b < 0 for b in self.betas):
            raise ValueError(f"Preset.betas must be non-empty and >= 0, got {self.betas!r}")
        if not self.seeds or not self.ablation_seeds:
            raise ValueError("Preset.seeds and Preset.ablation_seeds must be non-empty")
        if any(u < 1 for u in self.ablation_updates):
            raise ValueError(f"Preset.ablation_updates must be >= 1, got {self.ablation_updates!r}")

    @property
    def beta(self) -> float:
        """The main KL coefficient (first of :attr:`betas`)."""
        return self.betas[0]

    def train_config(self, arm: str, *, beta: float, seed: int, updates_per_batch: int = 1, steps: int | None = None):
        """The :class:`klnotes.trainer.TrainConfig` of one run of this preset.

        Raises:
            ValueError: unknown arm (lists the allowed ones).
        """
        from klnotes import trainer

        (arm,) = check_arms((arm,))
        return trainer.TrainConfig(
            kl=arm, beta=float(beta), group_size=self.group_size, prompts_per_step=self.prompts_per_step,
            max_new_tokens=self.max_new_tokens, updates_per_batch=int(updates_per_batch), clip_eps=self.clip_eps,
            lr=self.lr, steps=int(self.steps if steps is None else steps), temperature=self.temperature, seed=int(seed),
        )


#: The three presets. ``smoke``: CI, each chapter in well under two minutes. ``cpu``: a laptop, minutes,
#: enough steps for the arms' curves to separate, 3 seeds. ``gpu``: GPT-2 124M on one GPU, the paper's
#: beta = 0.5 and a smaller one, several seeds.
PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        name="smoke", steps=3, group_size=4, prompts_per_step=2, max_new_tokens=4, lr=1e-2,
        seeds=(0,), ablation_updates=(1, 2), ablation_seeds=(0,), ablation_steps=2,
        grad_length=2, grad_alphas=(0.5, 1.0), grad_move_steps=3,
    ),
    "cpu": Preset(
        name="cpu", steps=60, group_size=8, prompts_per_step=8, max_new_tokens=8, lr=3e-3,
        betas=(0.5,), seeds=(0, 1, 2), ablation_updates=(1, 2, 4), ablation_seeds=(0, 1), ablation_steps=40,
        grad_length=3, grad_alphas=(0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5), grad_move_steps=10,
    ),
    "gpu": Preset(
        name="gpu", steps=200, group_size=8, prompts_per_step=16, max_new_tokens=24, lr=1e-5,
        betas=(0.5, 0.05), seeds=(0, 1, 2), ablation_updates=(1, 2, 4), ablation_seeds=(0, 1), ablation_steps=150,
        grad_length=8, grad_alphas=(0.25, 0.5, 1.0, 2.0), grad_samples=2048, grad_move_steps=50,
    ),
}


def preset(name: str | Preset | None = None) -> Preset:
    """The preset called ``name`` (``None``: the one of :func:`klnotes.scale`); a :class:`Preset` passes through.

    Raises:
        ValueError: unknown name; the message lists the allowed ones.
    """
    if isinstance(name, Preset):
        return name
    if name is None:
        from klnotes import scale

        name = scale()
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; allowed: {', '.join(PRESETS)}")
    return PRESETS[name]


# --- results store -------------------------------------------------------------------------------


def _repo_root() -> Path | None:
    root = Path(__file__).resolve().parents[1]
    return root if (root / "_toc.yml").is_file() else None


def default_results_dir(preset_name: str) -> Path:
    """Where the results of a preset live.

    ``$KLNOTES_RESULTS/<preset>`` if that variable is set; otherwise, in a checkout of the repository,
    ``results/<preset>`` (committed) for ``cpu`` and ``gpu`` and ``.klnotes_cache/results/smoke``
    (ignored by git) for ``smoke``; outside a checkout, ``./results/<preset>``.
    """
    env = os.environ.get("KLNOTES_RESULTS", "").strip()
    if env:
        return Path(env).expanduser() / preset_name
    root = _repo_root()
    if root is None:
        return Path.cwd() / "results" / preset_name
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

    @property
    def key(self) -> str:
        """File-name key, e.g. ``arms/k2-loss_beta0.5_upb1_seed0``."""
        return f"{self.experiment}/{self.arm}_beta{self.beta:g}_upb{self.updates_per_batch}_seed{self.seed}"

    def columns(self) -> dict:
        """The identifying columns added to the run's metrics."""
        return {"experiment": self.experiment, "arm": self.arm, "beta": float(self.beta), "seed": int(self.seed),
                "updates_per_batch": int(self.updates_per_batch)}


_KEY = re.compile(r"^[A-Za-z0-9_.+\-/]+$")


class ResultsStore:
    """Tidy result frames saved as CSV files under one folder, one file per key.

    ``store.save("arms/k2-loss_beta0.5_upb1_seed0", frame)`` writes
    ``<root>/arms/k2-loss_beta0.5_upb1_seed0.csv`` atomically; :meth:`load` reads it back with the same
    columns and values (floats round-trip exactly); :meth:`has` tells a finished run from a missing one.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.root)!r})"

    def path(self, key: str) -> Path:
        """The CSV file of ``key``.

        Raises:
            ValueError: a key with characters other than letters, digits, ``_ . + - /`` or with ``..``.
        """
        if not isinstance(key, str) or not _KEY.match(key) or ".." in key or key.startswith("/"):
            raise ValueError(f"bad results key {key!r}: use letters, digits and _ . + - / (no '..', no leading '/')")
        return self.root / f"{key}.csv"

    def has(self, key: str) -> bool:
        """Whether ``key`` has been saved."""
        return self.path(key).is_file()

    def save(self, key: str, frame: pd.DataFrame) -> Path:
        """Write ``frame`` (without its index) to the CSV of ``key``; return the path."""
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"frame must be a pandas DataFrame, got {type(frame).__name__}")
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".csv.tmp")
        frame.to_csv(tmp, index=False, float_format="%.17g")
        os.replace(tmp, path)
        return path

    def load(self, key: str) -> pd.DataFrame:
        """Read the frame of ``key``.

        Raises:
            FileNotFoundError: nothing saved under ``key`` (the message names the file).
        """
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(f"no results for {key!r}: {path} does not exist")
        return pd.read_csv(path)

    def keys(self, prefix: str = "") -> list[str]:
        """Saved keys starting with ``prefix``, sorted."""
        if not self.root.is_dir():
            return []
        keys = [p.relative_to(self.root).with_suffix("").as_posix() for p in self.root.rglob("*.csv")]
        return sorted(k for k in keys if k.startswith(prefix))

    def load_all(self, prefix: str = "") -> pd.DataFrame:
        """All frames whose key starts with ``prefix``, concatenated (empty frame if none)."""
        frames = [self.load(k) for k in self.keys(prefix)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _store(p: Preset, store: ResultsStore | str | os.PathLike | None) -> ResultsStore:
    if isinstance(store, ResultsStore):
        return store
    return ResultsStore(default_results_dir(p.name) if store is None else store)


# --- running experiments -------------------------------------------------------------------------


@dataclass
class _Models:
    """Policy, frozen reference and task of a preset, loaded once per process."""

    policy: object = None
    reference: object = None
    task: object = None


_LOADED: dict[str, _Models] = {}


def _load(p: Preset, device=None) -> _Models:
    from klnotes import policies, tasks

    if p.name not in _LOADED:
        policy = policies.policy_for_scale(p.name, device=device)
        reference = policies.frozen(policies.policy_for_scale(p.name, device=device))
        _LOADED[p.name] = _Models(policy=policy, reference=reference, task=tasks.task_for_scale(p.name, policy.tokenizer))
    return _LOADED[p.name]


def _fresh_policy(p: Preset, device=None):
    """A fresh trainable copy of the preset's initial policy (every run starts from the reference)."""
    import copy

    from klnotes import policies

    models = _load(p, device)
    model = copy.deepcopy(models.reference.model).requires_grad_(True)
    return policies.Policy(model=model, tokenizer=models.reference.tokenizer, source=models.reference.source)


def policy_id(p: Preset | str | None = None) -> str:
    """Identifier of the preset's initial policy: ``"gpt2"``, or the tiny model's cache folder name
    (``tiny-lm-<hash of its config>``), computed without loading or building anything.

    Every stored run carries it (column ``policy``); a stored run made with another policy is stale and
    is trained again, so results never silently mix models.
    """
    from klnotes import policies

    p = preset(p)
    if p.name == "gpu":
        return "gpt2"
    return policies.tiny_cache_path(policies.TINY_PRESETS[p.name]).name


def _is_current(frame: pd.DataFrame, p: Preset) -> bool:
    return "policy" in frame.columns and len(frame) > 0 and str(frame["policy"].iloc[0]) == policy_id(p)


def _runs_dir(p: Preset) -> Path:
    root = _repo_root()
    base = (root / "runs") if root is not None else Path.cwd() / "runs"
    return base / p.name / policy_id(p)


def run(p: Preset | str, spec: RunSpec, *, store: ResultsStore | str | None = None, steps: int | None = None,
        device=None, progress: bool = True, resume: bool = True) -> pd.DataFrame:
    """Train one run (or load it if its results exist, were made with the current policy, and ``resume``).

    Returns the trainer's per-step metrics with the identifying columns of ``spec`` (``experiment``,
    ``arm``, ``beta``, ``seed``, ``updates_per_batch``) and ``policy`` (:func:`policy_id`) in front.
    """
    from klnotes import trainer

    p = preset(p)
    store = _store(p, store)
    check_arms((spec.arm,))
    if resume and store.has(spec.key):
        frame = store.load(spec.key)
        if _is_current(frame, p):
            return frame
    models = _load(p, device)
    config = p.train_config(spec.arm, beta=spec.beta, seed=spec.seed, updates_per_batch=spec.updates_per_batch, steps=steps)
    run_dir = _runs_dir(p) / spec.key
    metrics = trainer.train(_fresh_policy(p, device), models.reference, models.task, config, run_dir=run_dir,
                            progress=progress)
    frame = metrics.reset_index(drop=("step" in metrics.columns))
    for i, (name, value) in enumerate({**spec.columns(), "policy": policy_id(p)}.items()):
        frame.insert(i, name, value)
    store.save(spec.key, frame)
    return frame


def run_arms(p: Preset | str | None = None, arms: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
             *, betas: Sequence[float] | None = None, store: ResultsStore | str | None = None, device=None,
             progress: bool = True) -> pd.DataFrame:
    """Every arm at every beta and seed of the preset (on-policy, one update per batch), concatenated.

    Runs already in the store are loaded, not trained again (resumable).

    Raises:
        ValueError: unknown preset or arm (lists the allowed ones).
    """
    p = preset(p)
    arms = check_arms(p.arms if arms is None else arms)
    seeds = p.seeds if seeds is None else tuple(seeds)
    betas = p.betas if betas is None else tuple(betas)
    frames = [
        run(p, RunSpec("arms", arm, float(beta), int(seed)), store=store, device=device, progress=progress)
        for beta in betas for arm in arms for seed in seeds
    ]
    return pd.concat(frames, ignore_index=True)


def run_off_policy_ablation(p: Preset | str | None = None, *, pairs: Sequence[tuple[str, str]] = OFF_POLICY_PAIRS,
                            extra_arms: Sequence[str] = ("none", "k1-loss"),
                            updates: Sequence[int] | None = None, seeds: Sequence[int] | None = None,
                            beta: float | None = None, store: ResultsStore | str | None = None, device=None,
                            progress: bool = True) -> pd.DataFrame:
    """Several updates per rollout batch, each "as loss" arm with and without the IS correction.

    For every ``(plain, corrected)`` pair, every number of updates in ``updates`` (default the preset's
    ``ablation_updates``) and seed, one run of ``ablation_steps`` steps at ``beta`` (default the main one).
    ``extra_arms`` are run the same way (default ``none`` and ``k1-loss``: does the off-policy
    "k1 as loss" push the policy further than no KL, chapter 7?).
    """
    p = preset(p)
    arms = check_arms([a for pair in pairs for a in pair] + list(extra_arms))
    updates = p.ablation_updates if updates is None else tuple(updates)
    seeds = p.ablation_seeds if seeds is None else tuple(seeds)
    beta = p.beta if beta is None else float(beta)
    frames = [
        run(p, RunSpec("offpolicy", arm, beta, int(seed), int(u)), store=store, steps=p.ablation_steps, device=device,
            progress=progress)
        for u in updates for arm in arms for seed in seeds
    ]
    return pd.concat(frames, ignore_index=True)


# --- chapter 7: gradients along a path away from the reference -----------------------------------


def moved_policy(p: Preset | str | None = None, *, seed: int = 0, device=None, progress: bool = False):
    """The reference, a policy moved away from it, and a prompt, for :mod:`klnotes.gradcompare`.

    The moved policy is the preset's policy after ``grad_move_steps`` trainer steps of the ``"none"``
    arm (reward only, no KL): a direction a real fine-tuning run takes. Returns
    ``(reference_model, moved_model, prompt_ids [P])``; with exact enumeration (``grad_samples=None``)
    both models are float64 so that identities hold to ~1e-12. The prompt is the task's first one.
    """
    import copy

    import torch

    from klnotes import trainer

    p = preset(p)
    models = _load(p, device)
    config = p.train_config("none", beta=0.0, seed=seed, steps=p.grad_move_steps)
    moving = _fresh_policy(p, device)
    trainer.train(moving, models.reference, models.task, config, run_dir=None, progress=progress)
    dtype = torch.float64 if p.grad_samples is None else torch.float32
    reference = copy.deepcopy(models.reference.model).to(dtype).eval().requires_grad_(False)
    moved = moving.model.to(dtype).eval()
    prompt = torch.tensor(models.reference.tokenizer(models.task.prompts[0], add_special_tokens=False).input_ids,
                          dtype=torch.long)
    return reference, moved, prompt


def gradient_sweeps(p: Preset | str | None = None, *, store: ResultsStore | str | None = None, seed: int = 0,
                    device=None, progress: bool = True, resume: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Chapter 7's two comparisons along ``theta(alpha)``, saved under ``gradients/`` (resumable).

    ``on``: every implementation of :data:`klnotes.gradcompare.IMPLEMENTATIONS` against the principled
    gradient, on-policy. ``off``: per-token k1/k2/k3 as loss sampled from ``pi_old = theta(alpha - lag)``,
    with no correction, the per-token ratio and the sequence ratio. Both are rows of
    :func:`klnotes.gradcompare.sweep` (``off`` with its ``offpolicy_bias`` column).
    """
    from klnotes import gradcompare as gc

    p = preset(p)
    store = _store(p, store)
    keys = (f"gradients/onpolicy_seed{seed}", f"gradients/offpolicy_seed{seed}")
    if resume and all(store.has(k) for k in keys):
        on, off = store.load(keys[0]), store.load(keys[1])
        if _is_current(on, p) and _is_current(off, p):
            return on, off
    reference, moved, prompt = moved_policy(p, seed=seed, device=device)
    mc = {} if p.grad_samples is None else {"n_samples": p.grad_samples}
    on = gc.sweep(reference, moved, p.grad_alphas, prompt, p.grad_length, progress=progress, seed=seed, **mc)
    off_impls = ["k1 as loss", "k2 as loss", "k3 as loss"]
    off = gc.sweep(reference, moved, p.grad_alphas, prompt, p.grad_length, old_lag=p.grad_old_lag,
                   implementations=off_impls, progress=progress, seed=seed, **mc)
    on.insert(0, "policy", policy_id(p))
    off.insert(0, "policy", policy_id(p))
    store.save(keys[0], on)
    store.save(keys[1], off)
    return on, off


# --- analysis ------------------------------------------------------------------------------------

_ID_COLUMNS = ("experiment", "arm", "beta", "seed", "updates_per_batch", "policy")


def final_metrics(frame: pd.DataFrame, *, last: int = 5, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Per run, the mean of each metric over its last ``last`` steps: one row per run.

    ``metrics`` default: every numeric column other than the identifiers and ``step``.
    """
    if frame.empty:
        raise ValueError("empty results frame: run an experiment first")
    ids = [c for c in _ID_COLUMNS if c in frame.columns]
    if metrics is None:
        metrics = [c for c in frame.select_dtypes("number").columns if c not in ids and c != "step"]
    tail = frame.sort_values("step").groupby(ids, group_keys=False).tail(last)
    return tail.groupby(ids, as_index=False)[list(metrics)].mean()


def frontier(frame: pd.DataFrame, *, reward: str = "reward", kl: str = "kl_seq_exact", last: int = 5) -> pd.DataFrame:
    """Reward against KL at the end of training: per run, columns of the ids, ``reward`` and ``kl``."""
    out = final_metrics(frame, last=last, metrics=[reward, kl])
    return out.rename(columns={reward: "reward", kl: "kl"})


def summarize(frame: pd.DataFrame, *, metrics: Sequence[str], by: Sequence[str] = ("arm", "beta"), last: int = 5) -> pd.DataFrame:
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
        out[metric_label(m).replace("$", "")] = [f"{a:.{digits}f} ± {b:.{digits}f}" for a, b in
                                zip(summary[f"{m}_mean"], summary[f"{m}_std"].fillna(0.0))]
    return out


def describe(p: Preset | str | None = None) -> pd.DataFrame:
    """The preset's settings as a two-column table (for the chapters)."""
    p = preset(p)
    return pd.DataFrame([(f.name, getattr(p, f.name)) for f in dataclasses.fields(p)], columns=["setting", "value"])
