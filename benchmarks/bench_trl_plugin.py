"""Steps per second of klnotes' TRL plug-in against TRL's own GRPO step, with 1 and 2 CPU processes.

    python benchmarks/bench_trl_plugin.py [--steps 8] [--repeats 5]

Same global batch in every run (16 completions of up to 16 tokens per optimizer step, 8 prompts x 2),
on a small random GPT-2 (4 layers, width 128; offline). One process holds the 16 completions; two
processes (``accelerate launch --multi_gpu --num_processes 2``, gloo on the CPU) hold 8 each. Three
trainers, interleaved and repeated (the best repeat is reported, to damp the noise of a shared machine):

- ``trl``: TRL's ``GRPOTrainer`` with ``beta > 0`` (its own per-token k3 term, with the reference model);
- ``plugin``: ``PrincipledKLGRPOTrainer`` with ``kl="k1_in_reward"`` (same beta, same reference model);
- ``plugin k2``: the same with ``kl="k2_as_loss"``.

A step is a whole GRPO step: generation, rewards, reference and policy forward passes, backward, AdamW.
The first two steps of each run are warm-up and not timed. Rates are given by the wall clock and by the
CPU time of rank 0's process (steadier on a shared machine, where wall-clock rates swing by 2x). A
second table times only what differs between the trainers, the loss step (policy forward, KL term,
backward) on a fixed batch, in one process.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
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
    model_dir = os.path.join(
        out_dir, "tiny-gpt2"
    )  # where tiny_trainer(out_dir) looks; here the small one
    if state.is_main_process and not os.path.exists(os.path.join(model_dir, "config.json")):
        P.tiny_gpt2(model_dir, n_embd=128, n_layer=4)
    state.wait_for_everyone()

    class Clock(TrainerCallback):
        def __init__(self):
            self.wall, self.cpu = [], []

        def on_step_end(self, args, state, control, **kwargs):
            self.wall.append(time.perf_counter())
            self.cpu.append(time.process_time())

    results = {clock: {mode: [] for mode in MODES} for clock in ("wall", "cpu")}
    for _ in range(repeats):
        for mode, kl in MODES.items():
            tr = P.tiny_trainer(
                out_dir,
                kl=kl,
                plugin=kl is not None,
                beta=0.1,
                max_steps=WARMUP + steps,
                per_device_train_batch_size=GLOBAL_BATCH // world,
                num_generations=2,
                max_completion_length=16,
                learning_rate=1e-4,
            )
            clock = Clock()
            tr.add_callback(clock)
            tr.train()
            for name, times in (("wall", clock.wall), ("cpu", clock.cpu)):
                results[name][mode].append(steps / (times[-1] - times[WARMUP - 1]))
    if (
        world == 1
    ):  # the loss step alone (forward, KL head, backward) on a fixed batch: where the two differ
        results["loss step"] = loss_step_rates(out_dir, repeats)
    if state.is_main_process:
        with open(os.path.join(out_dir, f"world{world}.json"), "w") as f:
            json.dump(results, f)
    state.wait_for_everyone()


def loss_step_rates(out_dir: str, repeats: int, iterations: int = 20) -> dict:
    """Loss + backward per second (CPU time) on one fixed batch of GLOBAL_BATCH completions of 16 tokens,
    for each mode; runs interleaved, best of ``repeats``."""

    from klnotes import trl_plugin as P

    trainers = {}
    for mode, kl in MODES.items():
        tr = P.tiny_trainer(out_dir, kl=kl, plugin=kl is not None, beta=0.1)
        tr.model.train()
        tr.current_gradient_accumulation_steps = 1
        trainers[mode] = tr
    batch = P.synthetic_batch(
        trainers["trl"].model, seed=0, batch=GLOBAL_BATCH, prompt_len=2, completion_len=16
    )
    rates = {mode: [] for mode in MODES}
    for _ in range(repeats):
        for mode, tr in trainers.items():
            start = time.process_time()
            for _ in range(iterations):
                tr._compute_loss(tr.model, batch).backward()
            rates[mode].append(iterations / (time.process_time() - start))
    return rates


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.steps, args.repeats)
    here = os.path.abspath(__file__)
    root = os.path.dirname(os.path.dirname(here))
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",
        TRL_EXPERIMENTAL_SILENCE="1",
        PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    )
    common = [here, "--steps", str(args.steps), "--repeats", str(args.repeats), "--worker"]
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, *common, out], env=env, check=True, capture_output=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "accelerate.commands.launch",
                "--multi_gpu",
                "--num_processes",
                "2",
                "--num_machines",
                "1",
                "--main_process_port",
                str(free_port()),
                "--mixed_precision",
                "no",
                "--dynamo_backend",
                "no",
                *common,
                out,
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        results = {w: json.load(open(os.path.join(out, f"world{w}.json"))) for w in (1, 2)}
    print(
        f"GRPO steps per second, global batch {GLOBAL_BATCH} completions, best of {args.repeats} runs "
        f"of {args.steps} steps (all runs in brackets); wall clock, and CPU time of the process of rank 0"
    )
    width = 10 + 6 * args.repeats
    print(
        f"{'clock':>5s} {'processes':>9s} "
        + " ".join(f"{m:>{width}s}" for m in MODES)
        + f" {'plugin/trl':>10s} {'k2/trl':>7s}"
    )
    for clock in ("wall", "cpu"):
        for w, res in results.items():
            best = {m: max(v) for m, v in res[clock].items()}
            cells = " ".join(
                f"{best[m]:6.2f} [{', '.join(f'{x:.2f}' for x in res[clock][m])}]".rjust(width)
                for m in MODES
            )
            print(
                f"{clock:>5s} {w:>9d} {cells} {best['trl'] / best['plugin']:>9.3f}x "
                f"{best['trl'] / best['plugin k2']:>6.3f}x"
            )
    loss = results[1]["loss step"]
    best = {m: max(v) for m, v in loss.items()}
    print(
        f"\nloss + backward alone (one process, CPU time, {GLOBAL_BATCH} completions of 16 tokens), per second:"
    )
    print(
        " ".join(f"{m}: {best[m]:.1f} [{', '.join(f'{x:.1f}' for x in loss[m])}]" for m in MODES)
        + f"  plugin/trl {best['trl'] / best['plugin']:.3f}x  k2/trl {best['trl'] / best['plugin k2']:.3f}x"
    )
    print("plugin/trl: time per step of the plug-in over TRL's own (1.05 = 5 % overhead)")


if __name__ == "__main__":
    main()
