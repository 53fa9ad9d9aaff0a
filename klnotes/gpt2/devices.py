"""Device settings: fast matrix products on GPUs, mixed precision, and a deterministic mode.

- :func:`configure` turns on TF32 matrix products on NVIDIA Ampere and later GPUs (compute capability
  >= 8: A100, L4, H100; not the T4), and, when ``KLNOTES_DETERMINISTIC=1`` (or ``deterministic=True``),
  PyTorch's deterministic algorithms (``torch.use_deterministic_algorithms``, ``CUBLAS_WORKSPACE_CONFIG``),
  at some cost in speed.
- :func:`autocast` is the mixed-precision context of the forward passes on a GPU: bfloat16 where the GPU
  supports it (Ampere and later), float16 otherwise (T4); a no-op on the CPU. Log-probabilities, KL
  estimates and gradient coefficients are computed from float32 logits outside it (callers cast with
  ``.float()`` before ``log_softmax``).

Where resume is exact: on the CPU, a resumed run repeats an uninterrupted one bit for bit. On CUDA,
only with the deterministic mode (and the same GPU model and library versions); without it, matrix
products may add in a different order from run to run and resumed runs drift at round-off level.
"""

from __future__ import annotations

import contextlib
import os

import torch

__all__ = ["configure", "autocast", "amp_dtype", "DETERMINISTIC_ENV"]

#: Set to 1 for deterministic CUDA algorithms (bit-identical reruns and resumes on the same GPU).
DETERMINISTIC_ENV = "KLNOTES_DETERMINISTIC"


def _want_deterministic(deterministic: bool | None) -> bool:
    if deterministic is not None:
        return bool(deterministic)
    return os.environ.get(DETERMINISTIC_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def configure(
    device: str | torch.device | None = None, *, deterministic: bool | None = None
) -> dict:
    """Apply the settings above for ``device``; return what was set (``tf32``, ``deterministic``).

    (:doc:`Chapters 7 </book/07_gpt2_gradients>` and :doc:`8 </book/08_gpt2_training>` on a GPU.)

    ``device=None`` or a CPU device changes nothing but the deterministic flag (CPU kernels are
    deterministic already).
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    det = _want_deterministic(deterministic)
    tf32 = False
    if device.type == "cuda" and torch.cuda.is_available():
        major, _ = torch.cuda.get_device_capability(device)
        tf32 = major >= 8 and not det
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        if det:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
    if det:
        torch.use_deterministic_algorithms(True, warn_only=False)
    return {"tf32": tf32, "deterministic": det}


def amp_dtype(device: str | torch.device | None) -> torch.dtype | None:
    """The autocast dtype on ``device``: bfloat16 on GPUs that support it, float16 on older GPUs, None on CPU.

    (:doc:`Chapters 7 </book/07_gpt2_gradients>` and :doc:`8 </book/08_gpt2_training>` on a GPU.)
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: str | torch.device | None, *, training: bool = False):
    """Mixed-precision context for forward passes on ``device`` (a no-op on the CPU).

    (:doc:`Chapters 7 </book/07_gpt2_gradients>` and :doc:`8 </book/08_gpt2_training>` on a GPU.)

    ``training=True`` (a forward pass that is differentiated): bfloat16 only; on GPUs without it (T4) the
    pass stays float32 (float16 gradients would need loss scaling), as it does in deterministic mode.
    """
    dtype = amp_dtype(device)
    if dtype is None or (training and (dtype != torch.bfloat16 or _want_deterministic(None))):
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)
