"""Value checks shared by the GPT-2 experiments' configs (presets, run specs, trainer and model configs).

Each returns a bool or raises ``ValueError`` with the owner's name, the field, the value received and
what is allowed, so that every config of :mod:`klnotes.gpt2` words its errors the same way.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import numpy as np

__all__ = [
    "MAX_SEED",
    "MAX_INT",
    "is_int",
    "is_number",
    "is_seed",
    "check_list",
    "check_seeds",
    "check_betas",
    "check_updates",
    "check_int_fields",
    "check_number_fields",
]

#: The largest seed ``torch.Generator.manual_seed`` takes.
MAX_SEED = 2**63 - 1
#: The largest count a config accepts.
MAX_INT = 2**31 - 1


def is_int(value) -> bool:
    """Whether ``value`` is an integer (Python or NumPy), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value) -> bool:
    """Whether ``value`` is a finite real number (Python or NumPy), not a bool."""
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def is_seed(value) -> bool:
    """Whether ``value`` is a seed ``torch.Generator`` takes: an int in ``[0, MAX_SEED]``."""
    return is_int(value) and 0 <= value <= MAX_SEED


def check_list(name: str, values, ok, allowed: str) -> tuple:
    """``values`` as a non-empty tuple whose items all pass ``ok``; else ValueError naming ``name``."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{name} must be a non-empty list of {allowed}, got {values!r}")
    values = tuple(values)
    bad = [v for v in values if not ok(v)]
    if not values or bad:
        raise ValueError(
            f"{name} must be a non-empty list of {allowed}, got {values!r}"
            + (f" (bad: {bad[0]!r})" if bad else "")
        )
    return values


def check_seeds(name: str, values) -> tuple:
    """``values`` as a non-empty tuple of seeds (:func:`is_seed`); else ValueError naming ``name``."""
    return check_list(name, values, is_seed, f"ints in [0, {MAX_SEED}]")


def check_betas(name: str, values) -> tuple:
    """``values`` as a non-empty tuple of KL coefficients, finite numbers >= 0; else ValueError."""
    return check_list(name, values, lambda b: is_number(b) and b >= 0, "finite numbers >= 0")


def check_updates(name: str, values) -> tuple:
    """``values`` as a non-empty tuple of updates per rollout batch, ints >= 1; else ValueError."""
    return check_list(name, values, lambda u: is_int(u) and u >= 1, "ints >= 1")


def check_int_fields(owner: str, obj, bounds: Mapping[str, tuple[int, int]]) -> None:
    """Check that each field ``name`` of ``obj`` is an int in ``[low, high]`` (``bounds[name]``).

    Raises:
        ValueError: ``"<owner>.<name> must be an int >= <low> (and <= <high>), got <value>"``
            (``a positive int`` for ``low = 1``).
    """
    for name, (low, high) in bounds.items():
        value = getattr(obj, name)
        if not (is_int(value) and low <= value <= high):
            kind = "a positive int" if low == 1 else f"an int >= {low}"
            raise ValueError(f"{owner}.{name} must be {kind} (and <= {high}), got {value!r}")


def check_number_fields(owner: str, obj, bounds: Mapping[str, tuple[float, float, bool]]) -> None:
    """Check that each field ``name`` of ``obj`` is a finite number in its interval ``bounds[name] =
    (low, high, closed)``: ``[low, high)`` when ``closed`` else ``(low, high)``.

    Raises:
        ValueError: ``"<owner>.<name> must be a number in <interval>, got <value>"``.
    """
    for name, (low, high, closed) in bounds.items():
        value = getattr(obj, name)
        ok = is_number(value) and (low <= value if closed else low < value) and value < high
        if not ok:
            bound = f"[{low}, {high})" if closed else f"({low}, {high})"
            raise ValueError(f"{owner}.{name} must be a number in {bound}, got {value!r}")
