"""Benchmark of klnotes.gpt2.gradcompare: peak host memory of the Monte Carlo gradient comparison.

Runs ``sampled_gradients`` and then ``compare`` on a randomly initialised GPT-2 (CPU, float32) and
reports the peak resident memory above the level just before the call, in units of one gradient
vector ``D * 4`` bytes (``D`` = number of parameters). Each variant runs in its own process; RSS is
sampled every few milliseconds from ``/proc/self/statm`` (the process-wide ``ru_maxrss`` is printed
too). ``--variant old`` loads the committed ``klnotes/gpt2/gradcompare.py`` from git (``HEAD``), which keeps
every label's per-batch mean vectors ``[B, D]``; ``new`` is the working-tree module (Gram matrices).

    OMP_NUM_THREADS=1 python benchmarks/bench_gradcompare_memory.py [--config small|124m]
        [--samples 8] [--batches 4] [--length 4] [--variants old,new] [--off-policy]

``small`` is n_layer=4, n_embd=384, n_head=6 with GPT-2's vocabulary (50,257 tokens); ``124m`` is GPT-2
124M (n_layer=12, n_embd=768). The old variant peaks at about 72 gradient vectors (measured on
``small``), i.e. about 36 GB on ``124m``: too much for most machines.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
import types

import torch

CONFIGS = {
    "small": dict(n_layer=4, n_embd=384, n_head=6),
    "124m": dict(n_layer=12, n_embd=768, n_head=12),
}
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    """Current resident set size in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS:
    """Context manager sampling RSS in a thread; ``peak`` is the largest value seen (bytes)."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def load_module(variant: str):
    if variant == "new":
        from klnotes.gpt2 import gradcompare

        return gradcompare
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    source = subprocess.run(
        ["git", "show", "HEAD:klnotes/gpt2/gradcompare.py"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    module = types.ModuleType("klnotes._gradcompare_old")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, "HEAD:klnotes/gpt2/gradcompare.py", "exec"), module.__dict__)
    return module


def measure(
    variant: str, config: str, samples: int, batches: int, length: int, off_policy: bool
) -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel

    gc = load_module(variant)
    cfg = GPT2Config(
        vocab_size=50257,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        **CONFIGS[config],
    )
    torch.manual_seed(0)
    reference = GPT2LMHeadModel(cfg).eval().requires_grad_(False)
    policy = gc.perturb(reference, 0.05, seed=1).requires_grad_(True)
    old = gc.perturb(reference, 0.03, seed=2) if off_policy else None
    impls = ["k1 as loss", "k2 as loss", "k3 as loss"] if off_policy else None
    prompt = torch.tensor([464, 3290, 318])
    d = sum(p.numel() for p in policy.parameters())
    # warm-up: one small backward so that allocator and autograd set-up are not counted
    gc.flat_grad(
        gc.token_logprobs(policy, prompt, torch.zeros(1, length, dtype=torch.long)).sum(),
        list(policy.parameters()),
        torch.tensor(1.0),
        retain_graph=False,
    )
    base = rss()
    start = time.perf_counter()
    with PeakRSS() as peak_sampled:
        gs = gc.sampled_gradients(
            policy,
            reference,
            prompt,
            length,
            samples,
            n_batches=batches,
            implementations=impls,
            old=old,
            seed=0,
        )
    seconds = time.perf_counter() - start
    with PeakRSS() as peak_compare:
        frame = gc.compare(gs)
    vec = d * 4
    return {
        "variant": variant,
        "config": config,
        "D": d,
        "labels": len(frame) + 1,
        "seconds": round(seconds, 1),
        "peak_sampled_in_D": round((peak_sampled.peak - base) / vec, 2),
        "peak_with_compare_in_D": round(
            (max(peak_sampled.peak, peak_compare.peak) - base) / vec, 2
        ),
        "peak_GB": round((max(peak_sampled.peak, peak_compare.peak) - base) / 1e9, 2),
        "ru_maxrss_GB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2),
        "cosine": [round(float(c), 6) for c in frame["cosine"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--length", type=int, default=4)
    parser.add_argument("--variants", default="old,new")
    parser.add_argument("--off-policy", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(
            json.dumps(
                measure(
                    args.child,
                    args.config,
                    args.samples,
                    args.batches,
                    args.length,
                    args.off_policy,
                )
            )
        )
        return
    results = []
    for variant in args.variants.split(","):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            variant,
            "--config",
            args.config,
            "--samples",
            str(args.samples),
            "--batches",
            str(args.batches),
            "--length",
            str(args.length),
        ] + (["--off-policy"] if args.off_policy else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    if len(results) == 2 and results[0]["cosine"] != results[1]["cosine"]:
        print("note: cosines differ between variants:", results[0]["cosine"], results[1]["cosine"])


if __name__ == "__main__":
    main()
