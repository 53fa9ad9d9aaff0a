"""Run the experiments of chapters 7 and 8 for one preset and save their results (resumable).

Usage:
    python scripts/run_experiments.py --preset cpu                 # everything, into results/cpu/
    python scripts/run_experiments.py --preset gpu --device cuda   # the Colab-sized set (T4): results/gpu/
    python scripts/run_experiments.py --preset full --device cuda  # the full set (datacenter GPU): results/full/
    python scripts/run_experiments.py --preset cpu --only arms --arms k2-loss k3-loss --seeds 0

Each training run is saved as one CSV under ``results/<preset>/`` as soon as it finishes, and a run
whose CSV exists (and passes its checks: row count, steps, finite values, policy and config) is
skipped, so an interrupted invocation picks up where it stopped (the trainer's checkpoints under
``runs/<preset>/`` also resume a run cut off mid-way; a run's checkpoint is deleted once its CSV is
saved, unless ``--keep-checkpoints``; each run's disk use is printed). Two invocations on one results
folder share the work: a run being trained by one is waited for by the other. The chapters read these
files; commit ``results/<preset>/`` to ship them with the book. ``KLNOTES_RESULTS`` and
``KLNOTES_RUNS`` move both folders; ``KLNOTES_POLICY`` picks another model for gpu/full.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

EXPERIMENTS = ("arms", "offpolicy", "gradients")


def main(argv: list[str] | None = None) -> int:
    from klnotes.gpt2 import _runio, experiments, trainer

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", required=True, choices=tuple(experiments.PRESETS))
    parser.add_argument(
        "--only",
        nargs="+",
        choices=EXPERIMENTS,
        default=list(EXPERIMENTS),
        help="which experiments to run (default: all)",
    )
    parser.add_argument(
        "--arms",
        nargs="+",
        choices=trainer.ARMS,
        help="arms of the main comparison (default: the preset's)",
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, help="seeds of the main comparison (default: the preset's)"
    )
    parser.add_argument(
        "--results", help="results folder (default: results/<preset>, smoke: .klnotes_cache/)"
    )
    parser.add_argument(
        "--device", default=None, help="torch device for the models, e.g. cuda (default: CPU)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep each run's checkpoint after its results are saved (default: delete it)",
    )
    args = parser.parse_args(argv)
    if args.keep_checkpoints:
        os.environ["KLNOTES_KEEP_CHECKPOINTS"] = "1"

    p = experiments.preset(args.preset)
    store = (
        experiments.ResultsStore(args.results)
        if args.results
        else experiments.ResultsStore(experiments.default_results_dir(p.name))
    )
    progress = not args.no_progress
    print(f"preset {p.name}: results in {store.root}", flush=True)
    for name in args.only:
        start = time.perf_counter()
        if name == "arms":
            frame = experiments.run_arms(
                p,
                arms=args.arms,
                seeds=args.seeds,
                store=store,
                device=args.device,
                progress=progress,
            )
            summary = experiments.summarize(frame, metrics=["reward", "kl_seq_exact"])
        elif name == "offpolicy":
            frame = experiments.run_off_policy_ablation(
                p, store=store, device=args.device, progress=progress
            )
            summary = experiments.summarize(
                frame, metrics=["reward", "kl_seq_exact"], by=("arm", "updates_per_batch")
            )
        else:
            on, off = experiments.gradient_sweeps(
                p, store=store, device=args.device, progress=progress
            )
            summary = on.pivot_table(index="implementation", columns="alpha", values="cosine")
        print(
            f"\n== {name} ({time.perf_counter() - start:.0f} s)\n{summary.to_string()}", flush=True
        )
    runs = experiments.runs_dir(p)
    print(f"run folders {runs}: {_runio.format_bytes(_runio.disk_use(runs))} on disk", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
