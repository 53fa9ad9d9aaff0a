"""Benchmark of klnotes.analysis.exact: exact enumeration of every sequence of a tiny autoregressive policy.

Prints the median wall time (seconds) of a few runs, for V = 4, L = 8 (65,536 sequences, 21,845
tabular prefixes), of: building the space, the exact gradient of the sequence reverse KL, and the
exact expected gradient of two surrogates (sequence-level k2 as loss, whose evaluation is cheap, and
per-token k3 as loss, whose series evaluation of k3 on [N, L] dominates). Target: each under 2 s.
On a shared, oversubscribed CPU run it with OMP_NUM_THREADS=1: torch's thread pool otherwise adds
large per-operation overheads.

    python benchmarks/bench_exact.py [--vocab 4] [--length 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from klnotes.analysis import exact


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=4)
    parser.add_argument("--length", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    space = exact.SequenceSpace(args.vocab, args.length)
    theta = exact.random_tabular(space, seed=0)
    ref = exact.perturb(theta, 0.5, seed=1)
    surrogate = exact.sequence_surrogate("k3 as loss", "token")
    cheap = exact.sequence_surrogate("k2 as loss", "sequence")
    rows = {
        "build SequenceSpace": lambda: exact.SequenceSpace(args.vocab, args.length),
        "gradient of sequence reverse KL": lambda: exact.objective_gradient(
            space, theta, ref, "sequence reverse KL"
        ),
        "gradient of per-token reverse KL": lambda: exact.objective_gradient(
            space, theta, ref, "per-token reverse KL"
        ),
        "expected gradient, sequence k2 as loss": lambda: exact.expected_gradient(
            space, cheap, theta, ref
        ),
        "expected gradient, per-token k3 as loss": lambda: exact.expected_gradient(
            space, surrogate, theta, ref
        ),
    }
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        f"V={space.vocab}, L={space.length}: {space.num_sequences:,} sequences, {space.num_prefixes:,} prefixes; "
        f"median of {args.repeats} runs"
    )
    for name, fn in rows.items():
        fn()  # warm-up
        print(f"  {name:<42s} {median_time(fn, args.repeats):8.4f} s")


if __name__ == "__main__":
    main()
