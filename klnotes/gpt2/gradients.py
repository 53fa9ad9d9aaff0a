r""":doc:`Chapter 7 </book/07_gpt2_gradients>`'s gradient estimators: each KL implementation's
expected gradient on a real transformer,
exactly (all :math:`V^L` responses) or by Monte Carlo, against the principled one.

Every implementation of the KL term is a surrogate ``s(logp, logp_ref)`` of the per-token
log-probabilities ``logp [N, L]``; its per-sample gradient is :math:`\sum_t C_t\,\nabla\log\pi_t` with
the *token coefficients* :math:`C_t = \partial s/\partial\log\pi_\theta(y_t\mid s_t)`
(:func:`token_coefficients`, :doc:`chapter 3 </book/03_unified_framework>`'s coefficient, one per
token). Its expected gradient under a
sampling distribution with weights :math:`w_i` is one vector-Jacobian product (:eq:`eq-7-expected`)

.. math::

   g = \sum_i w_i \sum_t C_{it}\,\nabla_\theta\log\pi_\theta(y_{it}\mid s_{it}),

with :math:`w_i = \pi_{\mathrm{sampler}}(y_i)` over all responses (:func:`exact_gradients`) or
:math:`w_i = 1/N` over samples (:func:`sampled_gradients`). The target is the gradient of the sequence
reverse KL (:eq:`eq-7-principled`), :math:`g^* = \mathbb{E}_{\pi_\theta}[U(y)\sum_t\nabla\log\pi_\theta(y_t)]`
with :math:`U = \sum_t u_t`. Off-policy, no correction uses :math:`C` as is; ``"token"`` multiplies
:math:`C_t` by :math:`\rho_t = \pi_\theta/\pi_{\mathrm{old}}`; ``"sequence"`` by :math:`\prod_t \rho_t`.
Gradients are flattened over all parameters into one vector ``[D]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import torch

from klnotes.core import surrogates, variants
from klnotes.gpt2.losses import kl_loss
from klnotes.gpt2.responses import (
    check_prompt,
    enumerate_responses,
    full_logits,
    model_device,
    sample_responses,
    token_logprobs,
)
from klnotes.gpt2.trainconfig import ARMS

__all__ = [
    "IMPLEMENTATIONS",
    "PRINCIPLED",
    "CORRECTIONS",
    "get_implementation",
    "token_coefficients",
    "flat_grad",
    "dot64",
    "BatchGram",
    "GradientSet",
    "exact_gradients",
    "sampled_gradients",
    "exact_kl_gradient",
    "trainer_head_gradients",
]

#: Label of the principled gradient (eq-7-principled).
PRINCIPLED = "reverse KL (exact)"
#: Off-policy corrections: none (the bug), per-token ratio (PPO-style KL head), sequence ratio (exact).
CORRECTIONS: tuple[str | None, ...] = (None, "token", "sequence")


#: The implementations compared in :doc:`chapter 7 </book/07_gpt2_gradients>`, in the book's order, as
#: :class:`~klnotes.core.variants.KLVariant` (their labels, :func:`klnotes.core.variants.label`, name the rows
#: of tables and figures). Token-level terms are summed over the response (a token-mean only
#: rescales them by ``1/L``).
IMPLEMENTATIONS: tuple[variants.KLVariant, ...] = tuple(
    variants.parse(label)
    for label in (
        "k1 in reward (seq)",
        "k1 in reward (rtg)",
        "k1 as loss",
        "k2 as loss",
        "k3 as loss",
        "k2 as loss (seq)",
        "k3 as loss (seq)",
    )
)


def get_implementation(label: str | variants.KLVariant) -> variants.KLVariant:
    """The on-policy :class:`~klnotes.core.variants.KLVariant` of ``label`` (any spelling
    :func:`klnotes.core.variants.parse` reads; a variant is returned as it is).

    The labels are those of :doc:`chapter 3 </book/03_unified_framework>`'s implementations
    (:eq:`eq-3-as-loss`, :eq:`eq-3-in-reward`).

    Raises:
        ValueError: unknown label, or a variant with an off-policy correction (this module applies
            its
            own :data:`CORRECTIONS`); the message lists the labels of :data:`IMPLEMENTATIONS`.
    """
    try:
        variant = variants.parse(label)
    except (ValueError, TypeError):
        variant = None
    if variant is None or variant.correction != "none":
        allowed = ", ".join(v.label for v in IMPLEMENTATIONS)
        raise ValueError(
            f"unknown implementation {label!r}; allowed: {allowed} (or any on-policy variant)"
        )
    return variant


def token_coefficients(
    impl: str | variants.KLVariant, logp: torch.Tensor, logp_ref: torch.Tensor
) -> torch.Tensor:
    r"""Token coefficients :math:`C_t = \partial s/\partial\log\pi_\theta(y_t\mid s_t)` of a
    variant's per-sequence
    surrogate (:func:`klnotes.core.surrogates.per_sequence`), ``[N, L]`` (:eq:`eq-7-expected`).

    The per-sample gradient of the surrogate is ``sum_t C_t grad log pi_theta(y_t | .)``. For
    ``"k1 in reward (seq)"`` every token gets ``U``; for per-token ``"k2 as loss"`` token ``t`` gets ``u_t``.
    """
    impl = get_implementation(impl)
    leaf = logp.detach().clone().requires_grad_(True)
    mask = torch.ones_like(leaf, dtype=torch.bool)
    with torch.enable_grad():
        s = surrogates.per_sequence(impl, leaf, logp_ref.detach(), mask).sum()
        (c,) = torch.autograd.grad(s, leaf, allow_unused=True)
    return torch.zeros_like(leaf).detach() if c is None else c.detach()


def flat_grad(
    outputs: torch.Tensor,
    params: Sequence[torch.Tensor],
    grad_outputs: torch.Tensor,
    *,
    retain_graph: bool,
) -> torch.Tensor:
    r"""``sum_i grad_outputs_i * d outputs_i / d params``, all parameters flattened into one vector ``[D]``.

    :math:`\sum_i v_i\,\partial o_i/\partial\theta`, the vector-Jacobian product of :eq:`eq-7-expected`
    with :math:`v_{it} = w_i C_{it}` and :math:`o_{it} = \log\pi_\theta(y_{it}\mid s_{it})`.
    """
    grads = torch.autograd.grad(
        outputs, params, grad_outputs=grad_outputs, retain_graph=retain_graph, allow_unused=True
    )
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)]
    )


@dataclass(frozen=True)
class BatchGram:
    """Inner products among the per-batch mean gradients of one label and of the target (Monte Carlo).

    (:doc:`Chapter 7 </book/07_gpt2_gradients>`'s jackknife intervals.)

    With ``b_i`` the label's mean gradient over batch ``i`` and ``t_i`` the target's (``B`` batches, all
    of them ``[D]``), the jackknife of :func:`klnotes.gpt2.gradcompare.compare` needs only these
    ``[B, B]`` matrices (float64):

    Attributes:
        own: ``own[i, j] = <b_i, b_j>``.
        cross: ``cross[i, j] = <b_i, t_j>``.
        target: ``target[i, j] = <t_i, t_j>``.
        target_label: the label of the target (``PRINCIPLED``).
        diff_sq: ``|mean_i b_i - mean_i t_i|^2``, computed from the vectors (no cancellation).
    """

    own: torch.Tensor
    cross: torch.Tensor
    target: torch.Tensor
    target_label: str
    diff_sq: float


@dataclass(frozen=True)
class GradientSet:
    """Gradients of one comparison, flattened over all parameters.

    (:doc:`Chapter 7 </book/07_gpt2_gradients>`: the gradients :eq:`eq-7-expected` of one comparison
    and the target :eq:`eq-7-principled`.)

    Attributes:
        grads: ``{label: [D]}``; ``PRINCIPLED`` holds the target ``g*``; other labels are implementations,
            with a suffix ``" | off-policy"``, ``" | token IS"`` or ``" | sequence IS"`` when sampled from ``pi_old``.
            Monte Carlo sets keep only ``g*`` unless asked to keep every mean (``keep_grads=True``).
        kl: KL(pi_theta || pi_ref) of the response distribution (exact, or a Monte Carlo mean).
        kl_se: its standard error (0 when exact).
        exact: whether the expectations are exact (enumeration) or Monte Carlo.
        gram: for Monte Carlo, ``{label: BatchGram}`` for every label but the target (the per-batch
            inner products behind the jackknife intervals); else ``{}``.
        distances: for Monte Carlo with ``distances_to``, ``{label: |g - distances_to[base label]|}``; else ``{}``.
    """

    grads: dict
    kl: float
    kl_se: float
    exact: bool
    gram: dict
    distances: dict = field(default_factory=dict)


def _suffix(off_policy: bool, correction: str | None) -> str:
    if not off_policy:
        return ""
    return {None: " | off-policy", "token": " | token IS", "sequence": " | sequence IS"}[correction]


def _check_corrections(corrections: Iterable[str | None]) -> tuple:
    corrections = tuple(corrections)
    for c in corrections:
        if c not in CORRECTIONS:
            raise ValueError(
                f"unknown off-policy correction {c!r}; allowed: {', '.join(map(repr, CORRECTIONS))}"
            )
    return corrections


@dataclass(frozen=True)
class _Setting:
    """What one comparison fixes: the models, the prompt, the implementations, the off-policy
    corrections and the chunk size of the forward passes."""

    policy: torch.nn.Module
    reference: torch.nn.Module
    prompt: torch.Tensor
    impls: tuple
    old: torch.nn.Module | None
    corrections: tuple
    chunk: int


def _batch_gradients(
    setting: _Setting, responses, weights, *, labels=None, logp_ref=None, logp_old=None
):
    """Weighted gradient sums over ``responses`` for the principled term and each implementation.

    ``weights [N]``: sampler probabilities (exact) or ``1/N`` (Monte Carlo). With ``setting.old``
    given, the principled term is reweighted by the sequence ratio so that it stays the on-policy
    ``g*``. ``labels``: compute only these gradients (default all); ``logp_ref``/``logp_old [N, L]``:
    the reference's/sampler's token log-probabilities if already known (else computed here).
    Returns ``({label: [D]}, sum_i w_i U_i, sum_i w_i U_i^2)``.
    """
    policy, reference, prompt, old = setting.policy, setting.reference, setting.prompt, setting.old
    impls, corrections, chunk = setting.impls, setting.corrections, setting.chunk
    params = [p for p in policy.parameters() if p.requires_grad]
    device = model_device(policy)
    sums: dict[str, torch.Tensor] = {}
    kl_sum = 0.0
    kl_sq = 0.0
    for start in range(0, responses.shape[0], chunk):
        r = responses[start : start + chunk]
        w = weights[start : start + chunk].to(device)
        with torch.no_grad():
            if logp_ref is None:
                lr = token_logprobs(reference, prompt, r, chunk=chunk).to(w.dtype)
            else:
                lr = logp_ref[start : start + chunk].to(device, w.dtype)
            if old is None:
                lo = None
            elif logp_old is None:
                lo = token_logprobs(old, prompt, r, chunk=chunk).to(w.dtype)
            else:
                lo = logp_old[start : start + chunk].to(device, w.dtype)
        with torch.enable_grad():
            logp = token_logprobs(policy, prompt, r, chunk=chunk)
        lp = logp.detach().to(w.dtype)
        seq_u = (lp - lr).sum(dim=1)
        seq_ratio = None if old is None else torch.exp((lp - lo).sum(dim=1))
        on_w = w if old is None else w * seq_ratio
        kl_sum = kl_sum + (on_w * seq_u).sum()  # stays on the device: one host sync at the end
        kl_sq = kl_sq + (on_w * seq_u * seq_u).sum()
        jobs = [
            (label, g)
            for label, g in _coefficient_jobs(
                lp, lr, lo, w, seq_u, seq_ratio, on_w, impls, corrections
            )
            if labels is None or label in labels
        ]
        for i, (label, g) in enumerate(jobs):
            v = flat_grad(logp, params, g().to(logp.dtype), retain_graph=i < len(jobs) - 1)
            sums[label] = v if label not in sums else sums[label] + v
    return sums, float(kl_sum), float(kl_sq)


def _coefficient_jobs(lp, logp_ref, logp_old, w, seq_u, seq_ratio, on_w, impls, corrections):
    """``[(label, thunk)]``: each label's weighted token coefficients ``[n, L]`` (computed when called)."""
    jobs = [(PRINCIPLED, lambda: on_w[:, None] * seq_u[:, None].expand_as(lp))]
    for impl in impls:
        if logp_old is None:
            jobs.append(
                (impl.label, lambda impl=impl: w[:, None] * token_coefficients(impl, lp, logp_ref))
            )
            continue
        for corr in corrections:

            def job(impl=impl, corr=corr):
                c = token_coefficients(impl, lp, logp_ref)
                if corr is None:
                    return w[:, None] * c
                if corr == "token":
                    return w[:, None] * c * torch.exp(lp - logp_old)
                return (w * seq_ratio)[:, None] * c

            jobs.append((impl.label + _suffix(True, corr), job))
    return jobs


def _labels(impls, off_policy: bool, corrections) -> list[str]:
    """All labels of a comparison, target first, in the order of :func:`_batch_gradients`."""
    out = [PRINCIPLED]
    for impl in impls:
        out.extend(
            [impl.label] if not off_policy else [impl.label + _suffix(True, c) for c in corrections]
        )
    return out


_DOT_CHUNK = 1 << 20


def dot64(a: torch.Tensor, b: torch.Tensor) -> float:
    r"""``<a, b>`` of two ``[D]`` vectors, accumulated in float64 chunk by chunk (no full float64 copies).

    :math:`\langle a, b\rangle = \sum_d a_d b_d` (:doc:`chapter 7 </book/07_gpt2_gradients>`'s
    cosines and norms of ``[D]`` gradients).
    """
    total = 0.0
    for start in range(0, a.numel(), _DOT_CHUNK):
        total += float(
            a[start : start + _DOT_CHUNK].double() @ b[start : start + _DOT_CHUNK].double()
        )
    return total


def _sq_dist(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a - b|^2`` of two ``[D]`` vectors, in float64 chunk by chunk."""
    total = 0.0
    for start in range(0, a.numel(), _DOT_CHUNK):
        d = a[start : start + _DOT_CHUNK].double() - b[start : start + _DOT_CHUNK].double()
        total += float(d @ d)
    return total


def _grams(
    xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(<xs_i, xs_j>, <xs_i, ys_j>)`` of ``[D]`` vectors as float64 matrices, accumulated chunk by chunk."""
    xx = torch.zeros(len(xs), len(xs), dtype=torch.float64)
    xy = torch.zeros(len(xs), len(ys), dtype=torch.float64)
    for start in range(0, xs[0].numel(), _DOT_CHUNK):
        x = torch.stack([v[start : start + _DOT_CHUNK] for v in xs]).double()
        y = torch.stack([v[start : start + _DOT_CHUNK] for v in ys]).double()
        xx += (x @ x.T).cpu()
        xy += (x @ y.T).cpu()
    return xx, xy


def _resolve(implementations) -> tuple[variants.KLVariant, ...]:
    impls = IMPLEMENTATIONS if implementations is None else implementations
    return tuple(get_implementation(i) for i in impls)


def exact_gradients(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    prompt: torch.Tensor,
    length: int,
    *,
    implementations: Sequence[str | variants.KLVariant] | None = None,
    old: torch.nn.Module | None = None,
    corrections: Sequence[str | None] = CORRECTIONS,
    max_sequences: int = 2**16,
    chunk: int = 1024,
) -> GradientSet:
    r"""Exact expected gradients by enumerating all ``V^L`` responses: :eq:`eq-7-expected`,
    :math:`g = \sum_y \mu(y) \sum_t C_t(y)\,\nabla_\theta\log\pi_\theta(y_t\mid s_t)` with
    :math:`\mu = \pi_\theta`.

    On-policy (``old=None``): each implementation's expected gradient under ``pi_theta`` and the
    principled ``g*`` (eq-7-principled). Off-policy (``old`` given): responses are weighted by
    ``pi_old(y)``; each implementation appears once per entry of ``corrections`` (labels suffixed
    ``" | off-policy"``, ``" | token IS"``, ``" | sequence IS"``); ``g*`` is still the on-policy target.
    Use float64 models for identities to ~1e-12.

    Raises:
        ValueError: too many responses (see :func:`enumerate_responses`), bad prompt, unknown
            implementation or correction.
    """
    impls = _resolve(implementations)
    corrections = _check_corrections(corrections)
    vocab = full_logits(policy, check_prompt(prompt)[None].to(model_device(policy))).shape[-1]
    responses = enumerate_responses(vocab, length, max_sequences=max_sequences)
    sampler = policy if old is None else old
    with torch.no_grad():
        dtype = torch.float64
        w = token_logprobs(sampler, prompt, responses, chunk=chunk).to(dtype).sum(dim=1).exp()
    setting = _Setting(policy, reference, prompt, impls, old, corrections, chunk)
    sums, kl, _ = _batch_gradients(setting, responses, w)
    return GradientSet(grads=sums, kl=kl, kl_se=0.0, exact=True, gram={})


def sampled_gradients(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    prompt: torch.Tensor,
    length: int,
    n_samples: int,
    *,
    n_batches: int = 4,
    implementations: Sequence[str | variants.KLVariant] | None = None,
    old: torch.nn.Module | None = None,
    corrections: Sequence[str | None] = CORRECTIONS,
    seed: int = 0,
    chunk: int = 256,
    store_device: str | torch.device = "cpu",
    keep_grads: bool = False,
    distances_to: Mapping[str, torch.Tensor] | None = None,
    labels_per_pass: int = 1,
) -> GradientSet:
    r"""Monte Carlo expected gradients from ``n_samples`` responses of the sampler (``old`` or ``policy``).

    :math:`\hat g = \frac1N\sum_i\sum_t C_{it}\,\nabla_\theta\log\pi_\theta(y_{it}\mid s_{it})`
    (:eq:`eq-7-expected` with :math:`w_i = 1/N`); the target :math:`\hat g^* = \frac1N\sum_i U_i
    \sum_t\nabla_\theta\log\pi_\theta(y_{it}\mid s_{it})` (:eq:`eq-7-principled`).

    The principled ``g*`` is estimated by "k1 in reward" with the whole-sequence sum ``U`` (unbiased;
    reweighted by the sequence ratio when ``old`` is given). Samples are split into ``n_batches``
    equal batches; every label uses the same samples. Memory: the responses are drawn once, then the
    labels are processed ``labels_per_pass`` at a time (one forward pass per group and chunk, one
    backward pass per label), so about ``(labels_per_pass + 1) n_batches + 4`` gradient vectors ``[D]``
    are held at a time (the target's batch means, the group's, means and autograd buffers), plus the
    kept means: ``grads`` holds ``g*`` only, or every label's mean with ``keep_grads=True``. A larger
    ``labels_per_pass`` trades memory for fewer forward passes. What
    :func:`klnotes.gpt2.gradcompare.compare` needs is kept as
    small Gram matrices (:class:`BatchGram`, ``gram``). ``distances_to``: ``{base label: [D]}``; each label whose base
    label (before ``" | "``) is a key gets ``distances[label] = |g - distances_to[base]|``.
    Batch means are stored on ``store_device``.

    Raises:
        ValueError: ``n_samples`` not a positive multiple of ``n_batches``, ``n_batches < 2``,
            ``labels_per_pass < 1``.
    """
    if n_batches < 2 or n_samples < n_batches or n_samples % n_batches:
        raise ValueError(
            f"n_samples ({n_samples}) must be a positive multiple of n_batches ({n_batches}), n_batches >= 2"
        )
    if int(labels_per_pass) < 1:
        raise ValueError(f"labels_per_pass must be >= 1, got {labels_per_pass}")
    impls = _resolve(implementations)
    corrections = _check_corrections(corrections)
    gen = torch.Generator().manual_seed(int(seed))
    sampler = policy if old is None else old
    per = n_samples // n_batches
    w = torch.full((per,), 1.0 / per, dtype=torch.float64)
    batches = []  # (responses, logp_ref, logp_old) of each batch: [per, L] each, small
    for _ in range(n_batches):
        responses = sample_responses(sampler, prompt, length, per, generator=gen, chunk=chunk)
        with torch.no_grad():
            lr = token_logprobs(reference, prompt, responses, chunk=chunk).to(w.dtype)
            lo = (
                None
                if old is None
                else token_logprobs(old, prompt, responses, chunk=chunk).to(w.dtype)
            )
        batches.append((responses, lr, lo))

    setting = _Setting(policy, reference, prompt, impls, old, corrections, chunk)

    def batch_means(group):
        out = {label: [] for label in group}
        kls, kl_sqs = [], []
        for responses, lr, lo in batches:
            sums, kl, kl_sq = _batch_gradients(
                setting, responses, w, labels=tuple(group), logp_ref=lr, logp_old=lo
            )
            for label in group:
                out[label].append(sums[label].to(store_device))
            kls.append(kl)
            kl_sqs.append(kl_sq)
        return out, kls, kl_sqs

    def mean(vs):
        total = vs[0].clone()
        for v in vs[1:]:
            total += v
        return total.div_(len(vs))

    labels = _labels(impls, old is not None, corrections)
    tgt_batches, kls, kl_sqs = batch_means([PRINCIPLED])
    tgt = tgt_batches[PRINCIPLED]
    tgt_gram = _grams(tgt, tgt[:1])[0]
    tgt_mean = mean(tgt)
    grads = {PRINCIPLED: tgt_mean}
    gram, distances = {}, {}
    rest = labels[1:]
    for first in range(0, len(rest), int(labels_per_pass)):
        group = rest[first : first + int(labels_per_pass)]
        group_batches, _, _ = batch_means(group)
        for label in group:
            vs = group_batches.pop(label)
            g = mean(vs)
            own, cross = _grams(vs, tgt)
            gram[label] = BatchGram(
                own=own,
                cross=cross,
                target=tgt_gram,
                target_label=PRINCIPLED,
                diff_sq=_sq_dist(g, tgt_mean),
            )
            base = label.split(" | ")[0]
            if distances_to is not None and base in distances_to:
                distances[label] = math.sqrt(_sq_dist(g, distances_to[base].to(g.device)))
            if keep_grads:
                grads[label] = g
            del vs, g
    kl = sum(kls) / n_batches
    var = max(sum(kl_sqs) / n_batches - kl * kl, 0.0)
    return GradientSet(
        grads=grads,
        kl=kl,
        kl_se=math.sqrt(var / n_samples),
        exact=False,
        gram=gram,
        distances=distances,
    )


def exact_kl_gradient(
    policy: torch.nn.Module,
    other: torch.nn.Module,
    prompt: torch.Tensor,
    length: int,
    *,
    direction: str = "reverse",
    max_sequences: int = 2**16,
    chunk: int = 1024,
) -> tuple[float, torch.Tensor]:
    r"""Exact sequence KL between ``policy`` and ``other`` and its gradient in ``policy``'s
    parameters ``[D]``
    (:eq:`eq-7-principled`).

    :math:`\nabla_\theta \sum_y \pi_\theta(y)\log\frac{\pi_\theta(y)}{\pi_o(y)}` (reverse) or
    :math:`\nabla_\theta \sum_y \pi_o(y)\log\frac{\pi_o(y)}{\pi_\theta(y)}` (forward), summed over all
    :math:`V^L` responses (:doc:`chapter 7 </book/07_gpt2_gradients>`).

    ``direction="reverse"``: ``KL(policy || other) = sum_y pi(y) log(pi(y)/other(y))``;
    ``"forward"``: ``KL(other || policy) = sum_y other(y) log(other(y)/pi(y))``. Computed by plain
    autograd of the enumerated sum (no score-function identity), as an independent reference for
    :func:`exact_gradients`.

    Raises:
        ValueError: unknown direction, or too many responses.
    """
    if direction not in ("reverse", "forward"):
        raise ValueError(f"unknown direction {direction!r}; allowed: reverse, forward")
    vocab = full_logits(policy, check_prompt(prompt)[None].to(model_device(policy))).shape[-1]
    responses = enumerate_responses(vocab, length, max_sequences=max_sequences)
    params = [p for p in policy.parameters() if p.requires_grad]
    total = 0.0
    grad = None
    for start in range(0, responses.shape[0], chunk):
        r = responses[start : start + chunk]
        with torch.no_grad():
            lo = token_logprobs(other, prompt, r, chunk=chunk).sum(1)
        with torch.enable_grad():
            lp = token_logprobs(policy, prompt, r, chunk=chunk).sum(1)
            lo = lo.to(lp.dtype)
            kl = (
                (lp.exp() * (lp - lo)).sum()
                if direction == "reverse"
                else (lo.exp() * (lo - lp)).sum()
            )
            g = torch.cat([x.reshape(-1) for x in torch.autograd.grad(kl, params)])
        total += float(kl.detach())
        grad = g if grad is None else grad + g
    return total, grad


def trainer_head_gradients(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    prompt: torch.Tensor,
    length: int,
    arms: Sequence[str],
    *,
    reduction: str = "token-mean",
    max_sequences: int = 2**16,
) -> dict:
    r"""Exact on-policy expected gradient of the trainer's own KL head (:func:`klnotes.gpt2.losses.kl_loss`).

    :math:`g = L N \sum_y \pi_\theta(y) \sum_t \frac{\partial h}{\partial\log\pi_t}(y)\,
    \nabla_\theta\log\pi_\theta(y_t\mid s_t)` for the head :math:`h` over the batch of all :math:`N = V^L`
    responses: :eq:`eq-7-expected` with the trainer's own coefficients (:eq:`eq-3-coefficient`;
    :doc:`chapters 7 </book/07_gpt2_gradients>`
    and :doc:`8 </book/08_gpt2_training>`).

    All ``V^L`` fixed-length responses form one batch (mask all ones, ``logp_old = logp`` detached,
    ``beta = 1``). The head is a batch mean of per-response terms, so its token coefficients times the
    batch size ``N`` are those of one response; weighting by ``pi_theta(y)`` gives the expectation. The
    result is multiplied by ``L`` to undo the ``1/L`` of a token mean, so that it is directly comparable
    with :func:`exact_gradients` (e.g. ``"k2-loss"`` equals ``"k2 as loss"``, ``"k1-reward"`` equals the
    principled gradient, ``"k1-loss"`` and ``"none"`` are zero).

    Returns ``{arm: [D]}``.

    Raises:
        ValueError: unknown arm (lists :data:`klnotes.gpt2.trainconfig.ARMS`), too many responses.
    """
    for arm in arms:
        if arm not in ARMS:
            raise ValueError(f"unknown arm {arm!r}; allowed: {', '.join(ARMS)}")
    vocab = full_logits(policy, check_prompt(prompt)[None].to(model_device(policy))).shape[-1]
    responses = enumerate_responses(vocab, length, max_sequences=max_sequences)
    n = responses.shape[0]
    params = [p for p in policy.parameters() if p.requires_grad]
    with torch.no_grad():
        logp_ref = token_logprobs(reference, prompt, responses)
    with torch.enable_grad():
        logp = token_logprobs(policy, prompt, responses)
    lp = logp.detach()
    weights = lp.double().sum(1).exp()
    mask = torch.ones_like(lp, dtype=torch.bool)
    out = {}
    for i, arm in enumerate(arms):
        leaf = lp.clone().requires_grad_(True)
        with torch.enable_grad():
            head = kl_loss(arm, leaf, logp_ref.to(lp.dtype), lp, mask, 1.0, reduction=reduction)
            (c,) = (
                torch.autograd.grad(head, leaf, allow_unused=True)
                if head.requires_grad
                else (None,)
            )
        if c is None:
            out[arm] = torch.zeros(sum(p.numel() for p in params), dtype=lp.dtype, device=lp.device)
            continue
        g = (weights[:, None] * c.double() * n * length).to(logp.dtype)
        out[arm] = flat_grad(logp, params, g, retain_graph=i < len(arms) - 1)
    return out
