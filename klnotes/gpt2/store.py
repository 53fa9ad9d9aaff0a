"""The results store of :doc:`chapters 7 </book/07_gpt2_gradients>` and
:doc:`8 </book/08_gpt2_training>`: where results live, what identifies a run, and when a
stored result can be trusted.

Results are tidy ``pandas`` frames (one row per run and training step) kept by a :class:`ResultsStore`
as one CSV per run under ``results/<preset>/`` (smoke runs go to a cache folder instead, so CI leaves
the repository clean). A run is named by a :class:`RunSpec` (its key is the file name); every stored
row carries the policy it was trained from (:func:`policy_id`) and a hash of its trainer config
(:func:`config_id`; :func:`sweep_config_id` for :doc:`chapter 7 </book/07_gpt2_gradients>`'s
gradient sweeps), so that a stored
result made with another model or config is recognised as stale and never silently reused.
:func:`stored` reads a preset's results without training anything, each file checked as
:func:`klnotes.gpt2.experiments.run` checks it before reusing it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from klnotes.gpt2 import _runio, policies
from klnotes.gpt2._checks import MAX_SEED, is_int, is_number, is_seed
from klnotes.gpt2.policies import default_cache_dir
from klnotes.gpt2.presets import Preset, check_arms, preset
from klnotes.gpt2.trainconfig import METRICS

__all__ = [
    "shipped_results_dir",
    "default_results_dir",
    "runs_dir",
    "RunSpec",
    "ResultsStore",
    "results_store",
    "policy_id",
    "config_id",
    "sweep_config_id",
    "run_problem",
    "checked_run",
    "gradients_problem",
    "stored",
]

# The installed package's folder (klnotes/), which holds the shipped results (klnotes/results/).
_PACKAGE = Path(__file__).resolve().parents[1]


def _repo_root() -> Path | None:
    root = Path(__file__).resolve().parents[2]  # klnotes/gpt2/store.py -> the checkout
    return root if (root / "_toc.yml").is_file() else None


def shipped_results_dir(preset_name: str) -> Path | None:
    """The results that come with the book for ``preset_name``, whatever ``KLNOTES_RESULTS`` says:
    ``results/<preset>`` in a checkout, ``klnotes/results/<preset>`` in an installed package; ``None``
    when there are none. Chapters read them to check what the book's text says of a stored run.

    (:doc:`Chapters 7 </book/07_gpt2_gradients>` and :doc:`8 </book/08_gpt2_training>`.)
    """
    root = _repo_root()
    folder = (root / "results" if root is not None else _PACKAGE / "results") / preset_name
    return folder if folder.is_dir() else None


def default_results_dir(preset_name: str) -> Path:
    """Where the results of a preset live.

    :doc:`Chapters 7 </book/07_gpt2_gradients>` and :doc:`8 </book/08_gpt2_training>` read and write
    their stored runs there.

    ``$KLNOTES_RESULTS/<preset>`` if that variable is set; otherwise, in a checkout of the repository,
    ``results/<preset>`` (committed) for ``cpu``, ``gpu`` and ``full`` and ``.klnotes_cache/results/smoke``
    (ignored by git) for ``smoke``; outside a checkout (a pip-installed package), the results shipped
    with the package (``klnotes/results/<preset>``, read-only: runs trained there are written to
    ``<cache>/results/<preset>``, which is read first) when it has them, else ``<cache>/results/<preset>``
    (:func:`klnotes.gpt2.policies.default_cache_dir`); never the working directory.
    """
    env = os.environ.get("KLNOTES_RESULTS", "").strip()
    if env:
        return _runio.env_folder("KLNOTES_RESULTS", env) / preset_name
    root = _repo_root()
    if root is None:
        shipped = _PACKAGE / "results" / preset_name
        return shipped if shipped.is_dir() else default_cache_dir() / "results" / preset_name
    if preset_name == "smoke":
        return root / ".klnotes_cache" / "results" / preset_name
    return root / "results" / preset_name


@dataclass(frozen=True)
class RunSpec:
    """One training run: an arm at a beta, a seed and a number of updates per rollout batch.

    The runs of :doc:`chapter 8 </book/08_gpt2_training>`: the arms (``experiment="arms"``) and the off-policy ablation
    (``"offpolicy"``, the setting of :eq:`eq-6-naive` and :eq:`eq-6-correction`).
    """

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
        if not (is_number(self.beta) and self.beta >= 0):
            raise ValueError(f"RunSpec.beta must be a finite number >= 0, got {self.beta!r}")
        if not is_seed(self.seed):
            raise ValueError(f"RunSpec.seed must be an int in [0, {MAX_SEED}], got {self.seed!r}")
        if not (is_int(self.updates_per_batch) and self.updates_per_batch >= 1):
            raise ValueError(
                f"RunSpec.updates_per_batch must be an int >= 1, got {self.updates_per_batch!r}"
            )

    @property
    def key(self) -> str:
        """File-name key, e.g. ``arms/k2-loss_beta0.5_upb1_seed0``."""
        return f"{self.experiment}/{self.arm}_beta{self.beta:g}_upb{self.updates_per_batch}_seed{self.seed}"

    def train_config(self, p: Preset, *, steps: int | None = None):
        """The :class:`klnotes.gpt2.trainconfig.TrainConfig` of this run under preset ``p``
        (:meth:`klnotes.gpt2.presets.Preset.train_config`; ``steps`` default: the preset's)."""
        return p.train_config(
            self.arm,
            beta=self.beta,
            seed=self.seed,
            updates_per_batch=self.updates_per_batch,
            steps=steps,
        )

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

    It holds every stored run and gradient sweep of :doc:`chapters 7 </book/07_gpt2_gradients>` and
    :doc:`8 </book/08_gpt2_training>`.

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

    def read_path(self, key: str) -> Path:
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
        return self.read_path(key).is_file()

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
        path = self.read_path(key)
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


def results_store(p: Preset, store: ResultsStore | str | os.PathLike | None = None) -> ResultsStore:
    """The store of preset ``p``: ``store`` itself (a :class:`ResultsStore`), a store at the folder
    ``store``, or (``None``) the preset's default one at :func:`default_results_dir`; in a pip-installed
    package, one that reads the shipped results and writes new ones to the cache (never into the
    package).

    (:doc:`Chapters 7 </book/07_gpt2_gradients>` and :doc:`8 </book/08_gpt2_training>`.)
    """
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


def policy_id(p: Preset | str | None = None) -> str:
    """Identifier of the preset's initial policy: ``"gpt2"``, or the tiny model's cache folder name
    (``tiny-lm-<hash of its config>``), computed without loading or building anything.

    (:doc:`Chapters 7 </book/07_gpt2_gradients>` and :doc:`8 </book/08_gpt2_training>`.)

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


def runs_dir(p: Preset) -> Path:
    """Trainer checkpoints: ``$KLNOTES_RUNS`` if set, else ``runs/`` in a checkout, else ``<cache>/runs``.

    ``<base>/<preset>/<policy_id>``: a folder per run key holds the trainer's checkpoint while the
    run trains (:doc:`chapter 8 </book/08_gpt2_training>`).
    """
    env = os.environ.get("KLNOTES_RUNS", "").strip()
    if env:
        base = _runio.env_folder("KLNOTES_RUNS", env)
    else:
        root = _repo_root()
        base = (root / "runs") if root is not None else default_cache_dir() / "runs"
    return base / p.name / policy_id(p)


def config_id(config) -> str:
    r"""Short hash of a :class:`klnotes.gpt2.trainconfig.TrainConfig` (all fields but ``checkpoint_every``): the
    ``config_id`` column of a stored run, compared with the current preset's before a run is reused.

    The id is the first 12 hex digits of :math:`\mathrm{SHA256}(\mathrm{json}(\text{fields}))`, the fields
    as sorted JSON: it depends on their names and values only, not on where the class is defined
    (:doc:`chapter 8 </book/08_gpt2_training>`).
    """
    fields = {k: v for k, v in asdict(config).items() if k != "checkpoint_every"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def sweep_config_id(p: Preset | str | None = None, seed: int = 0) -> str:
    """Short hash of what :doc:`chapter 7 </book/07_gpt2_gradients>`'s gradient sweeps of preset
    ``p`` depend on: the ``grad_*`` fields and
    the :class:`klnotes.gpt2.trainconfig.TrainConfig` that moves the policy
    (:func:`klnotes.gpt2.experiments.moved_policy`), and ``seed``. The ``config_id`` column of the
    stored sweeps, checked before they are reused."""
    p = preset(p)
    fields = {
        name: getattr(p, name)
        for name in ("grad_length", "grad_alphas", "grad_samples", "grad_old_lag")
    }
    fields["move"] = config_id(p.train_config("none", beta=0.0, seed=seed, steps=p.grad_move_steps))
    fields["seed"] = int(seed)
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def run_problem(frame: pd.DataFrame, p: Preset, spec: RunSpec, config) -> str | None:
    """Why a stored run cannot be trusted (``None``: it can): stale policy or config, wrong identifying
    columns, a row count other than the configured steps, steps out of sequence, non-finite metrics.

    (:doc:`Chapter 8 </book/08_gpt2_training>`.)
    """

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
        metrics = [c for c in METRICS if c in frame.columns]
        _runio.validate_table(
            frame, columns=("step",), steps=config.steps, path="", fix="", finite=metrics
        )
    except ValueError as err:
        return str(err).removeprefix("'': ").removesuffix("; ")
    return None


def checked_run(
    store: ResultsStore, p: Preset, spec: RunSpec, config
) -> tuple[pd.DataFrame | None, str]:
    """``(frame, "")`` for a valid stored run of ``spec``; ``(None, why)`` otherwise (``why`` empty: none).

    (:doc:`Chapter 8 </book/08_gpt2_training>`.)
    """
    if not store.has(spec.key):
        return None, ""
    try:
        frame = store.load(spec.key)
        problem = run_problem(frame, p, spec, config)
    except ValueError as err:
        return None, str(err)
    return (frame, "") if problem is None else (None, problem)


def stored(
    p: Preset | str, prefix: str = "", *, store: ResultsStore | str | None = None
) -> pd.DataFrame:
    """Results of preset ``p`` already in its store (keys starting with ``prefix``), without training
    anything; an empty frame when there are none. The ``gpu`` chapters read the ``full`` preset this way.

    (:doc:`Chapters 7 </book/07_gpt2_gradients>` and :doc:`8 </book/08_gpt2_training>`.)

    Each file is checked as :func:`klnotes.gpt2.experiments.run` checks it (row count, steps, finite
    metrics, policy and config); one that fails is left out with a warning naming it."""
    p = preset(p)
    store = results_store(p, store)
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
    """:func:`run_problem` (training runs) or :func:`gradients_problem` (``gradients/`` sweeps) of a
    stored file, its run recognised from its identifying columns."""
    if key.startswith("gradients/"):
        seed = re.fullmatch(r"gradients/(?:on|off)policy_seed(\d+)", key)
        if seed is None:
            return f"not a gradient sweep key (gradients/onpolicy_seedN or gradients/offpolicy_seedN): {key!r}"
        return gradients_problem(frame, p, int(seed[1]))
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
    return run_problem(frame, p, spec, spec.train_config(p, steps=steps))


def gradients_problem(frame: pd.DataFrame, p: Preset, seed: int = 0) -> str | None:
    """Why a stored gradient sweep cannot be trusted (``None``: it can): the current policy and sweep
    config (:func:`sweep_config_id`) on every row, every alpha of the preset, the same implementations at
    each, finite KL values (a cosine may be NaN: "k1 as loss" has a zero gradient).

    (:doc:`Chapter 7 </book/07_gpt2_gradients>`: the sweeps of :eq:`eq-7-expected` against :eq:`eq-7-principled`.)
    """
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
