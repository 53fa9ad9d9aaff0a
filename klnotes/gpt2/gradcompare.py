"""Chapter 7: each KL implementation's gradient against the principled one, on a real transformer.

Setting. A causal language model ``pi_theta`` (GPT-2), a frozen reference ``pi_ref`` and one prompt
``x``; responses are ``y = (y_1, ..., y_L)`` of a fixed length ``L`` over the model's whole vocabulary
(no early stop). With ``u_t = log pi_theta(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)`` and the
sequence log-ratio ``U = sum_t u_t``, the principled gradient is the gradient of the sequence reverse KL

    g* = grad KL(pi_theta || pi_ref) = E_{y ~ pi_theta}[ U(y) sum_t grad log pi_theta(y_t | .) ]   (eq-7-principled)

Every implementation of the KL term is a surrogate ``s(logp, logp_ref)`` of the per-token
log-probabilities ``logp [N, L]``; its per-sample gradient is ``sum_t C_t grad logp_t`` with the
*token coefficients* ``C_t = d s / d logp_t`` (chapter 3's coefficient, one per token). Its expected
gradient under a sampling distribution with weights ``w_i`` is therefore one vector-Jacobian product

    g = sum_i w_i sum_t C_it grad logp_it                                                    (eq-7-expected)

- exact: ``y`` runs over all ``V^L`` responses and ``w_i = pi_sampler(y_i)`` (detached);
- Monte Carlo: ``y_i ~ pi_sampler`` and ``w_i = 1/N``.

Off-policy (samples from ``pi_old != pi_theta``): no correction uses ``C`` as is (the common bug);
``correction="token"`` multiplies ``C_t`` by the per-token ratio ``rho_t = pi_theta/pi_old`` (what a
PPO-style KL head does); ``correction="sequence"`` by the sequence ratio ``R = prod_t rho_t``, which
makes the expectation exactly the on-policy one.

All gradients are with respect to all parameters of ``pi_theta``, flattened into one vector ``[D]``.
Comparisons: cosine similarity, relative norm ``|g| / |g*|`` and relative error ``|g - g*| / |g*|``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import pandas as pd
import torch

from klnotes.core import surrogates, variants
from klnotes.gpt2 import trainer

__all__ = [
    "IMPLEMENTATIONS",
    "PRINCIPLED",
    "CORRECTIONS",
    "get_implementation",
    "enumerate_responses",
    "token_logprobs",
    "sample_responses",
    "token_coefficients",
    "flat_grad",
    "BatchGram",
    "GradientSet",
    "exact_gradients",
    "exact_kl_gradient",
    "trainer_head_gradients",
    "sampled_gradients",
    "compare",
    "interpolate",
    "perturb",
    "parameter_distance",
    "sweep",
]

#: Label of the principled gradient (eq-7-principled).
PRINCIPLED = "reverse KL (exact)"
#: Off-policy corrections: none (the bug), per-token ratio (PPO-style KL head), sequence ratio (exact).
CORRECTIONS: tuple[str | None, ...] = (None, "token", "sequence")


#: The implementations compared in chapter 7, in the book's order, as
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


# --- responses and log-probabilities ------------------------------------------------------------


def enumerate_responses(
    vocab_size: int, length: int, *, max_sequences: int = 2**16
) -> torch.Tensor:
    """All ``vocab_size ** length`` responses, ``[V^L, L]`` (int64), in lexicographic order.

    Raises:
        ValueError: non-positive sizes, or more than ``max_sequences`` responses (exact enumeration
            would be too slow; use :func:`sampled_gradients`).
    """
    if int(vocab_size) < 1 or int(length) < 1:
        raise ValueError(f"vocab_size and length must be >= 1, got {vocab_size} and {length}")
    count = int(vocab_size) ** int(length)
    if count > max_sequences:
        raise ValueError(
            f"vocab_size**length = {vocab_size}**{length} = {count} responses exceeds max_sequences={max_sequences}; "
            "shorten the response, or estimate by sampling (sampled_gradients)"
        )
    grids = torch.meshgrid(*[torch.arange(vocab_size)] * length, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=1)


def _check_prompt(prompt: torch.Tensor) -> torch.Tensor:
    if (
        not isinstance(prompt, torch.Tensor)
        or prompt.dim() != 1
        or prompt.numel() == 0
        or prompt.is_floating_point()
    ):
        shape = tuple(prompt.shape) if isinstance(prompt, torch.Tensor) else type(prompt).__name__
        raise ValueError(f"prompt must be a non-empty 1-D tensor of token ids [P], got {shape}")
    return prompt.long()


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(
        input_ids=ids, attention_mask=torch.ones_like(ids)
    )  # no padding: every position attends
    return out.logits if hasattr(out, "logits") else out


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def token_logprobs(
    model: torch.nn.Module, prompt: torch.Tensor, responses: torch.Tensor, *, chunk: int = 1024
) -> torch.Tensor:
    """``log pi(y_t | x, y_<t)`` of every response token, ``[N, L]``, differentiable if grad is enabled.

    Args:
        model: a causal LM (``model(input_ids=ids).logits`` is ``[N, T, V]``, as in ``transformers``).
        prompt: ``[P]`` token ids, ``P >= 1``. responses: ``[N, L]`` token ids.
        chunk: sequences per forward pass.
    """
    prompt = _check_prompt(prompt)
    if responses.dim() != 2:
        raise ValueError(f"responses must be [N, L] token ids, got shape {tuple(responses.shape)}")
    device = _device(model)
    p = prompt.numel()
    out = []
    for start in range(0, responses.shape[0], chunk):
        r = responses[start : start + chunk].to(device)
        ids = torch.cat([prompt.to(device).expand(r.shape[0], p), r], dim=1)
        logits = _logits(model, ids)[:, p - 1 : -1]
        if logits.dtype not in (torch.float32, torch.float64):
            logits = logits.float()
        out.append(torch.log_softmax(logits, dim=-1).gather(-1, r.unsqueeze(-1)).squeeze(-1))
    return torch.cat(out, dim=0)


@torch.no_grad()
def sample_responses(
    model: torch.nn.Module,
    prompt: torch.Tensor,
    length: int,
    n: int,
    *,
    generator: torch.Generator | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """``n`` responses of exactly ``length`` tokens sampled from ``model`` (temperature 1), ``[n, length]`` on the CPU.

    Sampling runs on the model's device with a KV cache where the model has one (``transformers`` causal
    LMs), under autocast on a GPU, drawing with a generator on that device (seeded from ``generator`` when
    it lives elsewhere); only the finished responses are copied to the host. On the CPU the probabilities
    are float64 and ``generator`` is used directly (the same draws as before the cache was added).
    """
    from klnotes.gpt2 import devices

    prompt = _check_prompt(prompt)
    device = _device(model)
    gen = generator
    if generator is not None and generator.device != device:
        seed = int(torch.randint(2**62, (1,), generator=generator))
        gen = torch.Generator(device=device).manual_seed(seed)
    cached = "use_cache" in getattr(getattr(model, "config", None), "to_dict", lambda: {})()
    if cached:
        keyword = trainer.cache_keyword(model)
    out = []
    for start in range(0, n, chunk):
        b = min(chunk, n - start)
        ids = prompt.to(device).expand(b, prompt.numel()).clone()
        tokens, cache = [], None
        with devices.autocast(device):
            for _ in range(length):
                if cached:
                    step_ids = ids if cache is None else tokens[-1]
                    width = prompt.numel() + len(tokens)
                    o = model(
                        input_ids=step_ids,
                        attention_mask=torch.ones(b, width, dtype=torch.long, device=device),
                        use_cache=True,
                        **({} if cache is None else {keyword: cache}),
                    )
                    cache, logits = o[keyword], o.logits[:, -1]
                else:
                    logits = _logits(model, torch.cat([ids, *tokens], dim=1))[:, -1]
                probs = torch.softmax(
                    logits.double() if device.type == "cpu" else logits.float(), dim=-1
                )
                tokens.append(torch.multinomial(probs, 1, generator=gen))
        out.append(torch.cat(tokens, dim=1).cpu())
        del cache
    return torch.cat(out, dim=0)


# --- coefficients and gradients ----------------------------------------------------------------


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
    """``sum_i grad_outputs_i * d outputs_i / d params``, all parameters flattened into one vector ``[D]``."""
    grads = torch.autograd.grad(
        outputs, params, grad_outputs=grad_outputs, retain_graph=retain_graph, allow_unused=True
    )
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)]
    )


@dataclass(frozen=True)
class BatchGram:
    """Inner products among the per-batch mean gradients of one label and of the target (Monte Carlo).

    With ``b_i`` the label's mean gradient over batch ``i`` and ``t_i`` the target's (``B`` batches, all
    of them ``[D]``), the jackknife of :func:`compare` needs only these ``[B, B]`` matrices (float64):

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


def _batch_gradients(
    policy,
    reference,
    prompt,
    responses,
    weights,
    impls,
    *,
    old=None,
    corrections=(None,),
    chunk=1024,
    labels=None,
    logp_ref=None,
    logp_old=None,
):
    """Weighted gradient sums over ``responses`` for the principled term and each implementation.

    ``weights [N]``: sampler probabilities (exact) or ``1/N`` (Monte Carlo). With ``old`` given, the
    principled term is reweighted by the sequence ratio so that it stays the on-policy ``g*``.
    ``labels``: compute only these gradients (default all); ``logp_ref``/``logp_old [N, L]``: the
    reference's/sampler's token log-probabilities if already known (else computed here).
    Returns ``({label: [D]}, sum_i w_i U_i, sum_i w_i U_i^2)``.
    """
    params = [p for p in policy.parameters() if p.requires_grad]
    device = _device(policy)
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


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """``<a, b>`` of two ``[D]`` vectors, accumulated in float64 chunk by chunk (no full float64 copies)."""
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
    vocab = _logits(policy, _check_prompt(prompt)[None].to(_device(policy))).shape[-1]
    responses = enumerate_responses(vocab, length, max_sequences=max_sequences)
    sampler = policy if old is None else old
    with torch.no_grad():
        dtype = torch.float64
        w = token_logprobs(sampler, prompt, responses, chunk=chunk).to(dtype).sum(dim=1).exp()
    sums, kl, _ = _batch_gradients(
        policy,
        reference,
        prompt,
        responses,
        w,
        impls,
        old=old,
        corrections=corrections,
        chunk=chunk,
    )
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
    """Monte Carlo expected gradients from ``n_samples`` responses of the sampler (``old`` or ``policy``).

    The principled ``g*`` is estimated by "k1 in reward" with the whole-sequence sum ``U`` (unbiased;
    reweighted by the sequence ratio when ``old`` is given). Samples are split into ``n_batches``
    equal batches; every label uses the same samples. Memory: the responses are drawn once, then the
    labels are processed ``labels_per_pass`` at a time (one forward pass per group and chunk, one
    backward pass per label), so about ``(labels_per_pass + 1) n_batches + 4`` gradient vectors ``[D]``
    are held at a time (the target's batch means, the group's, means and autograd buffers), plus the
    kept means: ``grads`` holds ``g*`` only, or every label's mean with ``keep_grads=True``. A larger
    ``labels_per_pass`` trades memory for fewer forward passes. What :func:`compare` needs is kept as
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

    def batch_means(group):
        out = {label: [] for label in group}
        kls, kl_sqs = [], []
        for responses, lr, lo in batches:
            sums, kl, kl_sq = _batch_gradients(
                policy,
                reference,
                prompt,
                responses,
                w,
                impls,
                old=old,
                corrections=corrections,
                chunk=chunk,
                labels=tuple(group),
                logp_ref=lr,
                logp_old=lo,
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
    """Exact sequence KL between ``policy`` and ``other`` and its gradient in ``policy``'s
    parameters ``[D]``
    (:eq:`eq-7-principled`).

    ``direction="reverse"``: ``KL(policy || other) = sum_y pi(y) log(pi(y)/other(y))``;
    ``"forward"``: ``KL(other || policy) = sum_y other(y) log(other(y)/pi(y))``. Computed by plain
    autograd of the enumerated sum (no score-function identity), as an independent reference for
    :func:`exact_gradients`.

    Raises:
        ValueError: unknown direction, or too many responses.
    """
    if direction not in ("reverse", "forward"):
        raise ValueError(f"unknown direction {direction!r}; allowed: reverse, forward")
    vocab = _logits(policy, _check_prompt(prompt)[None].to(_device(policy))).shape[-1]
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
    """Exact on-policy expected gradient of the trainer's own KL head (:func:`klnotes.gpt2.trainer.kl_loss`).

    All ``V^L`` fixed-length responses form one batch (mask all ones, ``logp_old = logp`` detached,
    ``beta = 1``). The head is a batch mean of per-response terms, so its token coefficients times the
    batch size ``N`` are those of one response; weighting by ``pi_theta(y)`` gives the expectation. The
    result is multiplied by ``L`` to undo the ``1/L`` of a token mean, so that it is directly comparable
    with :func:`exact_gradients` (e.g. ``"k2-loss"`` equals ``"k2 as loss"``, ``"k1-reward"`` equals the
    principled gradient, ``"k1-loss"`` and ``"none"`` are zero).

    Returns ``{arm: [D]}``.

    Raises:
        ValueError: unknown arm (lists :data:`klnotes.gpt2.trainer.ARMS`), too many responses.
    """
    for arm in arms:
        if arm not in trainer.ARMS:
            raise ValueError(f"unknown arm {arm!r}; allowed: {', '.join(trainer.ARMS)}")
    vocab = _logits(policy, _check_prompt(prompt)[None].to(_device(policy))).shape[-1]
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
            head = trainer.kl_loss(
                arm, leaf, logp_ref.to(lp.dtype), lp, mask, 1.0, reduction=reduction
            )
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


# --- comparison ----------------------------------------------------------------------------------


_ZERO_REL = 1e-9


def _metrics(g: torch.Tensor, target: torch.Tensor) -> tuple[float, float, float]:
    g, target = g.double(), target.double()
    tn = float(target.norm())
    gn = float(g.norm())
    # A gradient that is zero up to rounding (k1 as loss, exactly) has no direction: cosine NaN.
    cos = float(g @ target) / (gn * tn) if gn > _ZERO_REL * tn and tn > 0 else float("nan")
    if tn == 0.0:  # a zero target (the policy at its reference): no relative measure
        return cos, float("nan"), float("nan")
    return cos, gn / tn, float((g - target).norm()) / tn


def _gram_metrics(gg: float, tt: float, gt: float) -> tuple[float, float]:
    """Cosine and relative norm from ``|g|^2``, ``|t|^2`` and ``<g, t>`` (the rules of :func:`_metrics`)."""
    gn, tn = math.sqrt(max(gg, 0.0)), math.sqrt(max(tt, 0.0))
    cos = gt / (gn * tn) if gn > _ZERO_REL * tn and tn > 0 else float("nan")
    return cos, (gn / tn if tn > 0 else float("nan"))


def _jackknife_rows(gram: BatchGram) -> list[tuple[float, float]]:
    """``(cosine, rel_norm)`` of the leave-one-out means, from the Gram matrices alone.

    With sums ``S = sum_i b_i``, ``T = sum_i t_i``: ``|S - b_j|^2 = |S|^2 - 2 <S, b_j> + |b_j|^2``,
    ``<S - b_j, T - t_j> = <S, T> - <S, t_j> - <b_j, T> + <b_j, t_j>`` (the ``1/(B-1)`` cancels).
    """
    own, cross, tgt = gram.own, gram.cross, gram.target
    s_s, t_t, s_t = float(own.sum()), float(tgt.sum()), float(cross.sum())
    out = []
    for j in range(own.shape[0]):
        gg = s_s - 2.0 * float(own[j].sum()) + float(own[j, j])
        tt = t_t - 2.0 * float(tgt[j].sum()) + float(tgt[j, j])
        gt = s_t - float(cross[:, j].sum()) - float(cross[j].sum()) + float(cross[j, j])
        out.append(_gram_metrics(gg, tt, gt))
    return out


def compare(gradients: GradientSet, *, target: str = PRINCIPLED) -> pd.DataFrame:
    """Compare every gradient in ``gradients`` with ``gradients.grads[target]``.

    Returns a frame with one row per label (the target excluded) and columns ``implementation``,
    ``cosine``, ``rel_norm`` (``|g|/|g*|``), ``rel_error`` (``|g - g*|/|g*|``), ``kl``; for Monte Carlo
    sets also ``cosine_lo``, ``cosine_hi``, ``rel_norm_lo``, ``rel_norm_hi`` (95% jackknife intervals
    over the batches). A gradient of norm below ``1e-9 |g*|`` (zero up to rounding) has cosine NaN.
    Monte Carlo sets are compared through their Gram matrices (``gradients.gram``), so they need not
    keep every mean vector; with ``B`` batches, the cosine of the means is
    ``1' cross 1 / sqrt(1' own 1 * 1' target 1)``.

    Raises:
        KeyError: ``target`` not in the set (lists the labels).
        ValueError: a Monte Carlo set compared with another target than the one of its Gram matrices.
    """
    if target not in gradients.grads:
        raise KeyError(
            f"target {target!r} not among the gradients; have: {', '.join(gradients.grads)}"
        )
    rows = []
    if gradients.exact:
        tgt = gradients.grads[target]
        for label, g in gradients.grads.items():
            if label == target:
                continue
            cos, rel, err = _metrics(g, tgt)
            rows.append(
                {
                    "implementation": label,
                    "cosine": cos,
                    "rel_norm": rel,
                    "rel_error": err,
                    "kl": gradients.kl,
                }
            )
        return pd.DataFrame(rows)
    for label, gram in gradients.gram.items():
        if gram.target_label != target:
            raise ValueError(
                f"Monte Carlo gradients can only be compared with {gram.target_label!r}, got target {target!r}"
            )
        n = gram.own.shape[0]
        t_t = float(gram.target.sum())
        cos, rel = _gram_metrics(float(gram.own.sum()), t_t, float(gram.cross.sum()))
        err = math.sqrt(gram.diff_sq) / (math.sqrt(t_t) / n) if t_t > 0 else float("nan")
        row = {
            "implementation": label,
            "cosine": cos,
            "rel_norm": rel,
            "rel_error": err,
            "kl": gradients.kl,
        }
        loo = _jackknife_rows(gram)
        for k, name in ((0, "cosine"), (1, "rel_norm")):
            vals = torch.tensor([v[k] for v in loo], dtype=torch.float64)
            se = math.sqrt((n - 1) / n * float(((vals - vals.mean()) ** 2).sum()))
            lo, hi = row[name] - 1.96 * se, row[name] + 1.96 * se
            row[f"{name}_lo"], row[f"{name}_hi"] = (
                (max(lo, -1.0), min(hi, 1.0)) if name == "cosine" else (lo, hi)
            )
        rows.append(row)
    return pd.DataFrame(rows)


# --- moving a policy away from its reference ----------------------------------------------------


@torch.no_grad()
def interpolate(
    reference: torch.nn.Module, target: torch.nn.Module, alpha: float
) -> torch.nn.Module:
    r"""A copy of ``reference`` with parameters
    :math:`\theta_{\mathrm{ref}} + \alpha\,(\theta_1 - \theta_{\mathrm{ref}})` (:eq:`eq-7-path`).

    ``alpha = 0`` is the reference, ``1`` the target, ``> 1`` extrapolates. Both models must have
    the same architecture. The copy is trainable (``requires_grad`` on), whatever the reference's flags.

    Raises:
        ValueError: parameter names or shapes differ.
    """
    ref_params = dict(reference.named_parameters())
    tgt_params = dict(target.named_parameters())
    if ref_params.keys() != tgt_params.keys() or any(
        ref_params[k].shape != tgt_params[k].shape for k in ref_params
    ):
        raise ValueError("reference and target must have the same parameter names and shapes")
    out = copy.deepcopy(reference)
    for name, p in out.named_parameters():
        p.copy_(ref_params[name] + float(alpha) * (tgt_params[name] - ref_params[name]))
    return out.requires_grad_(True)


@torch.no_grad()
def perturb(model: torch.nn.Module, scale: float, *, seed: int = 0) -> torch.nn.Module:
    """A copy of ``model`` with every parameter moved by ``scale * std(param) * N(0, 1)`` noise (seeded).

    A random direction away from the reference; ``scale`` is relative to each tensor's own spread
    (tensors with zero spread, e.g. fresh biases, get ``scale * 0.02``).
    """
    gen = torch.Generator().manual_seed(int(seed))
    out = copy.deepcopy(model)
    for p in out.parameters():
        spread = float(p.std()) if p.numel() > 1 else 0.0
        spread = spread if spread > 0 else 0.02
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.device, p.dtype)
        p.add_(float(scale) * spread * noise)
    return out


@torch.no_grad()
def parameter_distance(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Euclidean distance between two models' flattened parameters."""
    return math.sqrt(
        sum(float(((p - q) ** 2).sum()) for p, q in zip(a.parameters(), b.parameters()))
    )


def sweep(
    reference: torch.nn.Module,
    target: torch.nn.Module,
    alphas: Sequence[float],
    prompt: torch.Tensor,
    length: int,
    *,
    old_lag: float | None = None,
    implementations: Sequence[str | variants.KLVariant] | None = None,
    corrections: Sequence[str | None] = CORRECTIONS,
    n_samples: int | None = None,
    n_batches: int = 4,
    seed: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """Compare gradients along the path ``theta(alpha) = theta_ref + alpha (theta_target - theta_ref)``.

    For each ``alpha`` the policy is :func:`interpolate` ``(reference, target, alpha)``; with
    ``old_lag`` the sampler is ``pi_old = theta(alpha - old_lag)`` (the policy a few updates earlier,
    as in PPO's inner loop). ``n_samples=None`` enumerates exactly; otherwise Monte Carlo.

    Returns the rows of :func:`compare` for every ``alpha`` with extra columns ``alpha``,
    ``kl_se`` and ``param_distance`` (to the reference); off-policy also ``offpolicy_bias``
    ``= |g_off - g_on| / |g*|``, the distance of each gradient from the on-policy expected gradient of
    the same implementation (the bias due to sampling from ``pi_old`` alone). The x-axis of chapter 7 is ``kl``.
    """
    from klnotes._progress import progress_bar

    frames = []
    for alpha in progress_bar(list(alphas), disable=not progress, desc="distance"):
        policy = interpolate(reference, target, alpha)
        old = None if old_lag is None else interpolate(reference, target, alpha - old_lag)
        if n_samples is None:
            gs = exact_gradients(
                policy,
                reference,
                prompt,
                length,
                implementations=implementations,
                old=old,
                corrections=corrections,
            )
            frame = compare(gs)
            if old is not None:
                frame["offpolicy_bias"] = _offpolicy_bias(
                    gs, policy, reference, prompt, length, implementations
                )
        else:
            # Monte Carlo: only Gram matrices and a few means are kept
            # (memory O(n_batches D), not O(labels n_batches D)).
            on = None
            if (
                old is not None
            ):  # the on-policy means the off-policy ones are measured against (own samples)
                on = sampled_gradients(
                    policy,
                    reference,
                    prompt,
                    length,
                    n_samples,
                    n_batches=n_batches,
                    implementations=implementations,
                    seed=seed + 1,
                    keep_grads=True,
                )
            gs = sampled_gradients(
                policy,
                reference,
                prompt,
                length,
                n_samples,
                n_batches=n_batches,
                implementations=implementations,
                old=old,
                corrections=corrections,
                seed=seed,
                distances_to=None
                if on is None
                else {k: v for k, v in on.grads.items() if k != PRINCIPLED},
            )
            frame = compare(gs)
            if on is not None:
                scale = math.sqrt(_dot(on.grads[PRINCIPLED], on.grads[PRINCIPLED]))
                frame["offpolicy_bias"] = [
                    gs.distances[label] / scale for label in frame["implementation"]
                ]
            del on
        frame["alpha"] = float(alpha)
        frame["kl_se"] = gs.kl_se
        frame["param_distance"] = parameter_distance(policy, reference)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _offpolicy_bias(gs, policy, reference, prompt, length, implementations) -> list[float]:
    """``|g_off - g_on| / |g*|`` per row of ``compare(gs)`` (exact sets): each off-policy gradient against
    the on-policy expected gradient of the same implementation, relative to the principled norm."""
    on = exact_gradients(policy, reference, prompt, length, implementations=implementations)
    scale = float(on.grads[PRINCIPLED].double().norm())
    out = []
    for label, g in gs.grads.items():
        if label == PRINCIPLED:
            continue
        ref = on.grads[label.split(" | ")[0]]
        out.append(float((g.double() - ref.double()).norm()) / scale)
    return out
