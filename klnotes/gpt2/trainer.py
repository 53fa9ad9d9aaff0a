r"""One GRPO/PPO-style policy-gradient trainer whose KL term is a parameter.

Each step (book :doc:`chapter 8 </book/08_gpt2_training>`):

1. **Rollout** (:func:`rollout`): pick ``prompts_per_step`` prompts, sample ``group_size``
   completions of each from ``pi_old`` (the current policy, KV cache, temperature ``tau``), score them
   with the task's reward; one no-grad forward pass of the reference gives ``log pi_ref`` and, with
   the policy's distributions kept from sampling, the exact per-position KL over the whole vocabulary.
2. **Advantages**: group-normalised, ``A_i = (r_i - mean_group r) / (std_group r + 1e-4)`` (GRPO).
3. **Updates**: the batch is split into ``updates_per_batch`` minibatches, one optimizer step each,
   so that from the second on ``pi_theta != pi_old`` (off-policy). The loss of a minibatch is

       L = reduce_t( -min(rho_t A, clip(rho_t, 1-eps, 1+eps) A) ) + KL head      rho_t = pi_theta/pi_old

   with the KL head :func:`kl_loss` of the arm (:data:`ARMS`; each arm is a
   :class:`~klnotes.core.variants.KLVariant`, :data:`ARM_VARIANTS`, whose per-token terms are
   :func:`klnotes.core.surrogates.variant_terms`: the trainer has no formula of its own):

   - ``none``: no KL term;
   - ``k1-loss``, ``k2-loss``, ``k3-loss``: ``beta * reduce_t k_n(u_t)``, differentiated, *no* ratio (the
     common "as loss" implementation; biased off-policy);
   - ``k1-reward``: PPO's per-token penalty in the reward with reward-to-go, coefficient
     ``c_t = sum_{s>=t} (log pi_old - log pi_ref)(y_s)`` fixed at rollout (it is part of the reward),
     through the ratio and clipping: ``-min(rho_t A_t, clip(rho_t) A_t)``, ``A_t = -beta c_t``;
   - ``k2-loss-is``, ``k3-loss-is``: the paper's off-policy correction (:eq:`eq-6-correction`,
     clipped as :eq:`eq-6-clip`): the "as loss" coefficient ``c_t = d k_n / d u`` at the
     current policy, detached, times ``rho_t``, clipped.

   ``u_t = log pi_theta(y_t|s_t) - log pi_ref(y_t|s_t)``; ``reduce_t`` is the named reduction of
   :func:`klnotes.core.surrogates.reduce` (default ``"token-mean"``, as TRL's ``dapo`` loss).

4. **Metrics** (:data:`METRICS`), of the rollout batch, i.e. of ``pi_old``:
   ``kl_token_exact`` (mean over response tokens of ``KL(pi_old(.|s_t) || pi_ref(.|s_t))`` summed over
   the vocabulary), ``kl_seq_exact`` (mean over completions of the sum of those per-position KLs: by the
   chain rule an unbiased estimate of the sequence KL with no sampling noise within a position),
   ``kl_seq_estimate`` (mean of the sampled sequence log-ratio ``sum_t u_t``, the k1 Monte Carlo
   estimate), ``logprob_diff`` (mean ``u_t`` over tokens: the paper's "Logprob Diff"), ``entropy``,
   ``response_length``, ``frac_abs_log_ratio_gt_1`` (fraction of tokens with ``|u_t| > 1``; reviewer 4),
   ``reward``, and of the updates: ``loss``, ``kl_loss``, ``clip_frac``; ``seconds`` per step.

Cost per step (the benchmark ``benchmarks/bench_trainer.py`` compares it with a floor of sampling plus
one forward/backward per minibatch): sampling runs in inference mode; one reference forward pass;
per minibatch one forward pass, one loss with both heads sharing ``rho_t`` (no input validation on
the rollout's own tensors), one backward pass, gradient clipping and a fused AdamW step; the metrics
stay on the device until one host sync per rollout and one per step of updates.

Everything random is drawn from one ``torch.Generator`` seeded with ``config.seed`` (models run in
``eval()`` mode: no dropout), so a run is a deterministic function of its config on a given machine,
and :func:`train` resumes from a checkpoint to exactly the uninterrupted result.

The pieces of a step live beside this module, each its own concern: the arms, the metrics and
:class:`~klnotes.gpt2.trainconfig.TrainConfig` (:mod:`klnotes.gpt2.trainconfig`), the losses
(:mod:`klnotes.gpt2.losses`), sampling and the rollout batch (:mod:`klnotes.gpt2.rollout`), and
checkpoints (:mod:`klnotes.gpt2.checkpoint`); this module holds the loop, and its public names are
importable from here too (the paths the chapters and scripts use).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pandas as pd
import torch

from klnotes._progress import progress_bar
from klnotes.gpt2 import _runio, devices
from klnotes.gpt2 import checkpoint as _checkpoint
from klnotes.gpt2.checkpoint import CHECKPOINT, CONFIG_FILE, LOCK_FILE, METRICS_FILE
from klnotes.gpt2.checkpoint import config_dict as _config_dict
from klnotes.gpt2.checkpoint import weights_finite as _weights_finite
from klnotes.gpt2.losses import group_advantages, kl_loss, minibatch_loss, policy_loss
from klnotes.gpt2.policies import Policy
from klnotes.gpt2.rollout import (
    Batch,
    cache_keyword,
    completion_logits,
    logprobs_of,
    rollout,
    sample,
    token_logprobs,
)
from klnotes.gpt2.tasks import Task
from klnotes.gpt2.trainconfig import ARM_LABELS, ARM_VARIANTS, ARMS, METRICS, TrainConfig

__all__ = [
    "ARMS",
    "ARM_VARIANTS",
    "ARM_LABELS",
    "METRICS",
    "TrainConfig",
    "Batch",
    "kl_loss",
    "policy_loss",
    "group_advantages",
    "completion_logits",
    "cache_keyword",
    "token_logprobs",
    "sample",
    "rollout",
    "train_step",
    "train",
    "load_metrics",
    "TrainingDiverged",
    "CHECKPOINT",
    "METRICS_FILE",
]


def _make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """AdamW (no weight decay) on the trainable parameters: the fused kernel where the device supports it
    (one kernel for all parameters instead of a Python loop over them), else the default implementation."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


class TrainingDiverged(RuntimeError):
    """Training produced a non-finite loss, gradient norm, weights or rollout (raised by :func:`train`,
    which names the step, the arm and the last good checkpoint; the weights are left as they were before
    the offending optimizer step, and no checkpoint with non-finite weights is written).

    (:doc:`Chapter 8 </book/08_gpt2_training>`.)
    """


def _check_update(loss: torch.Tensor, norm: torch.Tensor, minibatch: int) -> None:
    """Raise :class:`TrainingDiverged` unless ``loss`` and the gradient norm are finite (one host sync)."""
    values = torch.stack([loss.detach().float(), norm.detach().float().to(loss.device)])
    if not bool(torch.isfinite(values).all()):
        loss_value, norm_value = values.tolist()
        raise TrainingDiverged(
            f"minibatch {minibatch}: loss = {loss_value}, gradient norm = {norm_value}"
        )


def _grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """Total 2-norm of the gradients (``torch.nn.utils.get_total_norm`` where it exists: torch >= 2.6)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(grads, foreach=True)
    return torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
    )


def train_step(
    policy: Policy,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    *,
    generator: torch.Generator,
) -> dict[str, float]:
    """The ``updates_per_batch`` minibatch updates on one rollout. Returns mean ``loss``, ``kl_loss``, ``clip_frac``.

    Each update descends :func:`klnotes.gpt2.losses.minibatch_loss`: PPO's head :eq:`eq-1-ppo` plus the
    arm's KL head (:eq:`eq-3-as-loss`, :eq:`eq-3-in-reward` or :eq:`eq-6-clip`);
    :doc:`chapter 8 </book/08_gpt2_training>`, step 3.

    Each update: one forward pass of the minibatch (:func:`token_logprobs`), the loss
    ``policy_loss + kl_loss``, one backward pass, gradient-norm clipping, a check that the loss and the
    gradient norm are finite (one host sync), one optimizer step; the metrics stay on the device until
    one host sync at the end.

    Raises:
        TrainingDiverged: a non-finite loss or gradient norm (before the optimizer step that would use it).
    """
    model = policy.model
    order = torch.randperm(
        config.batch_size,
        generator=torch.Generator().manual_seed(
            int(torch.randint(2**31 - 1, (1,), generator=generator, device=generator.device))
        ),
    )
    params = list(model.parameters())
    totals = []
    for index in order.chunk(config.updates_per_batch):
        mb = batch.select(index)
        with devices.autocast(
            policy.device, training=True
        ):  # bfloat16 on Ampere+; float32 on a T4 and the CPU
            logits = completion_logits(model, mb.prompt_ids, mb.prompt_mask, mb.completion_ids)
        logp = logprobs_of(
            logits, mb.completion_ids, config.temperature
        )  # float32 outside autocast
        try:
            loss, kl, clip_frac = minibatch_loss(logp, mb, config)
        except ValueError as err:  # the estimators reject non-finite log-probabilities
            if "non-finite" not in str(err):
                raise
            raise TrainingDiverged(f"minibatch {len(totals)}: {err}") from err
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.max_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm, foreach=True)
        else:
            norm = _grad_norm(params)
        _check_update(
            loss, norm, len(totals)
        )  # before the step: non-finite updates never reach the weights
        optimizer.step()
        totals.append(torch.stack([loss.detach(), kl, clip_frac.to(loss.dtype)]))
    loss, kl, clip_frac = (torch.stack(totals).float().mean(dim=0)).tolist()  # one host sync
    return {"loss": loss, "kl_loss": kl, "clip_frac": clip_frac}


def _save_checkpoint(
    run_dir: Path, step: int, policy: Policy, optimizer, generator, config, rows
) -> Path:
    """:func:`klnotes.gpt2.checkpoint.save` of the run after ``step`` steps; returns the checkpoint's path.

    Raises:
        TrainingDiverged: non-finite weights (never written).
    """
    if not _weights_finite(policy.model):
        raise TrainingDiverged("non-finite weights after the update (not checkpointed)")
    return _checkpoint.save(
        run_dir, step, policy.model, optimizer, generator, config, rows, METRICS, policy.device.type
    )


def load_metrics(run_dir: str | os.PathLike, *, steps: int | None = None):
    """The metrics table saved by :func:`train` in ``run_dir`` (a ``pandas.DataFrame``, :data:`METRICS` columns),
    validated: every column, steps ``0, 1, ...`` in order (``steps`` of them if given), finite values
    (:func:`klnotes.gpt2.checkpoint.load_metrics`).

    (:doc:`Chapter 8 </book/08_gpt2_training>`.)

    Raises:
        FileNotFoundError: no ``metrics.csv`` in ``run_dir``.
        ValueError: a damaged file (cut short, missing rows, non-finite values); the message names it.
    """
    return _checkpoint.load_metrics(run_dir, METRICS, steps=steps)


def _make_generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def train(
    policy: Policy,
    reference: Policy,
    task: Task,
    config: TrainConfig = TrainConfig(),
    *,
    run_dir: str | os.PathLike | None = None,
    progress: bool = True,
):
    """Fine-tune ``policy`` in place on ``task`` with the KL arm ``config.kl`` against ``reference``.

    :doc:`Chapter 8 </book/08_gpt2_training>` trains every arm with it, maximising the objective
    :eq:`eq-1-objective` with the arm's
    estimate of its KL term.

    Step ``s`` (0-based) samples a batch from the policy as it is after ``s`` steps, logs its metrics and
    updates the policy. With ``run_dir``, a checkpoint (model, optimizer, generator state, metrics so far)
    is saved every ``config.checkpoint_every`` steps and at the end, and a later call with the same
    ``run_dir`` and config (``steps`` may grow) resumes from it, reproducing the uninterrupted run.

    Crash safety: ``checkpoint.pt`` (the only checkpoint kept; it holds the metric rows too) is replaced
    atomically, so a run killed at any instant resumes, with no clean-up, from its last checkpoint to
    exactly the uninterrupted result; ``metrics.csv`` is a copy rewritten from it. The run folder is
    locked while training (``.lock``): a second ``train`` on it fails at once, naming the holder's pid.
    Before each optimizer step the loss and gradient norm are checked, and after it the weights: a
    divergence stops training with :class:`TrainingDiverged`, and no checkpoint has non-finite weights.

    Args:
        policy: the model trained (its parameters are changed in place).
        reference: the frozen reference (its gradients are turned off).
        task: prompts and reward (:class:`klnotes.gpt2.tasks.Task`); needs ``prompts_per_step`` prompts or more.
        config: :class:`TrainConfig`.
        run_dir: folder for checkpoints and ``metrics.csv`` (created), or ``None``.
        progress: show a ``tqdm`` progress bar.

    Returns:
        ``pandas.DataFrame`` with one row per step and the columns :data:`METRICS`.

    Raises:
        TypeError: wrong argument types. ValueError: too few prompts; prompts plus completions longer than
            the model's positions; a run_dir holding another config, a damaged checkpoint (named, with what
            to do), or a checkpoint saved on another device. klnotes.gpt2._runio.LockedError: another process is
            training in ``run_dir``. TrainingDiverged: a non-finite loss, gradient norm, rollout or weights
            (names the step, the arm and the last good checkpoint).

    Warns:
        RuntimeWarning: resuming with another torch thread count than the checkpoint was saved with.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    for name, value in (("policy", policy), ("reference", reference)):
        if not isinstance(value, Policy):
            raise TypeError(
                f"{name} must be a klnotes.gpt2.policies.Policy, got {type(value).__name__}"
            )
    if not isinstance(task, Task):
        raise TypeError(f"task must be a klnotes.gpt2.tasks.Task, got {type(task).__name__}")
    if config.prompts_per_step > len(task.prompts):
        raise ValueError(
            f"prompts_per_step={config.prompts_per_step} exceeds the task's {len(task.prompts)} prompts"
        )
    if reference.model is policy.model:
        raise ValueError("reference and policy share one model; load the reference separately")
    limit = getattr(policy.model.config, "n_positions", None) or getattr(
        policy.model.config, "max_position_embeddings", None
    )
    longest = max(
        len(ids)
        for ids in policy.tokenizer(list(task.prompts), add_special_tokens=False)["input_ids"]
    )
    if limit is not None and longest + config.max_new_tokens > limit:
        raise ValueError(
            f"longest prompt ({longest} tokens) + max_new_tokens ({config.max_new_tokens}) exceeds the "
            f"model's {limit} positions"
        )
    if run_dir is not None and not isinstance(run_dir, (str, os.PathLike)):
        raise TypeError(
            f"run_dir must be a folder path or None, got {type(run_dir).__name__}: {run_dir!r}"
        )
    folder = Path(run_dir) if run_dir is not None else None
    if folder is None:
        return _train(policy, reference, task, config, None, progress)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(
            f"run_dir {str(folder)!r} exists and is not a folder; pass a folder path"
        )
    folder.mkdir(parents=True, exist_ok=True)
    with _runio.lock(
        folder / LOCK_FILE, what=f"run folder {str(folder)!r}"
    ):  # a second writer fails at once
        _runio.remove_stale_temporaries(
            folder, (CHECKPOINT, METRICS_FILE, CONFIG_FILE)
        )  # left by a killed run
        return _train(policy, reference, task, config, folder, progress)


def _train(
    policy: Policy,
    reference: Policy,
    task: Task,
    config: TrainConfig,
    folder: Path | None,
    progress: bool,
):
    """:func:`train` after its checks, with ``run_dir`` (``folder``) locked."""
    reference.model.requires_grad_(False)
    reference.model.eval()
    policy.model.eval()  # no dropout: sampling and updates are deterministic functions of the generator
    device = policy.device
    optimizer = _make_optimizer(policy.model, config.lr)
    generator = _make_generator(device, config.seed)
    rows: list[dict] = []
    start = 0
    saved = None  # the last good checkpoint (for the divergence message)
    if folder is not None:
        loaded = _checkpoint.load(folder, config, device, METRICS)
        if loaded is not None:
            state, rows = loaded
            # CPU first (torch.load above): the generator state must stay a CPU tensor; weights and optimizer
            # state are moved to the parameters' device by load_state_dict.
            _checkpoint.restore(folder / CHECKPOINT, state, policy.model, optimizer, generator)
            start = int(state["step"])
            saved = (folder / CHECKPOINT, start)
            # metrics.csv may be stale (killed between the two writes) or damaged
            _checkpoint.write_metrics(folder, rows, METRICS)
        _runio.atomic_write(
            folder / CONFIG_FILE,
            lambda f: f.write(json.dumps(_config_dict(config), indent=1)),
            binary=False,
        )
    n_prompts = len(task.prompts)
    bar = progress_bar(
        range(start, config.steps),
        initial=start,
        total=config.steps,
        disable=not progress,
        desc=f"train {config.kl}",
        leave=False,
    )
    for step in bar:
        began = time.perf_counter()
        chosen = torch.randperm(
            n_prompts,
            generator=torch.Generator().manual_seed(
                int(torch.randint(2**31 - 1, (1,), generator=generator, device=generator.device))
            ),
        )
        prompts = [task.prompts[i] for i in chosen[: config.prompts_per_step].tolist()]
        try:
            try:
                batch = rollout(policy, reference, task, prompts, config, generator=generator)
            except (
                RuntimeError
            ) as err:  # e.g. torch.multinomial on NaN probabilities from non-finite weights
                if (
                    isinstance(err, TrainingDiverged)
                    or _weights_finite(policy.model)
                    and "probab" not in str(err)
                ):
                    raise
                raise TrainingDiverged(f"the rollout failed ({str(err)[:120]})") from err
            metrics = batch.metrics()
            if not all(math.isfinite(v) for v in metrics.values()):
                raise TrainingDiverged(
                    "non-finite rollout metrics "
                    + ", ".join(f"{k} = {v}" for k, v in metrics.items() if not math.isfinite(v))
                )
            updates = train_step(policy, batch, optimizer, config, generator=generator)
            if not _weights_finite(policy.model):
                raise TrainingDiverged("non-finite weights after the update")
        except TrainingDiverged as err:
            bar.close()
            last = (
                f"last good checkpoint: {str(saved[0])!r} (after {saved[1]} steps)"
                if saved
                else "no checkpoint saved yet"
                if folder is not None
                else "no checkpoint (run_dir=None)"
            )
            raise TrainingDiverged(
                f"training diverged at step {step} (arm {config.kl!r}, lr={config.lr:g}, "
                f"max_grad_norm={config.max_grad_norm}): {err}; {last}. Lower lr, set max_grad_norm, or change the "
                "seed, in a new run_dir"
            ) from err
        row = {"step": step, **metrics, **updates, "seconds": time.perf_counter() - began}
        rows.append({k: row[k] for k in METRICS})
        bar.set_postfix(reward=f"{row['reward']:.3f}", kl=f"{row['kl_seq_exact']:.3f}")
        done = step + 1
        if folder is not None and (
            (config.checkpoint_every and done % config.checkpoint_every == 0)
            or done == config.steps
        ):
            saved = (
                _save_checkpoint(folder, done, policy, optimizer, generator, config, rows),
                done,
            )
    bar.close()
    frame = pd.DataFrame(rows, columns=list(METRICS))
    frame["step"] = frame["step"].astype(int)
    return frame
