"""Sizing of the experiments: FLOPs per training step and per gradient sweep, and run-time estimates.

:func:`step_flops` and :func:`sweep_flops` count the floating-point operations of a preset's training
step and of :doc:`chapter 7 </book/07_gpt2_gradients>`'s Monte Carlo sweeps (``2 N`` per token and
forward pass, ``6 N`` with the
backward pass, for a model of ``N`` parameters); :func:`estimate_seconds` divides them by a device's
throughput (:data:`GPU_THROUGHPUT`, assumed, or a matrix-product probe on a CPU). The presets of
:mod:`klnotes.gpt2.presets` are sized with them (:doc:`chapter 8 </book/08_gpt2_training>`'s budget for one Colab T4).
"""

from __future__ import annotations

import time

import torch

from klnotes.gpt2._checks import is_int
from klnotes.gpt2.presets import Preset, preset

__all__ = [
    "GPU_THROUGHPUT",
    "DECODE_LATENCY_S",
    "step_flops",
    "sweep_flops",
    "estimate_seconds",
    "print_estimate",
]

#: Assumed sustained throughput (FLOP/s) of ``(no-grad passes, training passes)`` per GPU kind: sampling
#: and reference passes under autocast (float16 on a T4, bfloat16 on Ampere and later), training passes
#: in float32 on a T4 (no bfloat16 there) and under bfloat16 autocast elsewhere; about a quarter of the
#: data-sheet peaks (T4: 65 TFLOP/s float16, 8 float32; H100: about 990 bfloat16), since these small
#: batches do not fill the GPU: 5-25 %. Estimates, not measurements (no GPU was available to calibrate them).
GPU_THROUGHPUT: dict[str, tuple[float, float]] = {
    "T4": (8e12, 2e12),
    "L4": (25e12, 12e12),
    "A10": (25e12, 12e12),
    "A100": (50e12, 25e12),
    "H100": (100e12, 50e12),
    "H200": (100e12, 50e12),
}
#: Seconds per sampled token on a GPU that do not shrink with FLOPs (one small kernel per layer and
#: operation while decoding with a KV cache): added per step by :func:`estimate_seconds`.
DECODE_LATENCY_S = 0.002
_PROMPT_TOKENS = 12  # a typical prompt of the tasks (GPT-2 prompts are 5-15 BPE tokens)


def step_flops(p: Preset | str, n_params: int) -> tuple[float, float]:
    r"""FLOPs of one training step of preset ``p`` with a model of ``n_params`` parameters.

    With :math:`B` completions of :math:`T` tokens and :math:`N` parameters:
    :math:`F_{\mathrm{no\ grad}} = 4NBT` and :math:`F_{\mathrm{grad}} = 6NBT`
    (:doc:`chapter 8 </book/08_gpt2_training>`'s step).

    ``(no_grad, grad)``: sampling ``B = prompts_per_step * group_size`` completions with a KV cache and
    the reference's pass over them, ``2 N B T`` each; the policy's forward and backward passes, ``6 N B T``
    (all minibatches together), where ``T`` = prompt (about 12 tokens) + ``max_new_tokens`` (an upper
    bound: completions that end early cost less). Attention's ``T^2`` term is negligible at these lengths.
    """
    p = preset(p)
    tokens = (p.prompts_per_step * p.group_size) * (_PROMPT_TOKENS + p.max_new_tokens)
    return 4.0 * n_params * tokens, 6.0 * n_params * tokens


def sweep_flops(p: Preset | str, n_params: int) -> tuple[float, float]:
    r"""FLOPs of :doc:`chapter 7 </book/07_gpt2_gradients>`'s Monte Carlo sweeps
    (:func:`klnotes.gpt2.experiments.gradient_sweeps`)
    for preset ``p``: ``(no_grad, grad)``.

    :math:`F_{\mathrm{no\ grad}} = 8Nn T\,|\alpha|` and :math:`F_{\mathrm{grad}} = 144 Nn T\,|\alpha|`
    for :math:`n` samples of :math:`T` tokens at :math:`|\alpha|` distances
    (:doc:`chapter 7 </book/07_gpt2_gradients>`, :eq:`eq-7-path`).

    Per distance ``alpha``: the on-policy comparison (every implementation) and the off-policy one (3 per-token
    losses x 3 corrections, plus their on-policy means): about 24 labels, each one forward and one backward
    pass over ``n`` responses of ``prompt + L`` tokens (``6 N n T``), plus sampling and reference passes.
    Zero for exact enumeration (tiny models: seconds).
    """
    p = preset(p)
    if p.grad_samples is None:
        return 0.0, 0.0
    tokens = p.grad_samples * (_PROMPT_TOKENS + p.grad_length)
    per_alpha_grad = 24 * 6.0 * n_params * tokens
    per_alpha_nograd = 4 * 2.0 * n_params * tokens
    return len(p.grad_alphas) * per_alpha_nograd, len(p.grad_alphas) * per_alpha_grad


def _throughput(device) -> tuple[float, float, str]:
    """``(no-grad FLOP/s, training FLOP/s, name)`` of ``device``: :data:`GPU_THROUGHPUT` by GPU name,
    else a 0.2-second matrix-product probe (a quarter of it: small batches do not reach matmul speed)."""

    device = torch.device(device) if device is not None else torch.device("cpu")
    name = "CPU"
    if device.type == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(device)
        for kind, rates in GPU_THROUGHPUT.items():
            if kind in name.replace("-", " ").upper().split() or f" {kind}" in name.upper():
                return rates[0], rates[1], name
    a = torch.randn(512, 512, device=device)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < 0.2:
        a @ a
        n += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    rate = 0.25 * n * 2 * 512**3 / (time.perf_counter() - start)
    return rate, rate, name


def estimate_seconds(
    p: Preset | str,
    n_params: int,
    *,
    device=None,
    runs: int = 1,
    steps: int | None = None,
    sweeps: bool = False,
) -> float:
    r"""Estimated seconds of ``runs`` training runs of ``steps`` (default the preset's) steps, or of the
    gradient sweeps (``sweeps=True``), from :func:`step_flops` / :func:`sweep_flops` and the device's
    throughput (:data:`GPU_THROUGHPUT`, or a matrix-product probe). An estimate: the GPU
    throughputs are assumed, not measured.

    :math:`t = F_{\mathrm{no\ grad}}/R_{\mathrm{no\ grad}} + F_{\mathrm{grad}}/R_{\mathrm{grad}}
    + S\,T_{\mathrm{new}}\,\lambda` for :math:`S` steps of :math:`T_{\mathrm{new}}` sampled tokens at the
    decode latency :math:`\lambda` (:data:`DECODE_LATENCY_S`, on a GPU only);
    :doc:`chapters 7 </book/07_gpt2_gradients>` and :doc:`8 </book/08_gpt2_training>` print it
    before they train.

    Raises:
        ValueError: ``n_params`` or ``runs`` not an int >= 1, ``steps`` not an int >= 1 or None.
    """
    p = preset(p)
    for name, value in (
        ("n_params", n_params),
        ("runs", runs),
        ("steps", 1 if steps is None else steps),
    ):
        if not (is_int(value) and value >= 1):
            raise ValueError(
                f"{name} must be an int >= 1{' or None' if name == 'steps' else ''}, got {value!r}"
            )
    no_grad, grad = sweep_flops(p, n_params) if sweeps else step_flops(p, n_params)
    count = 1 if sweeps else runs * (p.steps if steps is None else steps)
    no_grad, grad = no_grad * count, grad * count
    fast, slow, name = _throughput(device)
    latency = 0.0 if sweeps or name == "CPU" else count * p.max_new_tokens * DECODE_LATENCY_S
    return no_grad / fast + grad / slow + latency


def print_estimate(
    what: str,
    p: Preset | str,
    model,
    *,
    device=None,
    runs: int = 1,
    steps: int | None = None,
    sweeps: bool = False,
) -> float:
    """Print the FLOPs and estimated run time of ``what`` (before starting it); return the seconds.

    :doc:`Chapters 7 </book/07_gpt2_gradients>` and :doc:`8 </book/08_gpt2_training>` call it before
    the ``gpu`` scale's sweeps and runs.
    """
    p = preset(p)
    n = sum(x.numel() for x in model.parameters())
    no_grad, grad = sweep_flops(p, n) if sweeps else step_flops(p, n)
    count = 1 if sweeps else runs * (p.steps if steps is None else steps)
    seconds = estimate_seconds(p, n, device=device, runs=runs, steps=steps, sweeps=sweeps)
    _, _, name = _throughput(device)
    print(
        f"{what}: {count * (no_grad + grad) / 1e12:,.1f} TFLOP ({n / 1e6:.1f}M parameters); "
        f"estimated {seconds / 60:.1f} min on this {name} (from FLOPs and an assumed throughput)",
        flush=True,
    )
    return seconds
