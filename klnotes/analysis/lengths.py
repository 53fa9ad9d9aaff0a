r"""Responses of different lengths, exactly: what a per-response mean of per-token KL terms follows.

A variable-length tabular policy over the vocabulary ``{0, ..., V-1}`` with token ``0`` the end of
sequence (EOS): a response stops at its first EOS or after ``max_length`` tokens, and ``|y|`` counts
its tokens (the EOS included). It reuses :class:`klnotes.analysis.exact.SequenceSpace`: a response is the
fixed-length sequence padded with EOS after its end, and only those padded rows (one per response)
are kept (:func:`variable_length_space`). Tabular logits ``[P, V]`` as in :mod:`klnotes.analysis.exact`.

GRPO averages each response's per-token terms over its ``|y|`` tokens. For per-token "k2 as loss"
the expected gradient is (chapter 5, exercise 2)

.. math::

    \mathbb{E}_y\Big[\frac{1}{|y|}\sum_{t\le|y|} u_t\,\nabla\log\pi_\theta(y_t\mid s_t)\Big]
    = \sum_t \mathbb{E}_{y_{\le t}}\Big[u_t\,\mathbb{E}\big[\tfrac{1}{|y|}\,\big|\,y_{\le t}\big]\,
      \nabla\log\pi_\theta(y_t\mid s_t)\Big] ,

a coefficient :math:`u_t\,\mathbb{E}[1/|y| \mid y_{\le t}]` that depends on :math:`y_t` (whether it
ends the response, and what follows it), so it is not :math:`1/|y|` held fixed
(:func:`fixed_weight_gradient`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from klnotes.analysis import exact

__all__ = [
    "EOS",
    "VariableLengthSpace",
    "coefficient_form_gradient",
    "conditional_inverse_length",
    "fixed_weight_gradient",
    "length_pmf",
    "mean_k2_gradient",
    "response_logp",
    "sum_k2_gradient",
    "token_mean_gradient",
    "variable_length_space",
]

#: The end-of-sequence token.
EOS: int = 0


@dataclass(frozen=True)
class VariableLengthSpace:
    r"""Responses of length 1 to ``max_length`` over ``vocab`` tokens, token :data:`EOS` ending them.

    The responses :math:`y = (y_1, \dots, y_{\lvert y\rvert})` over which
    :doc:`chapter 5 </book/05_sequences>`'s per-response mean
    :math:`\frac{1}{\lvert y\rvert}\sum_{t\le\lvert y\rvert}` (GRPO's, :eq:`eq-1-grpo`) is computed exactly.

    Attributes:
        space: the fixed-length :class:`klnotes.analysis.exact.SequenceSpace` ``(vocab, max_length)``.
        rows: ``LongTensor [M]``, the rows of ``space.seqs`` that are responses (EOS-padded after
            the end).
        mask: ``BoolTensor [M, L]``, the positions of each response (up to and including its EOS).
        lengths: ``LongTensor [M]``, ``|y|``.
    """

    space: exact.SequenceSpace
    rows: torch.Tensor = field(repr=False, compare=False)
    mask: torch.Tensor = field(repr=False, compare=False)
    lengths: torch.Tensor = field(repr=False, compare=False)

    @property
    def num_responses(self) -> int:
        return int(self.rows.numel())


def variable_length_space(vocab: int, max_length: int) -> VariableLengthSpace:
    r"""All responses over ``vocab >= 2`` tokens (one of them :data:`EOS`) of at most ``max_length``
    tokens.

    The response space of :class:`VariableLengthSpace`, on which
    :doc:`chapter 5 </book/05_sequences>` computes GRPO's per-response mean (:eq:`eq-1-grpo`) exactly:
    :math:`\sum_{k=1}^{L}(V-1)^{k-1} + (V-1)^{L}` responses.

    There are ``(V-1)^(k-1)`` responses ending with EOS at position ``k < L`` and ``V (V-1)^(L-1)``
    of length ``L`` (EOS or not as the last token).

    Raises:
        ValueError: ``vocab`` below 2 or ``max_length`` below 1 (from
            :class:`klnotes.analysis.exact.SequenceSpace`).
    """
    space = exact.SequenceSpace(vocab=vocab, length=max_length)
    seqs = space.seqs
    is_eos = seqs == EOS
    before = torch.cumsum(is_eos.long(), -1) - is_eos.long()  # EOS tokens strictly before t
    mask = before == 0
    padded = (mask | is_eos).all(-1)  # after the end, only EOS
    rows = torch.nonzero(padded).squeeze(-1)
    mask = mask[rows]
    return VariableLengthSpace(space, rows, mask, mask.sum(-1))


def _check(vspace) -> VariableLengthSpace:
    if not isinstance(vspace, VariableLengthSpace):
        raise TypeError(f"vspace must be a VariableLengthSpace, got {type(vspace).__name__}")
    return vspace


def response_logp(
    vspace: VariableLengthSpace, policy: torch.Tensor, *, name: str = "policy"
) -> torch.Tensor:
    r"""Token log-probabilities of every response, ``[M, L]`` float64, zero after the end
    (``log pi(y) = response_logp(...).sum(-1)``; the probabilities sum to 1).

    Row :math:`m`, position :math:`t`: :math:`\log\pi(y_t\mid s_t)` of response :math:`m`, so
    that :math:`\log\pi(y) = \sum_{t\le\lvert y\rvert}\log\pi(y_t\mid s_t)` (:eq:`eq-5-log-ratios`);
    ``policy``: tabular logits ``[P, V]``.
    """
    lp = exact.token_logp(_check(vspace).space, policy, name=name)[vspace.rows]
    return torch.where(vspace.mask, lp, torch.zeros_like(lp))


def _grad(vspace, policy, value_fn) -> torch.Tensor:
    exact.check_logits("policy", policy, shape=vspace.space.tabular_shape)
    leaf = policy.detach().to(torch.float64).clone().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(value_fn(leaf), leaf)
    return g


def mean_k2_gradient(
    vspace: VariableLengthSpace, policy: torch.Tensor, ref: torch.Tensor
) -> torch.Tensor:
    r"""Exact expected gradient of GRPO's per-response mean of per-token "k2 as loss", ``[P, V]``:
    :math:`\sum_y \mathrm{sg}(\pi_\theta(y))\,\nabla\frac{1}{|y|}\sum_{t\le|y|}\tfrac12 u_t^2`.

    GRPO's mean of :eq:`eq-1-grpo` with :math:`k_2` in place of :math:`k_3`
    (:doc:`chapter 5 </book/05_sequences>`); ``policy``, ``ref``: tabular logits ``[P, V]``.
    """
    lr = response_logp(vspace, ref, name="ref").detach()
    w = response_logp(vspace, policy).sum(-1).exp().detach()

    def value(p):
        u = response_logp(vspace, p) - lr
        return (w * (0.5 * u.square()).sum(-1) / vspace.lengths).sum()

    return _grad(vspace, policy, value)


def conditional_inverse_length(vspace: VariableLengthSpace, policy: torch.Tensor) -> torch.Tensor:
    r""":math:`\mathbb{E}_{\pi}[1/|y| \mid y_{\le t}]` at every position of every response, ``[M,
    L]``
    (zero after the end): the average of :math:`1/|y'|` over the responses :math:`y'` that share
    :math:`y_{\le t}`, weighted by :math:`\pi(y')`.

    The weight that GRPO's per-response mean (:eq:`eq-1-grpo`) puts on token
    :math:`t`'s coefficient, in expectation (:doc:`chapter 5 </book/05_sequences>`).
    """
    p = response_logp(vspace, policy).sum(-1).exp().detach()
    seqs = vspace.space.seqs[vspace.rows]
    out = torch.zeros(vspace.mask.shape, dtype=torch.float64)
    inv = 1.0 / vspace.lengths.to(torch.float64)
    for t in range(vspace.space.length):
        _, group = torch.unique(seqs[:, : t + 1], dim=0, return_inverse=True)
        num = torch.zeros(int(group.max()) + 1, dtype=torch.float64).index_add_(0, group, p * inv)
        den = torch.zeros_like(num).index_add_(0, group, p)
        out[:, t] = (num / den)[group]
    return torch.where(vspace.mask, out, torch.zeros_like(out))


def coefficient_form_gradient(
    vspace: VariableLengthSpace, policy: torch.Tensor, ref: torch.Tensor
) -> torch.Tensor:
    r"""The right-hand side of the module's identity, ``[P, V]``: coefficient
    :math:`u_t\,\mathbb{E}[1/|y| \mid y_{\le t}]` on each token's score,
    :math:`\sum_y \pi(y)\sum_t u_t\,\mathbb{E}[1/|y|\mid y_{\le t}]\,\nabla\log\pi(y_t\mid s_t)`.

    It equals :func:`mean_k2_gradient` (the module's identity,
    :doc:`chapter 5 </book/05_sequences>`'s exercise on GRPO's mean of :eq:`eq-1-grpo`).
    """
    lr = response_logp(vspace, ref, name="ref").detach()
    w = response_logp(vspace, policy).sum(-1).exp().detach()
    h = conditional_inverse_length(vspace, policy)

    def value(p):
        lp = response_logp(vspace, p)
        c = (lp - lr).detach() * h
        return (w * (c * lp).sum(-1)).sum()

    return _grad(vspace, policy, value)


def fixed_weight_gradient(
    vspace: VariableLengthSpace, policy: torch.Tensor, ref: torch.Tensor
) -> torch.Tensor:
    r"""Gradient of :math:`\mathbb{E}_y\big[\frac{1}{|y|}\sum_t\mathrm{KL}_t\big]` with the prefix
    weights
    and :math:`1/|y|` held fixed, ``[P, V]`` (what the second edition's solution claimed):
    :math:`\sum_y \mathrm{sg}\big(\pi(y)/|y|\big)\sum_{t\le|y|}\nabla\mathrm{KL}\big(\pi(\cdot\mid
    s_t)\,\|\,
    \pi_{\mathrm{ref}}(\cdot\mid s_t)\big)`.

    The token-level KL of :eq:`eq-5-tok-rkl` with each response's terms divided by
    :math:`\lvert y\rvert`; it differs from :func:`mean_k2_gradient` (:doc:`chapter 5 </book/05_sequences>`).
    """
    space = vspace.space
    a_ref = exact.next_token_logp(space, ref, name="ref")[vspace.rows].detach()
    w = (response_logp(vspace, policy).sum(-1).exp() / vspace.lengths).detach()

    def value(p):
        a = exact.next_token_logp(space, p)[vspace.rows]
        kl = (a.exp() * (a - a_ref)).sum(-1)
        return (w * torch.where(vspace.mask, kl, torch.zeros_like(kl)).sum(-1)).sum()

    return _grad(vspace, policy, value)


def length_pmf(vspace: VariableLengthSpace, policy: torch.Tensor) -> torch.Tensor:
    r"""``P(|y| = k)`` for ``k = 0..L``, ``[L + 1]`` float64 (entry 0 is zero).

    :math:`P(\lvert y\rvert = k) = \sum_{y:\,\lvert y\rvert = k}\pi(y)` under ``policy`` (tabular
    logits ``[P, V]``), the law of the :math:`1/\lvert y\rvert` of GRPO's mean (:eq:`eq-1-grpo`,
    :doc:`chapter 5 </book/05_sequences>`).
    """
    p = response_logp(vspace, policy).sum(-1).exp().detach()
    return torch.zeros(vspace.space.length + 1, dtype=torch.float64).index_add_(
        0, vspace.lengths, p
    )


def sum_k2_gradient(
    vspace: VariableLengthSpace,
    policy: torch.Tensor,
    ref: torch.Tensor,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    r""":math:`\sum_y \pi(y)\,s(|y|)\sum_{t\le|y|} u_t\,\nabla\log\pi(y_t\mid s_t)`, ``[P, V]``,
    with a weight
    ``scale [L + 1]`` indexed by the length (``None``: 1, the per-token sum).

    With ``scale=None`` it is the gradient of the token-level KL, :math:`\nabla_\theta
    \mathcal{T}_{\mathrm{rev}}(\theta;\theta')\rvert_{\theta'=\theta}` (:eq:`eq-5-tok-rkl`), which
    per-token "k2 as loss" follows (:doc:`chapter 5 </book/05_sequences>`).
    """
    lr = response_logp(vspace, ref, name="ref").detach()
    w = response_logp(vspace, policy).sum(-1).exp().detach()
    if scale is not None:
        w = w * scale.to(torch.float64)[vspace.lengths]

    def value(p):
        u = response_logp(vspace, p) - lr
        return (w * (0.5 * u.square()).sum(-1)).sum()

    return _grad(vspace, policy, value)


def token_mean_gradient(
    vspace: VariableLengthSpace, policy: torch.Tensor, ref: torch.Tensor, batch: int
) -> torch.Tensor:
    r"""Exact expected gradient of a batch token-mean of per-token "k2 as loss" over ``batch``
    i.i.d.
    responses, ``[P, V]``:
    :math:`\mathbb{E}\big[\sum_{i}\sum_t \nabla\tfrac12 u_{i,t}^2 \big/ \sum_i|y_i|\big]
    = B\,\sum_y \pi(y)\,\mathbb{E}\big[\tfrac{1}{|y| + S_{B-1}}\big]\sum_t u_t\nabla\log\pi(y_t\mid
    s_t)`,
    :math:`S_{B-1}` the total length of the other :math:`B-1` responses (its law by convolution).
    ``batch = 1`` is the per-response mean. As ``batch`` grows it tends to the per-token sum divided
    by :math:`\mathbb{E}|y|`.

    The batch-pooled :math:`\frac{1}{\lvert y\rvert}` of :eq:`eq-1-grpo`
    (:func:`klnotes.core.surrogates.reduce`'s ``"token-mean"``), :doc:`chapter 5 </book/05_sequences>`.

    Raises:
        ValueError: ``batch`` not a positive integer.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    pmf = length_pmf(vspace, policy)
    others = torch.zeros(1, dtype=torch.float64)
    others[0] = 1.0
    for _ in range(batch - 1):
        others = torch.nn.functional.conv1d(
            others.view(1, 1, -1), pmf.flip(0).view(1, 1, -1), padding=pmf.numel() - 1
        ).view(-1)
    k = torch.arange(pmf.numel(), dtype=torch.float64)
    s = torch.arange(others.numel(), dtype=torch.float64)
    scale = torch.zeros(pmf.numel(), dtype=torch.float64)
    scale[1:] = batch * (others[None, :] / (k[1:, None] + s[None, :])).sum(-1)
    return sum_k2_gradient(vspace, policy, ref, scale)
