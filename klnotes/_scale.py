"""Scale presets: the same chapter runs small on a CPU and at full size on a GPU.

``scale()`` decides which preset applies on this machine:

1. the environment variable ``KLNOTES_SCALE`` (``smoke``, ``cpu`` or ``gpu``) wins;
2. otherwise ``smoke`` when the ``CI`` variable is set (continuous integration);
3. otherwise ``gpu`` when CUDA is available, else ``cpu``.

Each experiment states what each preset means (model, steps, batch).
"""

from __future__ import annotations

import os
import random

SCALES: tuple[str, ...] = ("smoke", "cpu", "gpu")
ENV_VAR = "KLNOTES_SCALE"


def scale() -> str:
    """Return the scale preset for this machine: ``"smoke"``, ``"cpu"`` or ``"gpu"``.

    Raises:
        ValueError: if ``KLNOTES_SCALE`` is set to anything other than the allowed names.
    """
    value = os.environ.get(ENV_VAR)
    if value is not None and value.strip() != "":
        name = value.strip().lower()
        if name not in SCALES:
            raise ValueError(
                f"{ENV_VAR}={value!r} is not a known scale; allowed: {', '.join(SCALES)}"
            )
        return name
    if os.environ.get("CI"):
        return "smoke"
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def seed_everything(seed: int) -> int:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) with ``seed``; return it.

    Raises:
        TypeError: if ``seed`` is not an integer.
        ValueError: if ``seed`` is negative or does not fit in 32 bits.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return seed
