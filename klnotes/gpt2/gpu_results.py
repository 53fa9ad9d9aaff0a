"""GPU-scale results without the hub: a GPT-2-architecture model built and pretrained in the run itself.

No machine of this project reaches the Hugging Face hub, so the GPU runs cannot load pretrained GPT-2 124M.
They use instead a model that the run builds (``scripts/gpu_results.sh`` calls :func:`main`):

1. **Model** (:data:`GPU_MODEL`): GPT-2 124M's architecture (``GPT2LMHeadModel``, 12 blocks of width 768,
   12 heads, no dropout) on the package's synthetic language (:class:`klnotes.gpt2.policies.SyntheticLanguage`)
   at its largest size, 65 words (the ``cpu`` preset's has 16) plus ``<pad>`` and ``<eos>``: 85M parameters
   (GPT-2 124M's other 39M are its 50,257-token embedding). Pretrained by :func:`pretrain` on sentences
   sampled from the language (an unlimited corpus, identical on every machine: nothing to download), under
   bfloat16 autocast on a GPU; the held-out cross-entropy is compared with the language's own
   (:func:`language_nll`, the floor any model can reach). The folder it saves is a ``save_pretrained``
   folder with :data:`klnotes.gpt2.tasks.TASK_FILE`, so ``KLNOTES_POLICY=<folder>`` runs the ``gpu`` scale's code
   path on it with its own verifiable reward (:func:`klnotes.gpt2.tasks.synthetic_task`: occurrences of a word the
   language says rarely but not never).
2. **Measure**: 20 RL steps of the ``full`` preset (``k2-loss`` at the main beta) through
   :func:`klnotes.gpt2.experiments.run`: seconds per step, peak GPU memory, tokens per second.
3. **Plan** (:func:`plan`): the largest part of the experiment set that fits the time left, in priority
   order: the five arms at beta = 0.5 with two seeds; the off-policy ablation (each "as loss" arm with and
   without the importance-sampling correction, 4 updates per batch); the arms at the smaller beta; then
   more seeds. All runs of a plan have the same number of steps (at most the preset's).
4. **Run** (:func:`execute`): each planned run through :func:`klnotes.gpt2.experiments.run` into a
   :class:`klnotes.gpt2.store.ResultsStore` (``results/full/``), skipping a run that no longer fits the
   deadline; per run, its wall time, seconds per step, peak memory and tokens per second.

Everything is a parameter (``--toy`` shrinks every stage so that the whole pipeline runs on a CPU in
about a minute: ``tests/test_gpu_results.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import statistics
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from klnotes.gpt2 import devices, experiments, policies, tasks
from klnotes.gpt2.policies import TinyLMConfig
from klnotes.gpt2.store import RunSpec

__all__ = [
    "GPU_MODEL",
    "TOY_MODEL",
    "TOY_PRESET",
    "model_folder",
    "language_nll",
    "pretrain",
    "Stage",
    "plan",
    "measure",
    "execute",
    "main",
]

#: GPT-2 124M's architecture on the 65-word synthetic language (85M parameters), pretrained for
#: ``pretrain_steps`` AdamW steps of ``batch_size`` sentences (about 5,600 tokens a step).
#: Its other fields are :class:`~klnotes.gpt2.policies.TinyLMConfig`'s defaults (64 positions, seed 0).
GPU_MODEL = TinyLMConfig(
    n_words=65, n_layer=12, n_embd=768, n_head=12, pretrain_steps=1500, batch_size=512, lr=3e-4
)
#: The same pipeline at a size a CPU runs in seconds (``--toy``).
TOY_MODEL = dataclasses.replace(
    GPU_MODEL, n_layer=1, n_embd=32, n_head=2, pretrain_steps=150, batch_size=64, lr=1e-2
)
#: ``full`` preset fields replaced in ``--toy`` runs.
TOY_PRESET = dict(
    steps=4, group_size=4, prompts_per_step=2, max_new_tokens=6, lr=1e-2, ablation_steps=4
)
_WARMUP = 0.05  # share of pretraining steps with a linearly rising learning rate


def model_folder(config: TinyLMConfig, root: str | os.PathLike) -> Path:
    """``<root>/gpt2-arch-synthetic<n_words>-<hash of config>``: where :func:`pretrain` saves ``config``'s model
    (the name is the stored runs' ``policy`` column: ``local-<folder name>``).

    (The ``full`` results of :doc:`chapters 7 </book/07_gpt2_gradients>` and :doc:`8 </book/08_gpt2_training>`.)
    """
    return Path(root) / f"gpt2-arch-synthetic{config.n_words}-{config.key()}"


def _batch(
    language, config: TinyLMConfig, n: int, generator: torch.Generator, eos_id: int, pad_id: int
):
    """``(ids [n, W], labels [n, W], words, lengths)``: ``n`` sentences as token ids (word ``i`` -> ``i + 2``)
    ending in ``<eos>``, right-padded to the longest; labels -100 on padding (as ``policies._pretrain``)."""
    max_words = min(config.n_positions - 1, 4 * round(1 / config.end_prob))
    words, lengths = language.sample_words(n, generator, max_words=max_words)
    width = int(lengths.max()) + 1
    ids = torch.cat([words[:, :width] + 2, torch.zeros(n, 1, dtype=torch.long)], dim=1)[:, :width]
    ids[torch.arange(n), lengths] = eos_id
    ids = ids.masked_fill(torch.arange(width).expand_as(ids) > lengths[:, None], pad_id)
    return ids, ids.masked_fill(ids == pad_id, -100), words, lengths


def language_nll(language, words: torch.Tensor, lengths: torch.Tensor, *, max_words: int) -> float:
    r"""Mean negative log-likelihood (nats per predicted token) of sentences under the language itself.

    :math:`-\frac{1}{T}\sum_{\text{sentences}}\sum_t \log p(w_t\mid w_{t-1})` over the :math:`T` predicted
    tokens, with the language's own transition probabilities :math:`p` (the floor of the pretraining
    loss; :doc:`chapter 8 </book/08_gpt2_training>`'s synthetic language).

    The tokens a causal LM predicts in ``w_1 ... w_L <eos>`` are ``w_2 ... w_L`` and ``<eos>``:
    ``-log p(w_{t+1} | w_t) = -log((1 - e) T[w_t, w_{t+1}])`` and ``-log p(<eos>) = -log e`` (``e`` = ``end_prob``;
    ``<eos>`` is certain at ``max_words``). ``words [n, max_words]``, ``lengths [n]`` as
    :meth:`klnotes.gpt2.policies.SyntheticLanguage.sample_words` returns them. This is the floor of a model's
    cross-entropy on the same tokens (the gap is its KL from the language, per token).
    """
    e = float(language.end_prob)
    total, count = 0.0, 0
    for row, k in zip(words.tolist(), lengths.tolist()):
        for t in range(1, k):
            total -= math.log((1 - e) * float(language.transition[row[t - 1], row[t]]))
        total -= 0.0 if k == max_words else math.log(e)
        count += k
    return total / max(count, 1)


def _model_nll(model, ids: torch.Tensor, labels: torch.Tensor, device) -> float:
    with torch.no_grad():
        out = model(
            input_ids=ids.to(device),
            attention_mask=(labels != -100).long().to(device),
            labels=labels.to(device),
        )
    return float(out.loss)


def pretrain(
    config: TinyLMConfig,
    root: str | os.PathLike,
    *,
    device=None,
    max_seconds: float | None = None,
    progress: bool = True,
) -> dict:
    """Build ``config``'s GPT-2 and pretrain it on its synthetic language on ``device``; save it; return a record.

    (The ``full`` results of :doc:`chapters 7 </book/07_gpt2_gradients>` and :doc:`8 </book/08_gpt2_training>`.)

    AdamW (``config.lr``, no weight decay, the learning rate rising linearly over the first 5% of steps),
    ``config.pretrain_steps`` steps of ``config.batch_size`` sampled sentences (next-token cross-entropy,
    ``<eos>`` included, padding ignored), under :func:`klnotes.gpt2.devices.autocast` ``(training=True)``
    (bfloat16 on Ampere and later GPUs). ``max_seconds`` stops earlier (the record says how many steps ran).
    Saved to :func:`model_folder` in float32 with its tokenizer, the task file (:data:`klnotes.gpt2.tasks.TASK_FILE`)
    and ``klnotes_pretrain.json`` (the record). A folder already holding the record is reused as it is.

    The record: ``parameters``, ``steps`` run, ``tokens`` seen, ``seconds``, held-out ``loss_before`` and
    ``loss_after`` (nats per token, 2,048 fresh sentences) and ``language_nll`` on the same sentences (the floor).
    """
    if not isinstance(config, TinyLMConfig):
        raise TypeError(
            f"config must be a klnotes.gpt2.policies.TinyLMConfig, got {type(config).__name__}"
        )
    if max_seconds is not None and not (isinstance(max_seconds, (int, float)) and max_seconds > 0):
        raise ValueError(f"max_seconds must be a number > 0 or None, got {max_seconds!r}")
    folder = model_folder(config, root)
    record_file = folder / "klnotes_pretrain.json"
    if record_file.is_file():
        return json.loads(record_file.read_text())
    device = torch.device(device) if device is not None else torch.device("cpu")
    devices.configure(device)
    language = policies.synthetic_language(config)
    model, tokenizer = policies.untrained_gpt2(config, language)
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    max_words = min(config.n_positions - 1, 4 * round(1 / config.end_prob))
    held_out = _batch(
        language, config, 2048, torch.Generator().manual_seed(config.seed + 2), eos_id, pad_id
    )
    floor = language_nll(language, held_out[2], held_out[3], max_words=max_words)
    model.eval()
    before = _model_nll(model, held_out[0], held_out[1], device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=0.0, fused=device.type == "cuda"
    )
    warmup = max(1, int(_WARMUP * config.pretrain_steps))
    gen = torch.Generator().manual_seed(config.seed + 1)
    model.train()
    began, steps, tokens = time.perf_counter(), 0, 0
    for step in range(config.pretrain_steps):
        if max_seconds is not None and time.perf_counter() - began > max_seconds:
            break
        for group in optimizer.param_groups:
            group["lr"] = config.lr * min(1.0, (step + 1) / warmup)
        ids, labels, _, _ = _batch(language, config, config.batch_size, gen, eos_id, pad_id)
        ids, labels = ids.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with devices.autocast(device, training=True):
            loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        steps, tokens = step + 1, tokens + int((labels != -100).sum())
        if progress and (step % 250 == 0 or step + 1 == config.pretrain_steps):
            print(
                f"pretrain step {step + 1}/{config.pretrain_steps}: loss {loss.item():.4f} "
                f"({time.perf_counter() - began:.0f} s)",
                flush=True,
            )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - began
    model.eval()
    after = _model_nll(model, held_out[0], held_out[1], device)
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise ValueError(f"pretraining diverged (non-finite weights) with {config!r}; lower lr")
    record = dict(
        model="GPT2LMHeadModel",
        n_layer=config.n_layer,
        n_embd=config.n_embd,
        n_head=config.n_head,
        vocab_size=model.config.vocab_size,
        n_positions=config.n_positions,
        parameters=n_params,
        language=dict(
            n_words=config.n_words,
            concentration=config.concentration,
            end_prob=config.end_prob,
            seed=config.seed,
        ),
        steps=steps,
        planned_steps=config.pretrain_steps,
        batch_size=config.batch_size,
        lr=config.lr,
        tokens=tokens,
        seconds=round(seconds, 3),
        device=str(device),
        loss_before=before,
        loss_after=after,
        language_nll=floor,
        folder=folder.name,
    )
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.to("cpu").to(torch.float32).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / tasks.TASK_FILE).write_text(
        json.dumps({"task": "synthetic", "language": dataclasses.asdict(config)}, indent=1)
    )
    (tmp / "klnotes_pretrain.json").write_text(json.dumps(record, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return record


# --- sizing ---------------------------------------------------------------------------------------


# The off-policy ablation's arms: each "as loss" arm with and without the IS correction.
_OFF_ARMS = ("k2-loss", "k2-loss-is", "k3-loss", "k3-loss-is")


@dataclass(frozen=True)
class Stage:
    """A group of runs of one experiment: every ``arm`` x ``beta`` x ``seed`` at ``updates`` updates per batch,
    ``steps`` steps each (``experiment``: ``"arms"`` or ``"offpolicy"``, the :class:`klnotes.gpt2.store.RunSpec`
    experiment). ``cost`` multiplies the measured seconds per step (several updates per batch cost more).

    (The ``full`` results of :doc:`chapter 8 </book/08_gpt2_training>`.)
    """

    name: str
    experiment: str
    arms: tuple[str, ...]
    betas: tuple[float, ...]
    seeds: tuple[int, ...]
    updates: int
    steps: int
    cost: float = 1.0

    @property
    def runs(self) -> int:
        return len(self.arms) * len(self.betas) * len(self.seeds)

    def seconds(self, per_step: float) -> float:
        """Estimated seconds of the stage at ``per_step`` seconds per (one-update) step."""
        return self.runs * self.steps * per_step * self.cost

    def specs(self):
        """The stage's :class:`klnotes.gpt2.store.RunSpec` s, seed-major (a cut-off stage keeps whole seeds)."""
        return [
            RunSpec(self.experiment, arm, float(beta), int(seed), int(self.updates))
            for seed in self.seeds
            for beta in self.betas
            for arm in self.arms
        ]


def _candidates(p, steps: int) -> list[Stage]:
    """Every stage of the experiment set in priority order, at ``steps`` steps per run."""
    main_beta, small = p.betas[0], list(p.betas[1:])
    seeds, u = tuple(p.seeds), max(p.ablation_updates)
    cost = 1.0 + 0.1 * (u - 1)  # more optimizer steps and smaller minibatches per generated batch

    def arms(beta: float, chosen: tuple, name: str = "") -> Stage:
        name = name or "arms beta=%g, seed %d" % (beta, chosen[0])
        return Stage(name, "arms", tuple(p.arms), (beta,), chosen, 1, steps)

    def offpolicy(chosen: tuple) -> Stage:
        name = "off-policy ablation, %d updates, seed %d" % (u, chosen[0])
        return Stage(name, "offpolicy", _OFF_ARMS, (main_beta,), chosen, u, steps, cost)

    out = [arms(main_beta, seeds[:2], "arms beta=%g, 2 seeds" % main_beta), offpolicy(seeds[:1])]
    out += [arms(b, seeds[:1]) for b in small]
    # the main beta's second seed: already in the first stage unless it had to drop to one seed
    out += [arms(main_beta, (s,)) for s in seeds[1:2]]
    out += [offpolicy((s,)) for s in seeds[1:2]]
    out += [arms(b, (s,)) for b in small for s in seeds[1:2]]
    out += [arms(main_beta, (s,)) for s in seeds[2:]]
    return out


def plan(p, per_step: float, budget: float, *, min_steps: int = 50, cover: int = 3) -> list[Stage]:
    """The largest part of preset ``p``'s experiment set that fits ``budget`` seconds at ``per_step`` seconds
    per step (wall time of a one-update step, run overheads included).

    (The ``full`` results of :doc:`chapters 7 </book/07_gpt2_gradients>` and :doc:`8 </book/08_gpt2_training>`.)

    Every run gets the same number of steps: the most (up to the preset's ``steps``) with which the first
    ``cover`` stages of :func:`_candidates` fit (the five arms x two seeds at the main beta; the off-policy
    ablation; the arms at the smaller beta), provided that is at least ``min_steps``; else with fewer of those
    stages, down to the first alone, and then the first with one seed. Later stages are added in priority
    order while they fit what is left (one that does not fit is skipped; cheaper ones are still tried).
    Returns ``[]`` when not even the five arms with one seed fit ``min_steps`` steps (or the preset's steps).
    """
    if not (per_step > 0 and math.isfinite(per_step)):
        raise ValueError(f"per_step must be a finite number of seconds > 0, got {per_step!r}")
    if not (budget >= 0 and math.isfinite(budget)):
        raise ValueError(f"budget must be a finite number of seconds >= 0, got {budget!r}")
    for name, value in (("min_steps", min_steps), ("cover", cover)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    need = min(min_steps, p.steps)
    candidates = _unique(_candidates(p, 1))
    first = candidates[0]
    one_seed = dataclasses.replace(
        first, name=first.name.replace("2 seeds", f"seed {p.seeds[0]}"), seeds=tuple(p.seeds[:1])
    )
    for head in [candidates[:k] for k in range(min(cover, len(candidates)), 0, -1)] + [[one_seed]]:
        steps = min(p.steps, int(budget / (sum(s.runs * s.cost for s in head) * per_step)))
        if steps >= need:
            break
    else:
        return []
    stages = [dataclasses.replace(s, steps=steps) for s in head]
    left = budget - sum(s.seconds(per_step) for s in stages)
    for stage in _unique(_candidates(p, steps)):
        planned = {spec for s in stages for spec in s.specs()}
        if set(stage.specs()) <= planned:
            continue
        if stage.seconds(per_step) <= left:
            stages.append(stage)
            left -= stage.seconds(per_step)
    return stages


def _unique(stages: list[Stage]) -> list[Stage]:
    """``stages`` without those whose runs all belong to earlier ones."""
    out, seen = [], set()
    for stage in stages:
        specs = set(stage.specs())
        if not specs <= seen:
            out.append(stage)
            seen |= specs
    return out


# --- measuring and running ------------------------------------------------------------------------


def _reset_peak(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device) -> float:
    if torch.device(device).type != "cuda":
        return float("nan")
    return torch.cuda.max_memory_allocated(device) / 2**30


def _timing(frame, spec, p, wall: float, device, steps: int) -> dict:
    """One row of ``timings.csv``: a run's wall time, median seconds per step (the first dropped), peak GPU
    memory and sampled tokens per second (completion tokens generated per second of step time)."""
    seconds = frame["seconds"].tolist()
    tokens = (frame["response_length"] * p.prompts_per_step * p.group_size).sum()
    return dict(
        key=spec.key,
        steps=steps,
        wall_seconds=round(wall, 3),
        seconds_per_step=statistics.median(seconds[1:] if len(seconds) > 1 else seconds),
        peak_gpu_gib=_peak_gib(device),
        tokens_per_second=float(tokens / max(sum(seconds), 1e-9)),
        reward_first=float(frame["reward"].iloc[0]),
        reward_last=float(frame["reward"].iloc[-1]),
        kl_last=float(frame["kl_seq_exact"].iloc[-1]),
    )


def measure(p, store, *, device=None, steps: int = 20, arm: str = "k2-loss") -> dict:
    """Time ``steps`` RL steps of preset ``p`` (``arm`` at the main beta, seed 0, one update per batch) through
    :func:`klnotes.gpt2.experiments.run` (stored under ``measure/``). Returns :func:`_timing`'s row plus
    ``wall_per_step`` (the run's wall time per step: loading, checkpoints and storing included, the figure
    :func:`plan` is given).

    (The ``full`` results of :doc:`chapter 8 </book/08_gpt2_training>`.)
    """
    spec = experiments.RunSpec("measure", arm, float(p.beta), 0)
    experiments.reference_policy(
        p, device=device
    )  # load the model first: its one-time cost is not per step
    _reset_peak(device)
    began = time.perf_counter()
    frame = experiments.run(
        p, spec, store=store, steps=steps, device=device, progress=False, resume=False
    )
    wall = time.perf_counter() - began
    row = _timing(frame, spec, p, wall, device, steps)
    row["wall_per_step"] = wall / steps
    return row


def execute(
    p,
    stages: Sequence[Stage],
    store,
    *,
    device=None,
    deadline: float | None = None,
    per_step: float | None = None,
    log=print,
) -> list[dict]:
    """Run every run of ``stages`` through :func:`klnotes.gpt2.experiments.run` (resumable: stored runs are loaded).

    (The ``full`` results of :doc:`chapters 7 </book/07_gpt2_gradients>` and :doc:`8 </book/08_gpt2_training>`.)

    With ``deadline`` (a ``time.perf_counter()`` value) and ``per_step``, a run whose estimate does not fit the
    time left is skipped (its row says so). Returns one :func:`_timing` row per run (``stage``, ``skipped``).
    """
    rows = []
    for stage in stages:
        q = dataclasses.replace(p, steps=stage.steps)
        for spec in stage.specs():
            estimate = stage.steps * (per_step or 0.0) * stage.cost
            if deadline is not None and time.perf_counter() + estimate > deadline:
                rows.append(dict(key=spec.key, stage=stage.name, skipped=True))
                log(
                    f"skipped {spec.key}: about {estimate:.0f} s, {deadline - time.perf_counter():.0f} s left"
                )
                continue
            _reset_peak(device)
            began = time.perf_counter()
            frame = experiments.run(
                q, spec, store=store, steps=stage.steps, device=device, progress=False
            )
            row = _timing(frame, spec, q, time.perf_counter() - began, device, stage.steps)
            rows.append(dict(row, stage=stage.name, skipped=False))
            log(
                f"{spec.key}: {row['wall_seconds']:.1f} s, {row['seconds_per_step']:.3f} s/step, reward "
                f"{row['reward_first']:.3f} -> {row['reward_last']:.3f}, KL {row['kl_last']:.3f}"
            )
    return rows


# --- the command ----------------------------------------------------------------------------------


def _pack(results: Path, out: Path) -> None:
    """``out/results.tar.gz``: the results folder in one file (the device tool returns few, shallow files)."""
    tmp = out / "results.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(
            results, arcname="results", filter=lambda info: None if "/.locks" in info.name else info
        )
    os.replace(tmp, out / "results.tar.gz")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m klnotes.gpt2.gpu_results``: pretrain, measure, plan, run; see the module docstring and
    ``--help``. Writes under ``--out``: ``model.json`` (the pretraining record), ``measure.json``,
    ``plan.json``, ``timings.csv`` (one row per run), ``summary.json`` and ``results.tar.gz``
    (``results/full/...``, the :class:`klnotes.gpt2.store.ResultsStore` folders).

    (The ``full`` results of :doc:`chapters 7 </book/07_gpt2_gradients>` and :doc:`8 </book/08_gpt2_training>`.)
    """
    parser = argparse.ArgumentParser(
        prog="python -m klnotes.gpt2.gpu_results", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--out", default="gpu_results_out", help="output folder (default: %(default)s)"
    )
    parser.add_argument(
        "--work", default=None, help="model and results folder (default: <out>/work)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--budget",
        type=float,
        default=420.0,
        help="seconds for everything from the start of this command (default: %(default)s)",
    )
    parser.add_argument(
        "--toy", action="store_true", help="tiny model and preset: the whole pipeline on a CPU"
    )
    parser.add_argument(
        "--layers", type=int, default=None, help="transformer blocks (default 12: GPT-2 124M)"
    )
    parser.add_argument(
        "--width", type=int, default=None, help="model width (default 768), heads = width / 64"
    )
    parser.add_argument("--pretrain-steps", type=int, default=None)
    parser.add_argument(
        "--pretrain-seconds", type=float, default=None, help="stop pretraining after this long"
    )
    parser.add_argument(
        "--lr", type=float, default=None, help="RL learning rate (default: the full preset's)"
    )
    parser.add_argument("--measure-steps", type=int, default=20)
    parser.add_argument(
        "--min-steps",
        type=int,
        default=50,
        help="fewest steps per planned run (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    deadline = start + args.budget
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work).resolve() if args.work else out / "work"
    work.mkdir(parents=True, exist_ok=True)

    config = TOY_MODEL if args.toy else GPU_MODEL
    changes = {}
    if args.layers is not None:
        changes["n_layer"] = args.layers
    if args.width is not None:
        changes.update(n_embd=args.width, n_head=max(1, args.width // 64))
    if args.pretrain_steps is not None:
        changes["pretrain_steps"] = args.pretrain_steps
    config = dataclasses.replace(config, **changes)
    print(
        f"[{time.perf_counter() - start:.0f} s] pretraining {config} on {args.device}", flush=True
    )
    record = pretrain(
        config, work / "models", device=args.device, max_seconds=args.pretrain_seconds
    )
    (out / "model.json").write_text(json.dumps(record, indent=1))
    print(
        f"[{time.perf_counter() - start:.0f} s] model: {record['parameters'] / 1e6:.1f}M parameters, "
        f"{record['steps']} steps, {record['tokens']:,} tokens in {record['seconds']:.0f} s; held-out loss "
        f"{record['loss_before']:.3f} -> {record['loss_after']:.3f} nats/token (language: "
        f"{record['language_nll']:.3f})",
        flush=True,
    )

    os.environ["KLNOTES_POLICY"] = str(model_folder(config, work / "models"))
    os.environ.setdefault("KLNOTES_RUNS", str(work / "runs"))
    p = experiments.preset("full")
    p = dataclasses.replace(
        p, **(TOY_PRESET if args.toy else {}), **({"lr": args.lr} if args.lr else {})
    )
    store = experiments.ResultsStore(work / "results" / p.name)
    m = measure(p, store, device=args.device, steps=args.measure_steps)
    (out / "measure.json").write_text(json.dumps(m, indent=1))
    print(
        f"[{time.perf_counter() - start:.0f} s] measured {args.measure_steps} steps: {m['seconds_per_step']:.3f} "
        f"s/step (median), {m['wall_per_step']:.3f} s/step wall, peak GPU {m['peak_gpu_gib']:.2f} GiB, "
        f"{m['tokens_per_second']:,.0f} tokens/s; reward {m['reward_first']:.3f} -> {m['reward_last']:.3f}",
        flush=True,
    )

    left = deadline - time.perf_counter()
    stages = plan(p, m["wall_per_step"], max(left, 0.0), min_steps=min(args.min_steps, p.steps))
    (out / "plan.json").write_text(
        json.dumps(
            dict(
                per_step=m["wall_per_step"],
                budget=left,
                stages=[
                    dict(
                        dataclasses.asdict(s),
                        runs=s.runs,
                        estimate_seconds=s.seconds(m["wall_per_step"]),
                    )
                    for s in stages
                ],
            ),
            indent=1,
        )
    )
    for s in stages:
        print(
            f"  plan: {s.name}: {s.runs} runs x {s.steps} steps, about {s.seconds(m['wall_per_step']):.0f} s",
            flush=True,
        )
    rows = []

    def log(text):
        print(f"[{time.perf_counter() - start:.0f} s] {text}", flush=True)

    for stage in stages:
        rows += execute(
            p,
            [stage],
            store,
            device=args.device,
            deadline=deadline,
            per_step=m["wall_per_step"],
            log=log,
        )
        _pack(
            work / "results", out
        )  # after every stage: a run cut off by the time limit keeps what is done
    if (
        stages
    ):  # time left (the plan's estimate was high): later stages at the same steps, re-estimated
        done = [r for r in rows if not r.get("skipped")]
        per_step = (
            statistics.median(r["wall_seconds"] / r["steps"] for r in done)
            if done
            else m["wall_per_step"]
        )
        planned = {spec for s in stages for spec in s.specs()}
        for stage in _unique(_candidates(p, stages[0].steps)):
            if (
                set(stage.specs()) <= planned
                or time.perf_counter() + stage.seconds(per_step) > deadline
            ):
                continue
            log(f"time left: also {stage.name} ({stage.runs} runs x {stage.steps} steps)")
            stages.append(stage)
            planned |= set(stage.specs())
            rows += execute(
                p, [stage], store, device=args.device, deadline=deadline, per_step=per_step, log=log
            )
            _pack(work / "results", out)
    pd.DataFrame(rows).to_csv(out / "timings.csv", index=False)
    _pack(work / "results", out)
    done = [r for r in rows if not r.get("skipped")]
    summary = dict(
        seconds=round(time.perf_counter() - start, 1),
        device=args.device,
        gpu=torch.cuda.get_device_name(args.device)
        if torch.device(args.device).type == "cuda"
        else None,
        model=record,
        measure=m,
        preset={k: v for k, v in dataclasses.asdict(p).items()},
        stages=[s.name for s in stages],
        runs_done=len(done),
        runs_skipped=len(rows) - len(done),
        rl_steps=sum(r["steps"] for r in done) + args.measure_steps,
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(
        f"[{summary['seconds']:.0f} s] done: {len(done)} runs, {summary['rl_steps']} RL steps; "
        f"{len(rows) - len(done)} skipped; outputs in {out}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
