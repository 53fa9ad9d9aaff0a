r"""Exact enumeration in float64: categorical policies and tiny autoregressive policies.

Every expectation here is a finite sum, so every "expected gradient" is exact up to float64 rounding.
Notation as in :mod:`klnotes.core.estimators`: ``u = log pi_theta(y) - log pi_ref(y)``, ``delta = exp(-u)``.

**Categorical** (one action, logits ``[..., V]``; leading dimensions are independent contexts ``x``):
the reverse and forward KL (eq-1-kl, and swapped) and the expected gradient of a surrogate
:math:`s` (eq-4-expected-gradient),

.. math::

    \mathrm{KL}(\pi_\theta\,\|\,\pi_{\mathrm{ref}}) &= \sum_y \pi_\theta(y)\,
        \big(\log\pi_\theta(y) - \log\pi_{\mathrm{ref}}(y)\big), \\
    \mathrm{KL}(\pi_{\mathrm{ref}}\,\|\,\pi_\theta) &= \sum_y \pi_{\mathrm{ref}}(y)\,
        \big(\log\pi_{\mathrm{ref}}(y) - \log\pi_\theta(y)\big), \\
    g_s &= \sum_y \mathrm{sg}\big(\pi_b(y)\big)\,
        \nabla_\theta\, s\big(\log\pi_\theta(y), \log\pi_{\mathrm{ref}}(y)\big),

with ``pi_b = pi_theta`` on-policy or a behaviour policy ``pi_old`` (an off-policy surrogate also takes
``log pi_old(y)``); ``sg`` (stop-gradient) on the
sampling weight is what autodiff on a sampled batch does (the sampler is not differentiated).

**Autoregressive** (every sequence ``y = (y_1..y_L)`` over vocabulary ``{0..V-1}``; ``N = V^L``).
:class:`SequenceSpace` holds ``seqs [N, L]`` in lexicographic order and ``prefix [N, L]``, the index of
the prefix ``s_t = y_{<t}`` among the ``P = (V^L - 1)/(V - 1)`` prefixes (all prefixes of length
``0..L-1``, shorter ones first, each length in lexicographic order). A policy is either

- tabular logits ``[P, V]`` (prefix- and position-dependent; gradients are taken w.r.t. this tensor), or
- a causal ``logits_fn(seqs: LongTensor[N, L]) -> Tensor[N, L, V]`` whose logits at position ``t`` depend
  only on ``y_{<t}`` (e.g. a tiny transformer fed a BOS token and the shifted sequence); gradients are
  taken w.r.t. the ``params`` you pass. Outputs are cast to float64 (use ``model.double()`` for exactness).

The four objectives (:data:`OBJECTIVES`): sequence reverse KL (eq-5-seq-rkl), sequence forward KL,
per-token reverse KL (eq-5-tok-rkl, eq-4-token-kl) and per-token forward KL (eq-5-tok-fkl),

.. math::

    &\textstyle\sum_y \pi(y)\,\big(\log\pi(y) - \log\pi_{\mathrm{ref}}(y)\big), \\
    &\textstyle\sum_y \pi_{\mathrm{ref}}(y)\,\big(\log\pi_{\mathrm{ref}}(y) - \log\pi(y)\big), \\
    &\textstyle\sum_t \mathbb{E}_{s_t\sim \mathrm{sg}(\pi)}\,
        \mathrm{KL}\big(\pi(\cdot\mid s_t)\,\|\,\pi_{\mathrm{ref}}(\cdot\mid s_t)\big), \\
    &\textstyle\sum_t \mathbb{E}_{s_t\sim \mathrm{sg}(\pi)}\,
        \mathrm{KL}\big(\pi_{\mathrm{ref}}(\cdot\mid s_t)\,\|\,\pi(\cdot\mid s_t)\big).

The per-token objectives weight each position's KL by the prefix probability under ``pi_theta``,
*held fixed* in the gradient (``sg``): that is the "partial gradient" that per-token "as loss" terms
produce ({cite:t}`tang2025pitfalls`). Their values are unaffected by ``sg`` (and the per-token reverse
KL's value equals the sequence reverse KL by the chain rule of KL); pass ``detach_prefix=False`` to
:func:`token_kl` for the full derivative.

Sizes: at most :data:`MAX_SEQUENCES` sequences. ``V = 4, L = 8`` (65,536 sequences) gives an exact
gradient in well under a second (``benchmarks/bench_exact.py``).
"""

from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Sequence, Union

import pandas as pd
import torch

from klnotes.core import coefficients
from klnotes.core import surrogates as _surrogates

__all__ = [
    "check_logits",
    "MAX_SEQUENCES",
    "DIRECTIONS",
    "OBJECTIVES",
    "categorical_logp",
    "categorical_kl",
    "categorical_kl_gradient",
    "categorical_expected_gradient",
    "categorical_implementation_gradient",
    "random_categorical",
    "SequenceSpace",
    "random_tabular",
    "perturb",
    "next_token_logp",
    "token_logp",
    "sequence_logp",
    "sequence_probs",
    "sequence_kl",
    "token_kl",
    "objective",
    "objective_gradient",
    "expected_gradient",
    "sequence_surrogate",
    "flatten",
    "relative_error",
    "check_close",
    "cosine_similarity",
    "categorical_chi_square",
    "TinyTransformer",
    "distance_sweep",
]

#: Largest number of sequences ``V^L`` that :class:`SequenceSpace` enumerates.
MAX_SEQUENCES: int = 2_000_000
#: KL directions: ``"reverse"`` = KL(pi_theta || pi_ref), ``"forward"`` = KL(pi_ref || pi_theta).
DIRECTIONS: tuple[str, ...] = ("reverse", "forward")
#: Objectives of :func:`objective` / :func:`objective_gradient` (same names as :mod:`klnotes.frameworks`).
OBJECTIVES: tuple[str, ...] = (
    "sequence reverse KL",
    "per-token reverse KL",
    "sequence forward KL",
    "per-token forward KL",
)

Policy = Union[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


# --- validation ---------------------------------------------------------------------------------


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown KL direction {direction!r}; allowed: {', '.join(DIRECTIONS)}")


def _check_finite(name: str, x: torch.Tensor) -> None:
    bad = ~torch.isfinite(x.detach())
    if bool(bad.any()):
        first = [tuple(i) for i in torch.nonzero(bad)[:3].tolist()]
        raise ValueError(
            f"{name} has {int(bad.sum())} non-finite value(s) of {x.numel()} (first at {first}); {name} must be finite"
        )


def check_logits(
    name: str, x, *, last: int | None = None, shape: tuple | None = None
) -> torch.Tensor:
    """Return ``x`` if it is a finite floating tensor of logits (of ``shape``, or with ``last`` entries in its
    last dimension); else raise an error that names ``name``, the value received and what is allowed.

    (:doc:`Chapters 2 </book/02_value_estimation>` to :doc:`6 </book/06_off_policy>`.)
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of logits, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    if shape is not None and tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(x.shape)}")
    if last is not None and (x.dim() == 0 or x.shape[-1] != last):
        raise ValueError(f"{name} must have shape [..., {last}], got {tuple(x.shape)}")
    if x.dim() == 0 or x.shape[-1] < 2:
        raise ValueError(
            f"{name} must have shape [..., V] with V >= 2 outcomes, got {tuple(x.shape)}"
        )
    _check_finite(name, x)
    return x


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(torch.float64).clone().requires_grad_(True)


def _surrogate_arity(surrogate: Callable) -> int:
    """Number of positional arguments the surrogate takes (2 = (logp, logp_ref), 3 adds logp_old)."""
    try:
        params = inspect.signature(surrogate).parameters.values()
    except (TypeError, ValueError):
        return 2
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return 3
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return 3 if len(positional) >= 3 else 2


# --- categorical --------------------------------------------------------------------------------


def categorical_logp(logits: torch.Tensor) -> torch.Tensor:
    r"""``log softmax(logits)`` in float64, ``[..., V]`` -> ``[..., V]`` (validated: finite, V >= 2).

    :math:`\log\pi(y) = z_y - \log\sum_v e^{z_v}` (:doc:`chapters 2 </book/02_value_estimation>` to
    :doc:`4 </book/04_theorems>`).
    """
    return torch.log_softmax(check_logits("logits", logits).to(torch.float64), dim=-1)


def _kl_logp(logp: torch.Tensor, logp_ref: torch.Tensor, direction: str) -> torch.Tensor:
    if direction == "reverse":
        return (logp.exp() * (logp - logp_ref)).sum(-1)
    return (logp_ref.exp() * (logp_ref - logp)).sum(-1)


def categorical_kl(
    logits: torch.Tensor, ref_logits: torch.Tensor, direction: str = "reverse"
) -> torch.Tensor:
    r"""Exact :math:`\mathrm{KL}(\pi\,\|\,\pi') = \sum_y \pi(y)\log\frac{\pi(y)}{\pi'(y)}`
    (:eq:`eq-1-kl`) between two
    categorical policies given by logits, float64, per context.

    ``direction="reverse"``: ``sum_y pi(y) (log pi(y) - log pi_ref(y))``; ``"forward"``: the same with
    ``pi`` and ``pi_ref`` swapped. ``logits``, ``ref_logits``: ``[..., V]``, same shape. Returns ``[...]``
    (differentiable in ``logits``).

    Raises:
        ValueError: unknown direction (lists :data:`DIRECTIONS`), shape mismatch, non-finite logits.
    """
    _check_direction(direction)
    check_logits("logits", logits)
    check_logits("ref_logits", ref_logits, shape=tuple(logits.shape))
    return _kl_logp(categorical_logp(logits), categorical_logp(ref_logits), direction)


def categorical_kl_gradient(
    logits: torch.Tensor, ref_logits: torch.Tensor, direction: str = "reverse"
) -> torch.Tensor:
    r"""Exact gradient w.r.t. ``logits`` of ``sum_contexts KL`` (row ``b`` = gradient of context ``b``'s KL).

    :math:`\nabla_z \mathrm{KL}(\pi_z\,\|\,\pi_{\mathrm{ref}}) = \pi \odot (u - \mathbb{E}_\pi[u])`
    (:eq:`eq-3-rkl-gradient`), :math:`\nabla_z \mathrm{KL}(\pi_{\mathrm{ref}}\,\|\,\pi_z) = \pi - \pi_{\mathrm{ref}}`.

    Closed forms (for checking): reverse ``pi * (u - E_pi[u])``; forward ``pi - pi_ref``.
    Shapes: ``[..., V]`` in, ``[..., V]`` float64 out, detached.
    """
    leaf = _leaf(check_logits("logits", logits))
    with torch.enable_grad():
        (g,) = torch.autograd.grad(categorical_kl(leaf, ref_logits, direction).sum(), leaf)
    return g


def categorical_expected_gradient(
    surrogate: Callable[..., torch.Tensor],
    logits: torch.Tensor,
    ref_logits: torch.Tensor,
    behaviour_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Exact ``E_{y ~ pi_b}[grad_logits surrogate(y)]``, float64, ``[..., V]`` (per context).

    :math:`g_s = \sum_y \mathrm{sg}(\pi_b(y))\,\nabla_z\, s(\log\pi_z(y), \log\pi_{\mathrm{ref}}(y))`
    (:eq:`eq-4-expected-gradient`; off-policy :eq:`eq-6-naive` for a surrogate without a ratio).

    Equation: ``sum_y sg(pi_b(y)) * grad s(log pi_theta(y), log pi_ref(y)[, log pi_old(y)])`` with
    ``pi_b = pi_theta`` (on-policy, ``behaviour_logits=None``; then ``logp_old = sg(logp)``) or
    ``pi_b = pi_old = softmax(behaviour_logits)``.

    Args:
        surrogate: elementwise ``(logp, logp_ref) -> tensor`` or ``(logp, logp_ref, logp_old) -> tensor``;
            it receives the log-probabilities of *all* outcomes, ``[..., V]``, and must return that
            shape (one surrogate value per outcome), e.g.
            ``lambda lp, lr: klnotes.core.surrogates.surrogate("k3 as loss", lp, lr)``.
        logits, ref_logits, behaviour_logits: ``[..., V]``, same shape, finite.

    Raises:
        TypeError: surrogate not callable or not returning a tensor. ValueError: bad shapes/values.
    """
    if not callable(surrogate):
        raise TypeError(f"surrogate must be callable, got {type(surrogate).__name__}")
    check_logits("logits", logits)
    shape = tuple(logits.shape)
    logp_ref = categorical_logp(check_logits("ref_logits", ref_logits, shape=shape)).detach()
    leaf = _leaf(logits)
    with torch.enable_grad():
        logp = torch.log_softmax(leaf, -1)
        if behaviour_logits is None:
            logp_old = logp.detach()
        else:
            logp_old = categorical_logp(
                check_logits("behaviour_logits", behaviour_logits, shape=shape)
            ).detach()
        args = (logp, logp_ref, logp_old) if _surrogate_arity(surrogate) == 3 else (logp, logp_ref)
        out = surrogate(*args)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"surrogate must return a torch.Tensor, got {type(out).__name__}")
        if tuple(out.shape) != shape:
            raise ValueError(
                f"surrogate must return one value per outcome, shape {shape}; got {tuple(out.shape)}"
            )
        if not out.requires_grad:
            return torch.zeros(shape, dtype=torch.float64)
        (g,) = torch.autograd.grad((logp_old.exp() * out).sum(), leaf)
    return g


def categorical_implementation_gradient(
    label: str,
    logits: torch.Tensor,
    ref_logits: torch.Tensor,
    behaviour_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Exact expected gradient of an implementation (``"k3 as loss"``, ...) for a categorical policy.

    On-policy it is :math:`\mathbb{E}_\pi[c(y)\,\nabla\log\pi(y)]` with the implementation's coefficient
    :math:`c` (:eq:`eq-3-coefficient`, :eq:`eq-4-expected-gradient`).

    :func:`categorical_expected_gradient` of :func:`klnotes.core.surrogates.surrogate` ``(label, logp, logp_ref)``
    (no importance weight: off-policy this is the *naive* estimate). Shapes ``[..., V]``.

    Raises:
        ValueError: unknown label (lists :data:`klnotes.core.coefficients.IMPLEMENTATIONS`).
    """
    coefficients.parse_implementation(label)
    return categorical_expected_gradient(
        lambda lp, lr: _surrogates.surrogate(label, lp, lr), logits, ref_logits, behaviour_logits
    )


def random_categorical(
    vocab: int, *, scale: float = 1.0, seed: int = 0, contexts: int | None = None
) -> torch.Tensor:
    r"""Logits ``scale * N(0, 1)``, float64, ``[V]`` (or ``[contexts, V]``), reproducible from ``seed``.

    :math:`z = s\,\varepsilon`, :math:`\varepsilon \sim \mathcal N(0, 1)` per entry
    (:doc:`chapters 2 </book/02_value_estimation>` to :doc:`9 </book/09_in_practice>`).

    Raises:
        ValueError: ``vocab < 2``; ``scale`` not a finite number >= 0; ``seed`` not an int >= 0;
            ``contexts`` not an int >= 1 or None.
    """
    _check_vocab(vocab)
    _check_nonnegative("scale", scale)
    _check_seed(seed)
    if contexts is not None and (
        isinstance(contexts, bool) or not isinstance(contexts, numbers.Integral) or contexts < 1
    ):
        raise ValueError(f"contexts must be an int >= 1 or None, got {contexts!r}")
    gen = torch.Generator().manual_seed(int(seed))
    shape = (vocab,) if contexts is None else (int(contexts), vocab)
    return float(scale) * torch.randn(shape, generator=gen, dtype=torch.float64)


# --- the space of sequences ---------------------------------------------------------------------


def _check_nonnegative(name: str, value) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")


def _check_vocab(vocab) -> None:
    if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 2:
        raise ValueError(f"vocab must be an integer >= 2, got {vocab!r}")


@dataclass(frozen=True)
class SequenceSpace:
    r"""All ``N = V^L`` sequences of length ``L`` over the vocabulary ``{0, ..., V-1}``.

    :math:`N = V^L` sequences and :math:`P = \sum_{t<L} V^t = (V^L - 1)/(V - 1)` prefixes
    (:doc:`chapters 4 </book/04_theorems>`
    to :doc:`6 </book/06_off_policy>`).

    Attributes:
        vocab: ``V >= 2``. length: ``L >= 1``. ``V^L <= MAX_SEQUENCES``.
        num_sequences: ``N = V^L``.
        num_prefixes: ``P = sum_{t<L} V^t = (V^L - 1) / (V - 1)`` (prefixes of length ``0..L-1``).
        seqs: ``LongTensor [N, L]``, row ``n`` is ``n`` written in base ``V`` (lexicographic order).
        prefix: ``LongTensor [N, L]``, ``prefix[n, t]`` is the index of ``y_{<t}``:
            ``(V^t - 1)/(V - 1) + n // V^(L - t)`` (built by base-``V`` arithmetic, no Python loop
            over sequences).

    Raises:
        ValueError: vocab not an integer >= 2, length not an integer >= 1, or ``V^L`` above
            :data:`MAX_SEQUENCES`.
    """

    vocab: int
    length: int
    num_sequences: int = field(init=False)
    num_prefixes: int = field(init=False)
    seqs: torch.Tensor = field(init=False, repr=False, compare=False)
    prefix: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        _check_vocab(self.vocab)
        if isinstance(self.length, bool) or not isinstance(self.length, int) or self.length < 1:
            raise ValueError(f"length must be an integer >= 1, got {self.length!r}")
        V, L = self.vocab, self.length
        n = V**L
        if n > MAX_SEQUENCES:
            raise ValueError(
                f"SequenceSpace(vocab={V}, length={L}) has V^L = {n:,} sequences; exact enumeration allows "
                f"at most {MAX_SEQUENCES:,} (reduce vocab or length)"
            )
        idx = torch.arange(n, dtype=torch.long).unsqueeze(1)  # [N, 1]
        t = torch.arange(L, dtype=torch.long)  # [L]
        powers = V ** (L - 1 - t)  # place value of y_t
        seqs = (idx // powers) % V  # [N, L]
        offsets = (V**t - 1) // (V - 1)  # first index of the prefixes of length t
        prefix = offsets + idx // (V ** (L - t))  # [N, L]
        object.__setattr__(self, "num_sequences", n)
        object.__setattr__(self, "num_prefixes", (n - 1) // (V - 1))
        object.__setattr__(self, "seqs", seqs)
        object.__setattr__(self, "prefix", prefix)

    @property
    def tabular_shape(self) -> tuple[int, int]:
        """Shape ``(P, V)`` of tabular logits."""
        return (self.num_prefixes, self.vocab)


def random_tabular(space: SequenceSpace, *, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    r"""Tabular logits ``scale * N(0, 1)``, float64, ``[P, V]``, reproducible from ``seed``.

    :math:`z = s\,\varepsilon`, :math:`\varepsilon \sim \mathcal N(0, 1)` per entry
    (:doc:`chapters 4 </book/04_theorems>` to :doc:`6 </book/06_off_policy>`).
    """
    _check_space(space)
    gen = torch.Generator().manual_seed(int(seed))
    return float(scale) * torch.randn(space.tabular_shape, generator=gen, dtype=torch.float64)


def perturb(logits: torch.Tensor, distance: float, *, seed: int = 0) -> torch.Tensor:
    r"""``logits + distance * N(0, 1)`` (same shape, float64): a policy at a controlled distance.

    :math:`z' = z + d\,\varepsilon`, :math:`\varepsilon \sim \mathcal N(0, 1)` per entry
    (:doc:`chapters 2 </book/02_value_estimation>` to :doc:`6 </book/06_off_policy>`).

    The noise depends only on ``seed`` and the shape, so a sweep over ``distance`` moves along one
    direction (``distance = 0`` returns the logits themselves).

    Raises:
        ValueError: ``distance`` not a finite number >= 0; ``seed`` not an int >= 0; bad ``logits``.
    """
    check_logits("logits", logits)
    _check_nonnegative("distance", distance)
    _check_seed(seed)
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(tuple(logits.shape), generator=gen, dtype=torch.float64)
    return logits.detach().to(torch.float64) + float(distance) * noise


def _check_space(space) -> SequenceSpace:
    if not isinstance(space, SequenceSpace):
        raise TypeError(f"space must be a SequenceSpace, got {type(space).__name__}")
    return space


# --- policies over sequences --------------------------------------------------------------------


def _logits_fn_output(space: SequenceSpace, fn: Callable, name: str) -> torch.Tensor:
    out = fn(space.seqs)
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"{name}(seqs) must return a torch.Tensor [N, L, V], got {type(out).__name__}"
        )
    expected = (space.num_sequences, space.length, space.vocab)
    if tuple(out.shape) != expected:
        raise ValueError(
            f"{name}(seqs) must return logits of shape [N, L, V] = {expected}, got {tuple(out.shape)}"
        )
    check_logits(f"{name}(seqs)", out)
    out = out.to(torch.float64)
    # Causality: every sequence sharing the prefix y_{<t} must get the same logits at t.
    flat = out.detach().reshape(-1, space.vocab)
    table = torch.zeros(space.tabular_shape, dtype=torch.float64)
    table[space.prefix.reshape(-1)] = flat
    gap = (table[space.prefix.reshape(-1)] - flat).abs().max()
    tol = 1e-5 * max(1.0, float(flat.abs().max()))
    if float(gap) > tol:
        raise ValueError(
            f"{name} is not causal: logits at position t differ (by up to {float(gap):.3g}) between sequences "
            "with the same prefix y_{<t}; logits at t must depend only on the tokens before t"
        )
    return out


def next_token_logp(space: SequenceSpace, policy: Policy, *, name: str = "policy") -> torch.Tensor:
    r"""Full next-token log-distributions ``log pi(. | y_{<t})`` at every position, ``[N, L, V]``, float64.

    :math:`\log\pi(\cdot\mid s_t) = \log\mathrm{softmax}(z(s_t))`
    (:doc:`chapters 5 </book/05_sequences>` and :doc:`6 </book/06_off_policy>`).

    ``policy``: tabular logits ``[P, V]`` or a causal ``logits_fn(seqs [N, L]) -> [N, L, V]``.

    Raises:
        ValueError: wrong logits shape (says the expected one), non-finite logits, a non-causal logits_fn.
        TypeError: a policy that is neither a tensor nor callable.
    """
    _check_space(space)
    if isinstance(policy, torch.Tensor):
        check_logits(name, policy, shape=space.tabular_shape)
        return torch.log_softmax(policy.to(torch.float64), -1)[space.prefix]
    if callable(policy):
        return torch.log_softmax(_logits_fn_output(space, policy, name), -1)
    raise TypeError(
        f"{name} must be tabular logits (a tensor {space.tabular_shape}) or a callable logits_fn, "
        f"got {type(policy).__name__}"
    )


def token_logp(space: SequenceSpace, policy: Policy, *, name: str = "policy") -> torch.Tensor:
    r"""``log pi(y_t | y_{<t})`` of every token of every sequence, ``[N, L]``, float64.

    :math:`\log\pi(y_t\mid y_{<t})` (:eq:`eq-5-log-ratios`).
    """
    _check_space(space)
    if isinstance(policy, torch.Tensor):
        check_logits(name, policy, shape=space.tabular_shape)
        table = torch.log_softmax(policy.to(torch.float64), -1)  # [P, V]
        return table[space.prefix, space.seqs]
    return (
        next_token_logp(space, policy, name=name).gather(-1, space.seqs.unsqueeze(-1)).squeeze(-1)
    )


def sequence_logp(space: SequenceSpace, policy: Policy, *, name: str = "policy") -> torch.Tensor:
    r""":math:`\log\pi(y) = \sum_t \log\pi(y_t\mid y_{<t})`, ``[N]``, float64
    (:eq:`eq-5-log-ratios`)."""
    return token_logp(space, policy, name=name).sum(-1)


def sequence_probs(space: SequenceSpace, policy: Policy, *, name: str = "policy") -> torch.Tensor:
    r"""``pi(y)`` of every sequence, ``[N]``, float64; sums to 1.

    :math:`\pi(y) = \prod_t \pi(y_t\mid y_{<t})` (:doc:`chapter 5 </book/05_sequences>`).
    """
    return sequence_logp(space, policy, name=name).exp()


def prefix_probs(space: SequenceSpace, policy: Policy, *, name: str = "policy") -> torch.Tensor:
    """Probability that ``policy`` generates each prefix (the rows of tabular logits), ``[P]``, float64:
    ``P(s) = sum_{y extends s} pi(y)``; the empty prefix has probability 1."""
    probs = sequence_probs(space, policy, name=name)
    out = torch.zeros(space.num_prefixes, dtype=torch.float64)
    for t in range(space.length):
        out.index_add_(0, space.prefix[:, t], probs)
    return out


def sequence_kl(
    space: SequenceSpace, policy: Policy, ref: Policy, direction: str = "reverse"
) -> torch.Tensor:
    r"""Exact sequence-level KL, a scalar (differentiable in ``policy``).

    :math:`\sum_y \pi(y)\log\frac{\pi(y)}{\pi_{\mathrm{ref}}(y)}` (:eq:`eq-5-seq-rkl`) or
    :math:`\sum_y \pi_{\mathrm{ref}}(y)\log\frac{\pi_{\mathrm{ref}}(y)}{\pi(y)}` (:eq:`eq-5-seq-fkl`).

    reverse: ``sum_y pi(y) (log pi(y) - log pi_ref(y))`` (eq-5-seq-rkl);
    forward: ``sum_y pi_ref(y) (log pi_ref(y) - log pi(y))``.
    """
    _check_direction(direction)
    lp = sequence_logp(space, policy)
    lr = sequence_logp(space, ref, name="ref").detach()
    return _kl_logp(lp, lr, direction)


def token_kl(
    space: SequenceSpace,
    policy: Policy,
    ref: Policy,
    direction: str = "reverse",
    *,
    detach_prefix: bool = True,
) -> torch.Tensor:
    r"""Exact per-token KL: ``sum_t E_{s_t ~ pi} KL_t``, a scalar (eq-5-tok-rkl / eq-5-tok-fkl).

    :math:`\sum_t \mathbb{E}_{s_t\sim\mathrm{sg}(\pi)}\mathrm{KL}_t` (:eq:`eq-5-tok-rkl`,
    :eq:`eq-5-tok-fkl`).

    ``KL_t = KL(pi(.|s_t) || pi_ref(.|s_t))`` (reverse) or ``KL(pi_ref(.|s_t) || pi(.|s_t))`` (forward);
    computed as ``sum_y sg(pi(y)) sum_t KL_t(y_{<t})`` (summing over whole sequences marginalizes the
    future). ``detach_prefix=True`` holds the prefix weights fixed in the gradient (the partial
    gradient of per-token losses); the value is the same either way.
    """
    _check_direction(direction)
    a = next_token_logp(space, policy)
    a_ref = next_token_logp(space, ref, name="ref").detach()
    w = a.gather(-1, space.seqs.unsqueeze(-1)).squeeze(-1).sum(-1).exp()
    if detach_prefix:
        w = w.detach()
    return (w * _kl_logp(a, a_ref, direction).sum(-1)).sum()


def objective(space: SequenceSpace, policy: Policy, ref: Policy, name: str) -> torch.Tensor:
    """Value of one of :data:`OBJECTIVES` (scalar, differentiable in ``policy``).

    The four objectives are :eq:`eq-5-seq-rkl`, :eq:`eq-5-tok-rkl`, :eq:`eq-5-seq-fkl` and
    :eq:`eq-5-tok-fkl` (:doc:`chapter 5 </book/05_sequences>`).

    Raises:
        ValueError: unknown objective name (lists :data:`OBJECTIVES`).
    """
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; allowed: {', '.join(OBJECTIVES)}")
    level, direction = name.split()[0], name.split()[1]
    if level == "sequence":
        return sequence_kl(space, policy, ref, direction)
    return token_kl(space, policy, ref, direction)


def _grad(space, policy, params, value_fn):
    """Gradient of ``value_fn(policy)`` w.r.t. tabular logits (a tensor) or ``params`` (a tuple)."""
    if isinstance(policy, torch.Tensor):
        check_logits("policy", policy, shape=_check_space(space).tabular_shape)
        leaf = _leaf(policy)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(value_fn(leaf), leaf)
        return g
    if not callable(policy):
        raise TypeError(
            f"policy must be tabular logits or a callable logits_fn, got {type(policy).__name__}"
        )
    if params is None:
        raise ValueError(
            "a callable policy needs params: the tensors (e.g. model.parameters()) to differentiate"
        )
    params = tuple(params)
    if not params or not all(isinstance(p, torch.Tensor) and p.requires_grad for p in params):
        raise ValueError("params must be a non-empty sequence of tensors with requires_grad=True")
    with torch.enable_grad():
        grads = torch.autograd.grad(value_fn(policy), params, allow_unused=True)
    return tuple(torch.zeros_like(p) if g is None else g for p, g in zip(params, grads))


def objective_gradient(
    space: SequenceSpace,
    policy: Policy,
    ref: Policy,
    name: str,
    params: Sequence[torch.Tensor] | None = None,
):
    """Exact gradient of one of :data:`OBJECTIVES`.

    For the sequence reverse KL it is :eq:`eq-5-seq-gradient` (:doc:`chapter 5 </book/05_sequences>`).

    Returns:
        For tabular ``policy`` ``[P, V]``: the gradient w.r.t. it, ``[P, V]`` float64. For a callable
        ``policy``: a tuple of gradients, one per tensor in ``params``.

    Raises:
        ValueError: unknown objective (lists :data:`OBJECTIVES`), missing ``params`` for a callable.
    """
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; allowed: {', '.join(OBJECTIVES)}")
    return _grad(space, policy, params, lambda p: objective(space, p, ref, name))


SequenceSurrogate = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def expected_gradient(
    space: SequenceSpace,
    surrogate: SequenceSurrogate,
    policy: Policy,
    ref: Policy,
    behaviour: Policy | None = None,
    params: Sequence[torch.Tensor] | None = None,
):
    r"""Exact ``E_{y ~ pi_b}[grad_theta f(y)]`` of a per-sequence surrogate loss ``f``.

    :math:`g_f = \sum_y \mathrm{sg}(\pi_b(y))\,\nabla_\theta f(y)` (:eq:`eq-4-expected-gradient` over
    sequences; off-policy without a ratio, :eq:`eq-6-naive`).

    Equation: ``sum_y sg(pi_b(y)) grad_theta f(logp, logp_ref, logp_old, mask)[y]`` with ``pi_b = pi_theta``
    (on-policy, ``behaviour=None``, and then ``logp_old = sg(logp)``) or ``pi_b = pi_old`` given by
    ``behaviour`` (tabular ``[P, V]`` or a causal logits_fn). The sampling weight is detached, as
    autodiff on a sampled batch does.

    Args:
        surrogate: ``f(logp [N, L], logp_ref [N, L], logp_old [N, L], mask [N, L]) -> [N]``, one loss per
            sequence (``mask`` is all ones, float64). See :func:`sequence_surrogate` for the book's
            implementations.
        policy, ref, behaviour: tabular logits ``[P, V]`` or causal logits_fns.
        params: for a callable ``policy``, the tensors to differentiate.

    Returns:
        Tabular policy: ``[P, V]`` float64; callable policy: tuple of gradients matching ``params``.

    Raises:
        TypeError/ValueError: surrogate not callable, not returning a tensor of shape ``[N]``, bad policies.
    """
    if not callable(surrogate):
        raise TypeError(
            f"surrogate must be callable f(logp, logp_ref, logp_old, mask) -> [N], got {type(surrogate).__name__}"
        )
    lr = token_logp(space, ref, name="ref").detach()
    lo_b = None if behaviour is None else token_logp(space, behaviour, name="behaviour").detach()
    mask = torch.ones(space.num_sequences, space.length, dtype=torch.float64)

    def value(p):
        lp = token_logp(space, p)
        lo = lp.detach() if lo_b is None else lo_b
        out = surrogate(lp, lr, lo, mask)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"surrogate must return a torch.Tensor [N], got {type(out).__name__}")
        if tuple(out.shape) != (space.num_sequences,):
            raise ValueError(
                f"surrogate must return one loss per sequence, shape ({space.num_sequences},); got {tuple(out.shape)}"
            )
        weight = lo.sum(-1).exp()
        total = (weight * out).sum()
        return total if total.requires_grad else total + 0.0 * lp.sum()

    return _grad(space, policy, params, value)


def sequence_surrogate(label: str, level: str = "token") -> SequenceSurrogate:
    r"""The per-sequence loss of an implementation (``"k3 as loss"``, ...) for :func:`expected_gradient`.

    ``"token"``: :math:`f(y) = \sum_t s(u_t)` (:eq:`eq-3-as-loss` per token); ``"token-rtg"``:
    :math:`f(y) = \sum_t \mathrm{sg}\big(\sum_{s\ge t} k_n(u_s)\big)\log\pi(y_t\mid s_t)`
    (:eq:`eq-5-reward-to-go`); ``"sequence"``: :math:`f(y) = s(U)`, :math:`U = \sum_t u_t`.

    ``level``: ``"token"`` sums the per-token surrogate over positions (GRPO-style KL loss, summed);
    ``"token-rtg"`` sums ``sg(sum_{s>=t} k_n(u_s)) log pi(y_t|s_t)`` ("in reward" only: PPO's per-token
    penalty with reward-to-go); ``"sequence"`` applies the surrogate to the sequence log-ratio ``U``.
    Built on :func:`klnotes.core.surrogates.kl_loss` (``reduction="none"``).

    Raises:
        ValueError: unknown label or level (lists the allowed ones).
    """
    coefficients.parse_implementation(label)
    if level not in _surrogates.LEVELS:
        raise ValueError(f"unknown level {level!r}; allowed: {', '.join(_surrogates.LEVELS)}")
    if level == "token-rtg" and coefficients.parse_implementation(label)[1] != "in_reward":
        raise ValueError(
            f"level='token-rtg' applies to 'in reward' implementations only, got {label!r}"
        )

    def f(logp, logp_ref, logp_old, mask):
        out = _surrogates.kl_loss(label, logp, logp_ref, mask, level=level, reduction="none")
        return out if level == "sequence" else out.sum(-1)

    f.__name__ = f"{label.replace(' ', '_')}__{level}"
    return f


def flatten(grad) -> torch.Tensor:
    """One vector from a gradient: a tensor (flattened) or a tuple of tensors (concatenated).

    (:doc:`Chapter 5 </book/05_sequences>` compares gradients as flat vectors.)
    """
    if isinstance(grad, torch.Tensor):
        return grad.reshape(-1)
    return torch.cat([g.reshape(-1) for g in grad])


def relative_error(a, b) -> float:
    r""":math:`\|a - b\| / \|b\|` of two gradients (tensors or tuples, flattened); ``b`` is the
    reference.

    (:doc:`Chapters 2 </book/02_value_estimation>` to :doc:`9 </book/09_in_practice>`.)

    Returns ``||a||`` if ``b`` is exactly zero (so an exact zero matches an exact zero).
    """
    a, b = flatten(a), flatten(b)
    if a.shape != b.shape:
        raise ValueError(f"gradients have different sizes: {tuple(a.shape)} vs {tuple(b.shape)}")
    denom = float(b.norm())
    return float((a - b).norm()) / denom if denom > 0 else float(a.norm())


def check_close(got, want, *, rtol: float = 1e-12, name: str = "") -> float:
    """Assert ``relative_error(got, want) <= rtol`` and return the error (for the book's check cells).

    (:doc:`Chapter 4 </book/04_theorems>`.)

    Raises:
        AssertionError: naming the check, the error and the tolerance.
    """
    err = relative_error(got, want)
    if not err <= rtol:
        raise AssertionError(f"{name or 'check'}: relative error {err:.3g} exceeds {rtol:.1g}")
    return err


def cosine_similarity(a, b) -> float:
    r"""Cosine :math:`\langle a, b\rangle / (\|a\|\,\|b\|)` of two gradients (flattened); NaN if
    either is exactly zero.

    (:doc:`Chapter 4 </book/04_theorems>`.)
    """
    a, b = flatten(a), flatten(b)
    na, nb = float(a.norm()), float(b.norm())
    if na == 0.0 or nb == 0.0:
        return float("nan")
    return float((a @ b) / (na * nb))


def categorical_chi_square(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    r"""Exact
    :math:`\chi^2(\pi_{\mathrm{ref}}\,\|\,\pi_\theta)
    = \sum_y \pi_{\mathrm{ref}}(y)^2/\pi_\theta(y) - 1`
    (:eq:`eq-4-k3-variance`), ``[...]``.

    It is the variance under ``pi_theta`` of ``delta = pi_ref / pi_theta`` (whose mean is 1), hence of
    the "k3 as loss" coefficient ``1 - delta`` (:doc:`chapter 4 </book/04_theorems>`). Logits ``[..., V]``, float64.
    """
    check_logits("logits", logits)
    lp = categorical_logp(logits)
    lr = categorical_logp(check_logits("ref_logits", ref_logits, shape=tuple(logits.shape)))
    return torch.exp(torch.logsumexp(2 * lr - lp, -1)) - 1.0


class TinyTransformer(torch.nn.Module):
    """A tiny causal transformer policy over :class:`SequenceSpace` sequences, float64 (for enumeration).

    (:doc:`Chapter 4 </book/04_theorems>`.)

    Input ``seqs [N, L]``; the model reads ``[BOS, y_1, ..., y_{L-1}]`` with a causal mask, so its logits
    at position ``t`` (``[N, L, V]``) depend only on ``y_{<t}``: a valid ``logits_fn``. Pass
    ``list(model.parameters())`` as ``params`` to the gradient functions. One pre-norm encoder layer,
    no dropout; ``scale`` multiplies the output logits (a larger scale gives a peakier policy).
    """

    def __init__(
        self,
        vocab: int,
        length: int,
        *,
        d_model: int = 16,
        heads: int = 2,
        seed: int = 0,
        scale: float = 1.0,
    ):
        super().__init__()
        _check_vocab(vocab)
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(int(seed))
        self.vocab, self.length, self.scale = vocab, length, float(scale)
        self.embed = torch.nn.Embedding(vocab + 1, d_model)  # index `vocab` is BOS
        self.pos = torch.nn.Parameter(0.1 * torch.randn(length, d_model))
        self.block = torch.nn.TransformerEncoderLayer(
            d_model,
            heads,
            dim_feedforward=2 * d_model,
            dropout=0.0,
            batch_first=True,
            norm_first=True,
        )
        self.head = torch.nn.Linear(d_model, vocab)
        torch.random.set_rng_state(gen_state)
        self.double()
        self.register_buffer(
            "mask",
            torch.nn.Transformer.generate_square_subsequent_mask(length, dtype=torch.float64),
        )

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """``seqs [N, L]`` (long) -> logits ``[N, L, V]`` float64, causal."""
        bos = torch.full_like(seqs[:, :1], self.vocab)
        x = self.embed(torch.cat([bos, seqs[:, :-1]], dim=1)) + self.pos
        h = self.block(x, src_mask=self.mask, is_causal=True)
        return self.scale * self.head(h)


def distance_sweep(
    space: SequenceSpace,
    distances: Sequence[float],
    *,
    seeds: Sequence[int] = (0,),
    implementations: Sequence[str] | None = None,
    level: str = "sequence",
    target: str = "sequence reverse KL",
    ref_scale: float = 1.0,
):
    """Exact expected gradients of implementations against a target, as ``pi_theta`` moves away from ``pi_ref``.

    Each row compares :eq:`eq-4-expected-gradient` with the target's gradient, e.g. :eq:`eq-5-seq-gradient`
    (:doc:`chapter 4 </book/04_theorems>`).

    For each seed: ``ref = random_tabular(space, scale=ref_scale, seed)`` and, for each distance ``d``,
    ``theta = perturb(ref, d, seed=seed + 1)`` (one direction per seed). Each implementation's on-policy
    expected gradient (:func:`expected_gradient` of :func:`sequence_surrogate` at ``level``) is compared
    with the exact gradient of ``target`` (one of :data:`OBJECTIVES`). A categorical policy is the
    space ``SequenceSpace(V, 1)``.

    Returns:
        ``pandas.DataFrame`` with columns ``seed, distance, kl`` (the sequence reverse KL),
        ``implementation, cosine, rel_error, norm_ratio`` (``||g|| / ||g_target||``); ``cosine`` is NaN for
        a gradient that is zero up to rounding (``norm_ratio <= 1e-10``: k1 as loss).
    """
    labels = tuple(coefficients.IMPLEMENTATIONS if implementations is None else implementations)
    if target not in OBJECTIVES:
        raise ValueError(f"unknown objective {target!r}; allowed: {', '.join(OBJECTIVES)}")
    fns = {label: sequence_surrogate(label, level) for label in labels}
    rows = []
    for seed in seeds:
        ref = random_tabular(space, scale=ref_scale, seed=int(seed))
        for d in distances:
            theta = perturb(ref, float(d), seed=int(seed) + 1)
            g_target = objective_gradient(space, theta, ref, target)
            kl = float(sequence_kl(space, theta, ref))
            for label, fn in fns.items():
                g = expected_gradient(space, fn, theta, ref)
                ratio = float(g.norm() / g_target.norm())
                rows.append(
                    dict(
                        seed=int(seed),
                        distance=float(d),
                        kl=kl,
                        implementation=label,
                        # a gradient that is zero up to rounding (k1 as loss) has no direction
                        cosine=cosine_similarity(g, g_target) if ratio > 1e-10 else float("nan"),
                        rel_error=relative_error(g, g_target),
                        norm_ratio=ratio,
                    )
                )
    return pd.DataFrame(rows)
