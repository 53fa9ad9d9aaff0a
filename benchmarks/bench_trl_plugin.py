"""Steps per second of klnotes' TRL plug-in against TRL's own GRPO step, with 1 and 2 CPU processes.

    python benchmarks/bench_trl_plugin.py [--steps 6] [--repeats 3]

Same global batch in every run (16 completions of up to 16 tokens per optimizer step, 8 prompts x 2),
on a small random GPT-2 (4 layers, width 128; offline). One process holds the 16 completions; two
processes (``accelerate launch --multi_gpu --num_processes 2``, gloo on the CPU) hold 8 each. Three
trainers, interleaved and repeated (the best repeat is reported, to damp the noise of a shared machine):

- ``trl``: TRL's ``GRPOTrainer`` with ``beta > 0`` (its own per-token k3 term, with the reference model);
- ``plugin``: ``PrincipledKLGRPOTrainer`` with ``kl="k1_in_reward"`` (same beta, same reference model);
- ``plugin k2``: the same with ``kl="k2_as_loss"``.

A step is a whole GRPO step: generation, rewards, reference and policy forward passes, backward, AdamW.
The first two steps of each run are warm-up and not timed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

MODES = {"trl": None, "plugin": "k1_in_reward", "plugin k2": "k2_as_loss"}
GLOBAL_BATCH, WARMUP = 16, 2


def worker(out_dir: str, steps: int, repeats: int) -> None:
    import torch
    from accelerate import PartialState
    from transformers.trainer_callback import TrainerCallback

    from klnotes import trl_plugin as P

    torch.set_num_threads(1)
    state = PartialState(cpu=True)
    world = state.num_processes
    model_dir = os.path.join(out_dir, "tiny-gpt2")  # where tiny_trainer(out_dir) looks; here the small one
    if state.is_main_process and not os.path.exists(os.path.join(model_dir, "config.json")):
        P.tiny_gpt2(model_dir, n_embd=128, n_layer=4)
    state.wait_for_everyone()

    class Clock(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter())

    results = {mode: [] for mode in MODES}
    for _ in range(repeats):
        for mode, kl in MODES.items():
            tr = P.tiny_trainer(out_dir, kl=kl, plugin=kl is not None, beta=0.1, max_steps=WARMUP + steps,
                                per_device_train_batch_size=GLOBAL_BATCH // world, num_generations=2,
                                max_completion_length=16, learning_rate=1e-4)
            clock = Clock()
            tr.add_callback(clock)
            tr.train()
            elapsed = clock.times[-1] - clock.times[WARMUP - 1]
            results[mode].append(steps / elapsed)
    if state.is_main_process:
        with open(os.path.join(out_dir, f"world{world}.json"), "w") as f:
            json.dump(results, f)
    state.wait_for_everyone()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.steps, args.repeats)
    here = os.path.abspath(__file__)
    root = os.path.dirname(os.path.dirname(here))
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", TRL_EXPERIMENTAL_SILENCE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    common = [here, "--steps", str(args.steps), "--repeats", str(args.repeats), "--worker"]
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, *common, out], env=env, check=True, capture_output=True)
        subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *common, out],
                       env=env, check=True, capture_output=True)
        results = {w: json.load(open(os.path.join(out, f"world{w}.json"))) for w in (1, 2)}
    print(f"GRPO steps per second, global batch {GLOBAL_BATCH} completions, best of {args.repeats} runs "
          f"of {args.steps} steps (all runs in brackets)")
    print(f"{'processes':>9s} " + " ".join(f"{m:>24s}" for m in MODES) + f" {'plugin / trl':>13s}")
    for w, res in results.items():
        best = {m: max(v) for m, v in res.items()}
        cells = " ".join(f"{best[m]:6.2f} [{', '.join(f'{x:.2f}' for x in res[m])}]".rjust(24) for m in MODES)
        print(f"{w:>9d} {cells} {best['trl'] / best['plugin']:>12.3f}x")
    print("plugin / trl: time per step of the plug-in over TRL's (1.05 = 5 % overhead)")


if __name__ == "__main__":
    main()
