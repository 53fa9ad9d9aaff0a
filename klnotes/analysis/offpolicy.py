r"""Off-policy KL terms, exactly: when "k1 as loss" drifts, which ratio is exact, at what variance.

Samples come from ``pi_old``; ``rho_t = pi_theta(y_t|s_t) / pi_old(y_t|s_t)`` and
``u_t = log pi_theta(y_t|s_t) - log pi_ref(y_t|s_t)``. Everything is exact (float64 enumeration
with :mod:`klnotes.analysis.exact`).

- :func:`k1_loss_drift_rate`: the condition under which a descent step on off-policy "k1 as loss"
  moves the policy away from the reference (chapter 7, ``sec-7-k1-drift``), and
  :func:`bernoulli_k1_loss_step`, its one-logit case.
- :func:`ratio_weighted_surrogate`: per-token "as loss" terms with no ratio, the per-token ratio,
  the causal prefix ratio ``prod_{s<=t} rho_s`` or the sequence ratio ``prod_t rho_t`` (chapter 7,
  exercise 2); :func:`gradient_moments`, the exact mean and variance of a one-sample gradient
  estimate.
- :func:`with_stale_sequence_ratio`: an "in reward" option of :mod:`klnotes.frameworks` with its
  rollout-time KL value kept and the per-token ratios replaced by the sequence ratio (chapter 9).
- :func:`split_weights` and :func:`split_error`: what micro-batches of unequal sizes do to a batch
  mean (chapter 9).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch

from klnotes.analysis import exact
from klnotes.core import surrogates

__all__ = [
    "WEIGHTINGS",
    "bernoulli_k1_loss_step",
    "bernoulli_kl",
    "gradient_moments",
    "k1_loss_drift_rate",
    "network_weighted_gradient",
    "ratio_weighted_surrogate",
    "ratio_weights",
    "split_error",
    "split_weights",
    "with_stale_sequence_ratio",
]


# --- when off-policy "k1 as loss" moves away from the reference -------------------------------


def k1_loss_drift_rate(grad_kl_to_ref, grad_kl_from_old) -> float:
    r"""Rate at which a descent step on off-policy "k1 as loss" changes ``KL(pi_theta || pi_ref)``.

    This is :eq:`eq-7-k1-drift` (:ref:`sec-7-k1-drift`).

    On ``pi_old``'s samples, per-token "k1 as loss" has expected gradient
    :math:`-\nabla_\theta\mathrm{KL}(\pi_{\mathrm{old}}\|\pi_\theta)` (chapter 7's
    ``prop-7-k1-off``),
    so the step :math:`\theta' = \theta +
    \eta\,\nabla_\theta\mathrm{KL}(\pi_{\mathrm{old}}\|\pi_\theta)`
    changes the KL to the reference at the rate

    .. math::

        \frac{d}{d\eta}\mathrm{KL}(\pi_{\theta'}\|\pi_{\mathrm{ref}})\Big|_{\eta=0}
        = \big\langle \nabla_\theta\mathrm{KL}(\pi_\theta\|\pi_{\mathrm{ref}}),\,
                      \nabla_\theta\mathrm{KL}(\pi_{\mathrm{old}}\|\pi_\theta) \big\rangle .

    Positive: the step moves away from the reference (for a small enough step); negative: towards
    it. With one logit this is the sign of ``(theta - theta_ref) * (theta - theta_old)``: away
    exactly
    when ``pi_old`` and ``pi_ref`` lie on the same side of ``pi_theta`` (see
    :func:`bernoulli_k1_loss_step`).

    Args:
        grad_kl_to_ref: :math:`\nabla_\theta\mathrm{KL}(\pi_\theta\|\pi_{\mathrm{ref}})`, a tensor
            or a
            tuple of tensors (one per parameter).
        grad_kl_from_old: :math:`\nabla_\theta\mathrm{KL}(\pi_{\mathrm{old}}\|\pi_\theta)`, same
            layout.

    Raises:
        ValueError: the two gradients have different sizes.
    """
    a, b = exact.flatten(grad_kl_to_ref), exact.flatten(grad_kl_from_old)
    if a.shape != b.shape:
        raise ValueError(
            f"the two gradients must have the same size, got {a.numel()} and {b.numel()}"
        )
    return float((a.to(torch.float64) * b.to(torch.float64)).sum())


def bernoulli_kl(theta: torch.Tensor, theta_ref: torch.Tensor) -> torch.Tensor:
    r"""``KL(Bern(sigmoid(theta)) || Bern(sigmoid(theta_ref)))`` for logits ``theta``, ``theta_ref``
    (any equal shapes, elementwise), differentiable:
    :math:`p\log\frac{p}{q} + (1-p)\log\frac{1-p}{1-q}` with :math:`p = \sigma(\theta)`, :math:`q =
    \sigma(\theta_{\mathrm{ref}})`.

    The KL of :eq:`eq-1-kl` between two Bernoulli policies, the one-logit example of
    :ref:`sec-7-k1-drift`.
    """
    p = torch.sigmoid(theta)
    lp, lq = torch.nn.functional.logsigmoid(theta), torch.nn.functional.logsigmoid(theta_ref)
    lp1, lq1 = torch.nn.functional.logsigmoid(-theta), torch.nn.functional.logsigmoid(-theta_ref)
    return p * (lp - lq) + (1 - p) * (lp1 - lq1)


def bernoulli_k1_loss_step(theta: float, theta_ref: float, theta_old: float, lr: float) -> dict:
    r"""One exact descent step on off-policy "k1 as loss" for a one-logit (Bernoulli) policy.

    The one-logit case of :eq:`eq-7-k1-drift` (:ref:`sec-7-k1-drift`).

    The expected gradient is :math:`-\partial_\theta\mathrm{KL}(\pi_{\mathrm{old}}\|\pi_\theta)
    = -(\sigma(\theta) - \sigma(\theta_{\mathrm{old}}))`, so the step is
    :math:`\theta' = \theta + \mathrm{lr}\,(\sigma(\theta) - \sigma(\theta_{\mathrm{old}}))`.

    Returns:
        dict with ``theta_new``, ``kl_before`` and ``kl_after`` (``KL(pi_theta || pi_ref)`` before
        and
        after), ``rate`` (:func:`k1_loss_drift_rate`) and ``same_side`` (``pi_old`` and ``pi_ref``
        on
        the same side of ``pi_theta``).

    Raises:
        ValueError: ``lr`` not positive, or a non-finite logit.
    """
    vals = {"theta": theta, "theta_ref": theta_ref, "theta_old": theta_old, "lr": lr}
    for name, v in vals.items():
        if not torch.isfinite(torch.tensor(float(v))):
            raise ValueError(f"{name} must be finite, got {v!r}")
    if not float(lr) > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    th = torch.tensor(float(theta), dtype=torch.float64, requires_grad=True)
    ref = torch.tensor(float(theta_ref), dtype=torch.float64)
    old = torch.tensor(float(theta_old), dtype=torch.float64)
    with torch.enable_grad():
        (to_ref,) = torch.autograd.grad(bernoulli_kl(th, ref), th)
        (from_old,) = torch.autograd.grad(bernoulli_kl(old, th), th)
    new = th.detach() + float(lr) * from_old
    return {
        "theta_new": float(new),
        "kl_before": float(bernoulli_kl(th.detach(), ref)),
        "kl_after": float(bernoulli_kl(new, ref)),
        "rate": k1_loss_drift_rate(to_ref, from_old),
        "same_side": (float(theta) - float(theta_ref)) * (float(theta) - float(theta_old)) > 0,
    }


# --- which ratio, and at what variance ---------------------------------------------------------

#: Importance weights on per-token terms: ``"none"`` (1), ``"token"`` (``rho_t``), ``"prefix"``
#: (``prod_{s<=t} rho_s``, causal), ``"sequence"`` (``prod_{s<=L} rho_s`` on every token).
WEIGHTINGS: tuple[str, ...] = ("none", "token", "prefix", "sequence")


def ratio_weights(
    weighting: str, logp: torch.Tensor, logp_old: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    r"""Detached importance weight of each token, ``[N, L]`` (zero on padding).

    With :math:`\rho_s = \pi_\theta(y_s\mid s_s)/\pi_{\mathrm{old}}(y_s\mid s_s)`: the
    per-token ratio of :eq:`eq-6-token` (``"token"``), or the ratio of :eq:`eq-6-correction` over the
    prefix or the whole sequence; ``logp``, ``logp_old``, ``mask``: ``[N, L]``
    (:doc:`chapter 7 </book/07_gpt2_gradients>`).

    ``log w_t`` is :math:`0`, :math:`\log\rho_t`, :math:`\sum_{s\le t}\log\rho_s` or
    :math:`\sum_{s}\log\rho_s` for ``weighting`` = ``"none"``, ``"token"``, ``"prefix"``,
    ``"sequence"``.

    Raises:
        ValueError: unknown weighting (lists :data:`WEIGHTINGS`).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; allowed: {', '.join(WEIGHTINGS)}")
    m = surrogates.check_mask(mask, logp)
    lr = torch.where(m, (logp - logp_old).detach(), torch.zeros_like(logp))
    if weighting == "none":
        lw = torch.zeros_like(lr)
    elif weighting == "token":
        lw = lr
    elif weighting == "prefix":
        lw = torch.cumsum(lr, dim=-1)
    else:
        lw = lr.sum(-1, keepdim=True).expand_as(lr)
    return torch.where(m, lw.exp(), torch.zeros_like(lw))


def ratio_weighted_surrogate(label: str, weighting: str) -> Callable:
    r"""Per-sequence loss ``f(logp, logp_ref, logp_old, mask) -> [N]``: a per-token "as loss" term
    weighted by :func:`ratio_weights`, :math:`\sum_t \mathrm{sg}(w_t)\,s(u_t)`.

    The weightings of :doc:`chapter 7 </book/07_gpt2_gradients>`'s exercise 2 and its section
    "Off-policy: which ratio removes the bias"; ``"token"`` is the per-token ratio of
    :eq:`eq-6-token`.

    Its gradient on a sample is :math:`\sum_t w_t\,c(u_t)\,\nabla\log\pi_\theta(y_t\mid s_t)`.
    Because
    :math:`s(u_t)` depends on :math:`y_{\le t}` only, the causal prefix weight
    :math:`\prod_{s\le t}\rho_s` already turns :math:`\pi_{\mathrm{old}}`'s law of :math:`y_{\le
    t}` into
    :math:`\pi_\theta`'s: ``"prefix"`` and ``"sequence"`` are exact in expectation, ``"token"`` is
    exact
    given the prefix only, ``"none"`` is not exact.

    Raises:
        ValueError: unknown weighting, or a label that is not "as loss" (the term must be
            differentiated).
    """
    from klnotes.core import coefficients

    _, style = coefficients.parse_implementation(label)
    if style != "as_loss":
        raise ValueError(f"label must be an 'as loss' implementation, got {label!r}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; allowed: {', '.join(WEIGHTINGS)}")

    def f(logp, logp_ref, logp_old, mask):
        per_token = surrogates.kl_loss(label, logp, logp_ref, mask, level="token", reduction="none")
        return (ratio_weights(weighting, logp, logp_old, mask) * per_token).sum(-1)

    f.__name__ = f"{label.replace(' ', '_')}__{weighting}_ratio"
    return f


def gradient_moments(
    space: exact.SequenceSpace,
    surrogate: Callable,
    policy: torch.Tensor,
    ref: torch.Tensor,
    behaviour: torch.Tensor | None = None,
) -> dict:
    r"""Exact mean and variance of the one-sample gradient estimate :math:`\hat g(y) =
    \nabla_\theta f(y)`,
    :math:`y\sim\pi_b` (``pi_b = pi_theta`` when ``behaviour`` is ``None``), tabular logits ``[P,
    V]``.

    The mean is the expected gradient of :eq:`eq-4-expected-gradient` (under
    :math:`\pi_b`); the variance is what :doc:`chapter 7 </book/07_gpt2_gradients>`'s ratio weightings
    and :doc:`chapter 9 </book/09_in_practice>`'s micro-batches compare.

    Returns:
        dict with ``mean`` (:math:`\mathbb{E}[\hat g]`, ``[P, V]``), ``second``
        (:math:`\mathbb{E}|\hat g|^2`)
        and ``variance`` (:math:`\mathbb{E}|\hat g - \mathbb{E}\hat g|^2`, the trace of the
        covariance; a
        batch mean of ``n`` samples has ``variance / n``).
    """
    exact.check_logits("policy", policy, shape=space.tabular_shape)
    lr = exact.token_logp(space, ref, name="ref").detach()
    sampler = policy if behaviour is None else behaviour
    lo = exact.token_logp(space, sampler, name="behaviour").detach()
    weight = lo.sum(-1).exp()
    mask = torch.ones(space.num_sequences, space.length, dtype=torch.float64)
    leaf = policy.detach().to(torch.float64).clone().requires_grad_(True)
    with torch.enable_grad():
        lp = exact.token_logp(space, leaf)
        out = surrogate(lp, lr, lo, mask)
        if tuple(out.shape) != (space.num_sequences,):
            raise ValueError(
                f"surrogate must return shape ({space.num_sequences},), got {tuple(out.shape)}"
            )
        eye = torch.eye(space.num_sequences, dtype=torch.float64)
        (per,) = torch.autograd.grad(
            out, leaf, grad_outputs=eye, is_grads_batched=True
        )  # [N, P, V]
    mean = (weight[:, None, None] * per).sum(0)
    second = float((weight * per.square().sum((1, 2))).sum())
    return {"mean": mean, "second": second, "variance": second - float(mean.square().sum())}


def network_weighted_gradient(
    policy, reference, old, prompt, length: int, label: str, weighting: str, *, chunk: int = 1024
) -> torch.Tensor:
    r"""Exact expected gradient, over all parameters of a causal LM, of a per-token implementation
    (:mod:`klnotes.gpt2.gradcompare` label, e.g. ``"k2 as loss"``) on ``pi_old``'s samples, each token's
    coefficient times its weight (:func:`ratio_weights`), ``[D]`` float64:
    :math:`\sum_y \pi_{\mathrm{old}}(y)\sum_t w_t\,C_t\,\nabla\log\pi_\theta(y_t\mid s_t)` by
    enumerating
    all ``V^L`` responses (:func:`klnotes.gpt2.gradcompare.enumerate_responses`). Use float64 models.

    The expected gradient :eq:`eq-7-expected` with the sampler
    :math:`\mu = \pi_{\mathrm{old}}` and :math:`C_t = w_t\,c(u_t)`, compared with the on-policy
    gradient in :doc:`chapter 7 </book/07_gpt2_gradients>` ("Off-policy: which ratio removes the
    bias": the prefix ratio is exact on a transformer too).
    """
    from klnotes.gpt2 import gradcompare

    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; allowed: {', '.join(WEIGHTINGS)}")
    params = [p for p in policy.parameters() if p.requires_grad]
    vocab = policy.config.vocab_size
    responses = gradcompare.enumerate_responses(vocab, length)
    with torch.no_grad():
        lr = gradcompare.token_logprobs(reference, prompt, responses, chunk=chunk).to(torch.float64)
        lo = gradcompare.token_logprobs(old, prompt, responses, chunk=chunk).to(torch.float64)
    with torch.enable_grad():
        lp = gradcompare.token_logprobs(policy, prompt, responses, chunk=chunk)
        d = lp.detach().to(torch.float64)
        mask = torch.ones_like(d, dtype=torch.bool)
        coef = gradcompare.token_coefficients(label, d, lr) * ratio_weights(weighting, d, lo, mask)
        weights = lo.sum(-1).exp()[:, None] * coef
        return gradcompare.flat_grad(lp, params, weights.to(lp.dtype), retain_graph=False).to(
            torch.float64
        )


# --- chapter 9: the two ingredients of the sequence-ratio fix ---------------------------------


def with_stale_sequence_ratio(opt):
    r"""An "in reward" option of :mod:`klnotes.frameworks` with its KL value still computed at
    rollout
    (from ``pi_old``) and its per-token ratios replaced by the detached sequence ratio.

    The stale sequence-ratio correction of :eq:`eq-6-stale` at sequence level:
    :doc:`chapter 9 </book/09_in_practice>`'s off-policy options (:numref:`fig-9-offpolicy-bias`).

    An "in reward" option's per-token loss is :math:`-\rho_t A_t` with a detached advantage
    :math:`A_t`; multiplying it by :math:`\mathrm{sg}(\prod_s\rho_s/\rho_t)` gives the gradient
    :math:`-R\,A_t\,\nabla\log\pi_\theta(y_t\mid s_t)`, :math:`R = \prod_s\rho_s`: the sequence
    ratio with
    the stale value. Compare :func:`klnotes.frameworks.with_sequence_ratio`, which also recomputes
    the
    value at ``pi_theta``.

    Raises:
        ValueError: an option whose KL value is not computed at rollout time (not "in reward").
    """
    if opt.token_loss is None or not opt.coefficient_from.startswith("pi_old"):
        raise ValueError(
            f"with_stale_sequence_ratio needs an 'in reward' option whose KL value comes "
            f"from pi_old; got coefficient_from={opt.coefficient_from!r}"
        )
    base = opt.token_loss

    def token_loss(logp, ref, old, mask):
        m = mask.to(logp.dtype)
        lr = (logp - old).detach() * m
        other = torch.exp(lr.sum(-1, keepdim=True) - lr)
        return other * base(logp, ref, old, mask)

    return replace(
        opt, ratio="detached sequence ratio, KL value from pi_old (stale)", token_loss=token_loss
    )


# --- micro-batches of unequal sizes --------------------------------------------------------------


def split_weights(sizes: Sequence[int]) -> torch.Tensor:
    r"""Weight of each sequence in the mean over processes of per-micro-batch means,
    ``[sum(sizes)]``:
    :math:`w_i = 1/(P\,b_p)` for a sequence in micro-batch :math:`p` of size :math:`b_p`, ``P =
    len(sizes)``.
    Equal sizes give :math:`1/N` for every sequence.

    The weights of :func:`split_error` (:doc:`chapter 9 </book/09_in_practice>`, "Several
    GPUs"): a mean over processes of per-process means.

    Raises:
        ValueError: empty ``sizes`` or a size that is not a positive integer.
    """
    if len(sizes) == 0 or any(
        isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes
    ):
        raise ValueError(
            f"sizes must be a non-empty sequence of positive integers, got {list(sizes)!r}"
        )
    return torch.cat([torch.full((b,), 1.0 / (len(sizes) * b), dtype=torch.float64) for b in sizes])


def split_error(sizes: Sequence[int], mean_norm_sq: float, variance: float) -> dict:
    r"""What unequal micro-batches do to a batch gradient of i.i.d. per-sequence gradients
    :math:`g_i`
    with mean :math:`\mu` and covariance trace ``variance`` (:func:`gradient_moments`).

    The micro-batch question of :doc:`chapter 9 </book/09_in_practice>` ("Several GPUs");
    ``sizes``: ``[P]`` micro-batch sizes, :math:`N = \sum_p b_p`.

    The split batch is :math:`\sum_i w_i g_i` (:func:`split_weights`), the plain one :math:`\bar g =
    \frac1N\sum_i g_i`. Since :math:`\sum_i w_i = 1`, the expectation is :math:`\mu` either way;
    per batch

    .. math::

        \mathbb{E}\Big|\sum_i (w_i - \tfrac1N) g_i\Big|^2 = \sum_i (w_i -
        \tfrac1N)^2\,\mathrm{tr\,Cov}(g),
        \qquad \mathbb{E}|\bar g|^2 = |\mu|^2 + \mathrm{tr\,Cov}(g)/N .

    Returns:
        dict with ``rms_relative`` (the root of the ratio of the two), ``variance_factor``
        (:math:`N\sum_i w_i^2`, the split batch's variance over the plain one's) and ``weights``.
    """
    w = split_weights(sizes)
    n = w.numel()
    dev = float((w - 1.0 / n).square().sum())
    return {
        "rms_relative": (dev * variance / (mean_norm_sq + variance / n)) ** 0.5,
        "variance_factor": n * float(w.square().sum()),
        "weights": w,
    }
