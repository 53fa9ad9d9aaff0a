"""Benchmark of :mod:`klnotes.gpt2.trainer` (a script that prints a table; not a test).

Every measurement trains the same tiny GPT-2 (``--preset``, saved to a folder) on the same batch shape:
``prompts x group`` completions of exactly ``tokens`` tokens (EOS is not sampled before, so every batch
has the same length), split into ``updates`` minibatches with one optimizer step each. Times are seconds
per generated batch (rollout + all its updates), median and min over ``rounds x (steps - 1)`` batches
(the first batch of each run is a warm-up and dropped); the measurements alternate round by round in
one process so that machine load affects them alike.

Rows:

- **floor (klnotes sample)** and **floor (HF generate)**: the least work any trainer of this batch must do.
  Per batch: take the prompts the trainer draws at the same step (recorded from an untimed run, so the
  left padding of the prompt batch, which slows attention, is the same; they are tokenized before the
  clock starts); sample the completions, with :func:`klnotes.gpt2.trainer.sample` (the trainer's
  own KV-cache loop) or with ``model.generate``; then for each minibatch one forward pass
  (:func:`klnotes.gpt2.trainer.token_logprobs`), the loss ``-mean(logp)``, one backward pass and one step of the
  trainer's own optimizer (the same AdamW implementation, ``klnotes.gpt2.trainer._make_optimizer``).
  Not included: prompt tokenization, decoding and scoring the completions, the reference model's
  forward pass, log-probabilities of ``pi_old``/``pi_ref``, exact KL and entropy, advantages, the PPO/KL
  loss heads, gradient clipping, metrics. The difference trainer - floor is therefore the trainer's
  overhead: its required extras (one reference forward pass, decoding, reward, metrics) plus any waste.
  Target: klnotes <= 1.15 x floor (klnotes sample).
- **klnotes**: :func:`klnotes.gpt2.trainer.train` with ``kl="k2-loss-is"``, ``beta=0.1``, clipping at norm 1
  (``seconds`` column of its metrics, which times the whole step).
- **baseline** (with ``--baseline FILE``): the same, with another version of ``trainer.py`` (e.g. a copy of
  the file before a change), to compare versions side by side in one run.
- **TRL GRPOTrainer**: TRL's trainer with the same model, batch, group size, two optimizer steps per
  generated batch, a reference model (``beta > 0``), clipping, and the same number of generated batches.
  Target: klnotes / TRL <= 1.0.

- **--gpu-preset**: instead, one step of the ``gpu`` preset on a GPT-2-shaped model (GPT-2's 50,257-token
  vocabulary and tokenizer; ``--layers 12 --width 768`` is GPT-2 124M's shape), with its FLOPs, FLOP/s,
  peak memory, checkpoint size and the chapter-8 run time it implies here and (estimated) on a T4 and an
  H100: ``OMP_NUM_THREADS=1 python benchmarks/bench_trainer.py --gpu-preset --steps 2 --threads 1``.

Run (CPU; one thread is the reproducible setting on a shared machine):
``OMP_NUM_THREADS=1 python benchmarks/bench_trainer.py --rounds 5 --steps 8 --threads 1 [--baseline FILE]``
(``--device cuda`` on a GPU, ``--no-trl`` to skip TRL; ``--policy FOLDER`` trains a saved model instead of the tiny
preset, e.g. the GPT-2 124M-architecture model of ``klnotes.gpt2.gpu_results``, which
``scripts/gpu_results.sh`` passes).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from klnotes.gpt2 import policies, tasks  # noqa: E402
from klnotes.gpt2 import trainer as TR  # noqa: E402


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def load_trainer(path):
    """The module ``klnotes.gpt2.trainer`` (``path=None``) or another version of it loaded from the file ``path``."""
    if path is None:
        return TR
    spec = importlib.util.spec_from_file_location("klnotes_trainer_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def time_klnotes(folder, task, config, device, trainer=TR) -> list[float]:
    """Seconds per step of ``trainer.train`` (first step dropped: warm-up)."""
    policy = policies.load_policy(folder, device=device)
    reference = policies.load_policy(folder, device=device)
    config = trainer.TrainConfig(**{f: getattr(config, f) for f in config.__dataclass_fields__})
    frame = trainer.train(policy, reference, task, config, progress=False)
    return frame["seconds"].tolist()[1:]


def trainer_prompts(folder, task, config, device) -> list[list[str]]:
    """The prompts of each step of :func:`klnotes.gpt2.trainer.train` with ``config`` (recorded from an untimed run)."""
    drawn: list[list[str]] = []
    rollout = TR.rollout

    def recording(policy, reference, task, prompts, config, **kwargs):
        drawn.append(list(prompts))
        return rollout(policy, reference, task, prompts, config, **kwargs)

    TR.rollout = recording
    try:
        TR.train(
            policies.load_policy(folder, device=device),
            policies.load_policy(folder, device=device),
            task,
            config,
            progress=False,
        )
    finally:
        TR.rollout = rollout
    return drawn


def _prompt_batches(prompts: list[list[str]], config, tokenizer, device) -> list[dict]:
    """Each step's prompts, each repeated ``group_size`` times, tokenized with left padding."""
    return [
        tokenizer(
            [p for p in step for _ in range(config.group_size)],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        ).to(device)
        for step in prompts
    ]


def time_floor(folder, prompts, config, device, *, generator: str) -> list[float]:
    """Seconds per step of generation + one forward/backward/optimizer step per minibatch, nothing else
    (see the module docstring for what is and is not included)."""
    policy = policies.load_policy(folder, device=device)
    model, tok = policy.model, policy.tokenizer
    optimizer = TR._make_optimizer(model, config.lr)
    gen = torch.Generator(device=device).manual_seed(0)
    times = []
    for enc in _prompt_batches(prompts, config, tok, device):
        _sync(device)
        began = time.perf_counter()
        if generator == "hf":
            with torch.no_grad():
                out = model.generate(
                    **enc,
                    do_sample=True,
                    max_new_tokens=config.max_new_tokens,
                    min_new_tokens=config.min_new_tokens,
                    pad_token_id=tok.pad_token_id,
                    top_k=0,
                    top_p=1.0,
                )
            ids = out[:, enc["input_ids"].size(1) :]
        else:
            ids, _, _ = TR.sample(
                model,
                enc["input_ids"],
                enc["attention_mask"],
                max_new_tokens=config.max_new_tokens,
                min_new_tokens=config.min_new_tokens,
                eos_id=tok.eos_token_id,
                pad_id=tok.pad_token_id,
                generator=gen,
            )
        for rows in torch.arange(ids.size(0), device=device).chunk(config.updates_per_batch):
            logp = TR.token_logprobs(
                model, enc["input_ids"][rows], enc["attention_mask"][rows], ids[rows]
            )
            loss = -logp.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        _sync(device)
        times.append(time.perf_counter() - began)
    return times[1:]


def time_trl(folder, task, config, device, workdir) -> list[float]:
    """Seconds per generated batch of TRL's ``GRPOTrainer`` (first batch dropped: warm-up)."""
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    updates = config.updates_per_batch
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            _sync(device)
            stamps.append(time.perf_counter())

        def on_train_begin(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    def reward(completions, **kwargs):
        return task.reward(list(completions)).tolist()

    args = GRPOConfig(
        output_dir=os.path.join(workdir, "trl"),
        per_device_train_batch_size=config.batch_size // updates,
        steps_per_generation=updates,
        num_iterations=1,
        num_generations=config.group_size,
        max_completion_length=config.max_new_tokens,
        generation_kwargs={"min_new_tokens": config.min_new_tokens},
        max_steps=config.steps * updates,
        beta=config.beta,
        learning_rate=config.lr,
        epsilon=config.clip_eps,
        temperature=config.temperature,
        top_k=0,
        top_p=1.0,
        max_grad_norm=config.max_grad_norm or 0.0,
        use_cpu=torch.device(device).type == "cpu",
        bf16=torch.device(device).type == "cuda"
        and torch.cuda.is_bf16_supported(),  # as klnotes' autocast
        report_to="none",
        logging_steps=10**6,
        save_strategy="no",
        seed=config.seed,
        disable_tqdm=True,
        lr_scheduler_type="constant",
        weight_decay=0.0,
    )
    data = Dataset.from_dict({"prompt": list(task.prompts)})
    tokenizer = AutoTokenizer.from_pretrained(folder)
    trainer = GRPOTrainer(
        model=str(folder),
        reward_funcs=reward,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[Clock()],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    per_batch = [stamps[i + updates] - stamps[i] for i in range(0, len(stamps) - updates, updates)]
    return per_batch[1:]


FLOORS = ("floor (klnotes sample)", "floor (HF generate)")


def report(results: dict[str, list[float]]) -> str:
    """The table: median and min seconds per batch, and each trainer's ratio to both floors and to TRL."""
    median = {k: statistics.median(v) for k, v in results.items()}
    low = {k: min(v) for k, v in results.items()}
    refs = [k for k in (*FLOORS, "TRL GRPOTrainer") if k in results]
    short = {
        "floor (klnotes sample)": "/floor sample",
        "floor (HF generate)": "/floor HF",
        "TRL GRPOTrainer": "/TRL",
    }
    lines = [
        f"{'measurement':<24} {'median s/batch':>14} {'min s/batch':>12}"
        + "".join(f" {short[r] + ' (med, min)':>22}" for r in refs)
    ]
    for name in results:
        cells = "".join(
            f" {'':>22}"
            if name in FLOORS
            else f" {median[name] / median[r]:>11.3f} {low[name] / low[r]:>10.3f}"
            for r in refs
        )
        lines.append(f"{name:<24} {median[name]:>14.4f} {low[name]:>12.4f}{cells}")
    lines.append("targets: klnotes / floor (klnotes sample) <= 1.15; klnotes / TRL <= 1.0")
    return "\n".join(lines)


def gpu_preset_step(args) -> None:
    """``--gpu-preset``: one step of the ``gpu`` preset (batch, lengths, every arm's work) on a GPT-2-shaped model
    (GPT-2's vocabulary and tokenizer, ``--layers`` x ``--width``; 12 x 768 is GPT-2 124M's shape, random weights),
    timed on this device. Prints seconds per step (the first, warm-up, step dropped), the step's FLOPs
    (:func:`klnotes.gpt2.experiments.step_flops`), FLOP/s reached, peak host memory, the size of one checkpoint
    (model + AdamW state), and the chapter-8 run time this gives at the gpu preset (every arm) on this
    device and, from the assumed throughputs of ``experiments.GPU_THROUGHPUT``, on a T4 and an H100."""
    import resource

    from klnotes.gpt2 import experiments as EX

    p = EX.preset("gpu")
    with tempfile.TemporaryDirectory() as tmp:
        folder = policies.gpt2_standin(
            f"{tmp}/gpt2-shaped",
            n_layer=args.layers,
            n_embd=args.width,
            n_head=max(1, args.width // 64),
            n_positions=1024,
            pretrain_steps=0,
        )
        policy = policies.load_policy(folder, device=args.device)
        reference = policies.frozen(policies.load_policy(folder, device=args.device))
        task = tasks.positive_words_task()
        config = p.train_config("k2-loss", beta=p.beta, seed=0, steps=args.steps)
        config = TR.TrainConfig(
            **{**TR._config_dict(config), "min_new_tokens": p.max_new_tokens, "checkpoint_every": 0}
        )
        n = sum(x.numel() for x in policy.model.parameters())
        frame = TR.train(policy, reference, task, config, progress=False)
        seconds = (
            statistics.median(frame["seconds"].iloc[1:])
            if len(frame) > 1
            else float(frame["seconds"].iloc[0])
        )
        optimizer = TR._make_optimizer(policy.model, config.lr)
        torch.save(
            {"model": policy.model.state_dict(), "optimizer_state_bytes": 2 * 4 * n},
            f"{tmp}/ckpt.pt",
        )
        ckpt_mb = (
            os.path.getsize(f"{tmp}/ckpt.pt") + 2 * 4 * n
        ) / 1e6  # weights + AdamW's two moments (float32)
        del optimizer
    no_grad, grad = EX.step_flops(p, n)
    flops = no_grad + grad
    runs = len(p.arms) * len(p.betas) * len(p.seeds)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"gpu preset step: {config.batch_size} completions x {p.max_new_tokens} tokens; model {args.layers} x "
        f"{args.width}, {n / 1e6:.1f}M parameters (vocabulary {policy.model.config.vocab_size})"
    )
    print(
        f"  seconds per step on {args.device} (median of {max(len(frame) - 1, 1)}): {seconds:.2f}"
    )
    print(
        f"  FLOPs per step: {flops / 1e12:.3f} TFLOP ({no_grad / 1e12:.3f} no-grad, {grad / 1e12:.3f} training); "
        f"reached {flops / seconds / 1e9:.1f} GFLOP/s"
    )
    print(
        f"  peak host memory (max RSS): {peak_mb:,.0f} MB; one checkpoint (weights + AdamW moments): {ckpt_mb:,.0f} MB"
    )
    minutes = runs * p.steps * seconds / 60
    print(
        f"  chapter 8 at the gpu preset ({runs} runs x {p.steps} steps) at this speed: "
        f"{minutes:.1f} min"
    )
    for kind in ("T4", "H100"):
        fast, slow = EX.GPU_THROUGHPUT[kind]
        per_step = no_grad / fast + grad / slow
        print(
            f"  {kind} estimate (assumed {fast / 1e12:.0f}/{slow / 1e12:.0f} TFLOP/s "
            f"no-grad/training): {per_step:.2f} s "
            f"per step, {runs * p.steps * per_step / 60:.1f} min for chapter 8's runs"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds of each measurement"
    )
    parser.add_argument(
        "--steps", type=int, default=6, help="generated batches per measurement (first dropped)"
    )
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--preset", default="cpu", choices=sorted(policies.TINY_PRESETS))
    parser.add_argument(
        "--updates", type=int, default=2, help="minibatch updates per generated batch"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    parser.add_argument(
        "--baseline", default=None, help="another trainer.py to time as the row 'baseline'"
    )
    parser.add_argument("--no-trl", dest="trl", action="store_false", help="skip TRL's GRPOTrainer")
    parser.add_argument(
        "--policy",
        default=None,
        help="a save_pretrained folder to train instead of the tiny preset "
        "(its klnotes_task.json task, else the gpu task); e.g. the model of klnotes.gpt2.gpu_results",
    )
    parser.add_argument(
        "--gpu-preset",
        action="store_true",
        help="time the gpu preset's step on a GPT-2-shaped model instead (see gpu_preset_step)",
    )
    parser.add_argument(
        "--layers", type=int, default=12, help="--gpu-preset: transformer blocks (GPT-2 124M: 12)"
    )
    parser.add_argument(
        "--width", type=int, default=768, help="--gpu-preset: model width (GPT-2 124M: 768)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gpu_preset:
        warnings.filterwarnings("ignore")
        return gpu_preset_step(args)
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()

    tiny = policies.TINY_PRESETS[args.preset]
    folder = policies.tiny_cache_path(tiny)
    policies.tiny_policy(tiny)  # build the cache once
    task = tasks.synthetic_task(tiny)
    if args.policy:  # a saved model instead (e.g. klnotes.gpt2.gpu_results' GPT-2 124M-architecture model) and its task
        from pathlib import Path

        folder = Path(args.policy)
        task = tasks.folder_task(folder) or tasks.positive_words_task()
    config = TR.TrainConfig(
        kl="k2-loss-is",
        beta=0.1,
        group_size=args.group,
        prompts_per_step=args.prompts,
        max_new_tokens=args.tokens,
        min_new_tokens=args.tokens,
        updates_per_batch=args.updates,
        lr=1e-3,
        steps=args.steps,
        checkpoint_every=0,
    )
    baseline = load_trainer(args.baseline) if args.baseline else None
    what = (
        f"policy {folder}" if args.policy else f"tiny GPT-2 preset {args.preset!r} ({folder.name})"
    )
    print(
        f"device {args.device}; {what}; batch {config.batch_size} "
        f"= {args.prompts} prompts x {args.group}, {args.tokens} tokens each, {config.updates_per_batch} updates "
        f"per batch; {args.rounds} rounds x {args.steps - 1} timed batches; torch threads {torch.get_num_threads()}"
        + (f"; baseline {args.baseline}" if baseline else "")
    )
    prompts = trainer_prompts(folder, task, config, args.device)  # the floors replay them
    names = (
        [*FLOORS, "klnotes"]
        + (["baseline"] if baseline else [])
        + (["TRL GRPOTrainer"] if args.trl else [])
    )
    results: dict[str, list[float]] = {k: [] for k in names}
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(args.rounds):
            results["floor (klnotes sample)"] += time_floor(
                folder, prompts, config, args.device, generator="klnotes"
            )
            results["floor (HF generate)"] += time_floor(
                folder, prompts, config, args.device, generator="hf"
            )
            results["klnotes"] += time_klnotes(folder, task, config, args.device)
            if baseline:
                results["baseline"] += time_klnotes(
                    folder, task, config, args.device, trainer=baseline
                )
            if args.trl:
                results["TRL GRPOTrainer"] += time_trl(folder, task, config, args.device, workdir)
    print()
    print(report(results))


if __name__ == "__main__":
    main()
