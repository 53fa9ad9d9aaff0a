"""CPU proxy for the ``gpu`` preset: does its training effect show on a small pretrained
transformer?

Chapter 8's ``gpu`` preset fine-tunes pretrained GPT-2 124M on a Colab GPU. No GPU and no pretrained
GPT-2 are available here, so this script builds the closest thing two CPU cores train in minutes: a
GPT-2-shaped model (``GPT2LMHeadModel``, 4 blocks of width 128, 4 heads: about 0.8M parameters) on
the package's 65-word synthetic language, pretrained briefly (:func:`klnotes.gpt2.gpu_results.pretrain`),
with the
language's own task (:func:`klnotes.gpt2.tasks.synthetic_task`: a word the language says rarely). It then
trains the preset's arms with the preset's trainer settings (group size, prompts per step, response
length, learning rate, beta, steps, seeds; or the ones given on the command line) and prints, per
learning rate, the final reward and exact sequence KL of every arm, and the verdict of
:func:`klnotes.analysis.verdicts.paired_verdict` on "KL arm ends closer to the reference than ``none``".

    python benchmarks/proxy_gpu_preset.py --lrs 1e-5 1e-4 --arms none k2-loss --seeds 0
    python benchmarks/proxy_gpu_preset.py            # the gpu preset's own settings, every arm
    python benchmarks/proxy_gpu_preset.py --report runs1.csv runs2.csv   # figures of saved runs

Why the proxy is conservative on the learning rate: with Adam the per-parameter step is about ``lr``
whatever the gradient's scale, and the change of a logit from one step sums such steps over the
width of the layers that feed it, so at one ``lr`` a wider model moves its logits more per step
(the reason muP scales Adam's learning rate as ``1 / width``). GPT-2 124M is 6 times wider than the
proxy (768 against 128) and 3 times deeper: an effect that shows on the proxy at ``lr`` is expected
on GPT-2 at the same ``lr`` at least as strongly, unless the larger model diverges (the trainer
stops a
diverging run with ``TrainingDiverged``). Figures go to stdout and, with ``--out``, every run's
per-step metrics to a CSV.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from klnotes.analysis import verdicts
from klnotes.gpt2 import experiments, gpu_results, policies, tasks, trainer

#: The proxy model: GPT-2's block structure at 1/6 of its width and 1/3 of its depth, on the 65-word
#: language, pretrained for 200 steps of 32 sentences (sized for two shared CPU cores).
PROXY_MODEL = policies.TinyLMConfig(
    n_words=65,
    concentration=0.3,
    end_prob=0.1,
    n_layer=4,
    n_embd=128,
    n_head=4,
    n_positions=64,
    pretrain_steps=200,
    batch_size=32,
    lr=2e-3,
    seed=0,
)


def run_one(
    folder: Path, task, p, arm: str, *, lr: float, beta: float, seed: int, steps: int
) -> pd.DataFrame:
    """One run of ``arm`` from the pretrained proxy with the preset's settings, at ``lr`` and
    ``beta``."""
    policy = policies.load_policy(folder)
    reference = policies.frozen(policies.load_policy(folder))
    config = dataclasses.replace(p.train_config(arm, beta=beta, seed=seed, steps=steps), lr=lr)
    frame = trainer.train(policy, reference, task, config, progress=False)
    frame.insert(0, "arm", arm)
    frame.insert(1, "lr", lr)
    frame.insert(2, "beta", beta)
    frame.insert(3, "seed", seed)
    return frame


def report(runs: pd.DataFrame, last: int = 5) -> None:
    """Print, per learning rate, every arm's final reward and exact KL (mean of the last ``last``
    steps,
    mean over seeds) and the verdicts of :mod:`klnotes.analysis.verdicts` against ``none``."""
    for lr, sub in runs.groupby("lr"):
        sub = sub.drop(columns="lr")
        fin = experiments.final_metrics(
            sub.assign(experiment="proxy", updates_per_batch=1),
            last=last,
            metrics=["reward", "kl_seq_exact", "entropy"],
        )
        print(f"lr {lr:g}: final values (mean of the last {last} steps), mean over seeds")
        print(fin.groupby("arm")[["reward", "kl_seq_exact", "entropy"]].mean().round(4).to_string())
        arms = set(sub["arm"])
        if "none" in arms:
            for arm in sorted(arms & {"k2-loss", "k3-loss", "k1-reward"}):
                print(
                    " ",
                    verdicts.paired_verdict(
                        sub,
                        "kl_seq_exact",
                        arm,
                        "none",
                        last=last,
                        claim=f"{arm} ends closer to the reference than none",
                    ),
                )
            if "k1-loss" in arms:
                d = verdicts.arm_differences(
                    sub, "kl_seq_exact", "k1-loss", "none", last=last, relative=True
                )
                print(" ", verdicts.equivalence_verdict(d, "k1 as loss ~ no KL (within 25%)", 0.25))
        if {"k2-loss", "k3-loss"} <= arms:
            print(
                " ",
                verdicts.paired_verdict(
                    sub,
                    "kl_seq_exact",
                    "k2-loss",
                    "k3-loss",
                    last=last,
                    claim="k2 as loss holds KL below k3 as loss",
                ),
            )
        print()


def main(argv=None) -> int:
    p = experiments.PRESETS["gpu"]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lrs", type=float, nargs="+", default=[p.lr])
    parser.add_argument("--beta", type=float, default=p.beta)
    parser.add_argument("--steps", type=int, default=p.steps)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(p.seeds))
    parser.add_argument("--arms", nargs="+", default=list(p.arms))
    parser.add_argument("--last", type=int, default=5, help="final window (steps) of final_metrics")
    parser.add_argument("--model-dir", default=os.path.join(tempfile.gettempdir(), "klnotes-proxy"))
    parser.add_argument("--out", default=None, help="CSV of every run's per-step metrics")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--report",
        nargs="+",
        default=None,
        metavar="CSV",
        help="print the figures of runs saved with --out (no training)",
    )
    args = parser.parse_args(argv)
    if args.report:
        report(pd.concat([pd.read_csv(f) for f in args.report], ignore_index=True), args.last)
        return 0
    torch.set_num_threads(args.threads)
    experiments.check_arms(args.arms)

    began = time.perf_counter()
    record = gpu_results.pretrain(PROXY_MODEL, args.model_dir, progress=False)
    folder = gpu_results.model_folder(PROXY_MODEL, args.model_dir)
    print(
        f"proxy: {record['parameters']:,} parameters, pretrained {record['steps']} steps "
        f"({record['seconds']:.0f} s); held-out loss {record['loss_before']:.3f} -> "
        f"{record['loss_after']:.3f} "
        f"nats/token, language floor {record['language_nll']:.3f}"
    )
    task = tasks.folder_task(folder)
    print(f"task: {task.description}")
    print(
        f"settings: group {p.group_size} x {p.prompts_per_step} prompts, "
        f"{p.max_new_tokens} new tokens, "
        f"beta {args.beta:g}, {args.steps} steps, seeds {args.seeds}, lrs {args.lrs}",
        flush=True,
    )
    frames = []
    for lr in args.lrs:
        for seed in args.seeds:
            for arm in args.arms:
                t0 = time.perf_counter()
                frames.append(
                    run_one(
                        folder, task, p, arm, lr=lr, beta=args.beta, seed=seed, steps=args.steps
                    )
                )
                last = frames[-1].tail(args.last)
                print(
                    f"lr {lr:g} seed {seed} {arm:>10}: reward {last['reward'].mean():.3f}, "
                    f"KL {last['kl_seq_exact'].mean():.4f} nats ({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
    runs = pd.concat(frames, ignore_index=True)
    if args.out:
        runs.to_csv(args.out, index=False)
    print()
    report(runs, args.last)
    print(f"total {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
