r"""The KL-regularized RLHF objective on a categorical policy (chapter 1).

For one prompt, a policy over ``V`` responses is a vector of logits ``[..., V]``. The objective
(book equation eq-1-objective) is

.. math:: J(\pi) = \mathbb{E}_{y\sim\pi}[r(y)] - \beta\,\mathrm{KL}(\pi\,\|\,\pi_{\mathrm{ref}}),

whose maximizer is the reference tilted by the reward,

.. math::

    \pi^\star(y) = \frac{\pi_{\mathrm{ref}}(y)\, e^{r(y)/\beta}}{Z}, \qquad
    Z = \sum_y \pi_{\mathrm{ref}}(y)\, e^{r(y)/\beta},

and for every policy :math:`J(\pi) = \beta\log Z - \beta\,\mathrm{KL}(\pi\,\|\,\pi^\star)` (eq-1-gap).
All functions are pure, work in the dtype they are given (use float64 for exact checks) and
broadcast over leading batch dimensions.
"""

from __future__ import annotations

import math

import pandas as pd
import torch

__all__ = [
    "kl_divergence",
    "regularized_objective",
    "optimal_policy_logprobs",
    "optimal_objective",
    "discretized_gaussian_logprobs",
    "gaussian_mixture_logprobs",
    "fit_gaussian",
    "optimal_frontier",
]


def check_logits(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 0 or x.shape[-1] < 2:
        raise ValueError(f"{name} must have shape [..., V] with V >= 2, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} has {int((~torch.isfinite(x)).sum())} non-finite entries")


def _check_reward(reward) -> None:
    if not isinstance(reward, torch.Tensor):
        raise TypeError(f"reward must be a torch.Tensor [..., V], got {type(reward).__name__}")
    if not torch.isfinite(reward).all():
        raise ValueError(
            f"reward has {int((~torch.isfinite(reward)).sum())} non-finite entries; rewards must be finite"
        )


def _check_beta(beta: float) -> None:
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    r""":math:`\mathrm{KL}(p\,\|\,q) = \sum_y p(y)\,(\log p(y) - \log q(y))` over the last
    dimension (:eq:`eq-1-kl`).

    Args:
        logp, logq: normalized log-probabilities ``[..., V]`` of the same shape. ``-inf`` entries
            of ``logp`` (zero probability) contribute nothing.
    Returns:
        ``[...]``, non-negative (Gibbs' inequality), ``inf`` where q lacks support of p.
    """
    if logp.shape != logq.shape:
        raise ValueError(
            f"logp and logq must have the same shape, got {tuple(logp.shape)} and {tuple(logq.shape)}"
        )
    p = logp.exp()
    terms = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p))
    return terms.sum(-1)


def regularized_objective(
    logits: torch.Tensor, logits_ref: torch.Tensor, reward: torch.Tensor, beta: float
) -> torch.Tensor:
    r""":math:`J(\pi) = \mathbb{E}_{y\sim\pi}[r(y)]
    - \beta\,\mathrm{KL}(\pi\,\|\,\pi_{\mathrm{ref}})`
    (:eq:`eq-1-objective`).

    Args:
        logits, logits_ref: unnormalized log-probabilities ``[..., V]`` of pi and pi_ref.
        reward: ``[..., V]`` (or broadcastable), the reward of each response.
        beta: KL coefficient, > 0.
    Returns:
        ``[...]``. Differentiable in ``logits``.
    """
    check_logits("logits", logits)
    check_logits("logits_ref", logits_ref)
    _check_beta(beta)
    _check_reward(reward)
    logp = torch.log_softmax(logits, -1)
    logp_ref = torch.log_softmax(logits_ref, -1).expand_as(logp)
    return (logp.exp() * reward).sum(-1) - beta * kl_divergence(logp, logp_ref)


def optimal_policy_logprobs(
    logits_ref: torch.Tensor, reward: torch.Tensor, beta: float
) -> torch.Tensor:
    r"""The optimal policy :math:`\log\pi^*(y) = \log\pi_{\mathrm{ref}}(y) + r(y)/\beta - \log Z`
    (:eq:`eq-1-gap`).

    Shape ``[..., V]``.
    """
    check_logits("logits_ref", logits_ref)
    _check_beta(beta)
    _check_reward(reward)
    return torch.log_softmax(torch.log_softmax(logits_ref, -1) + reward / beta, -1)


def optimal_objective(logits_ref: torch.Tensor, reward: torch.Tensor, beta: float) -> torch.Tensor:
    r""":math:`\max_\pi J(\pi) = \beta\log Z`,
    :math:`Z = \sum_y \pi_{\mathrm{ref}}(y)\,e^{r(y)/\beta}` (:eq:`eq-1-gap`).

    Shape ``[...]``.
    """
    check_logits("logits_ref", logits_ref)
    _check_beta(beta)
    return beta * torch.logsumexp(torch.log_softmax(logits_ref, -1) + reward / beta, -1)


def discretized_gaussian_logprobs(
    grid: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    r"""Log-probabilities ``[V]`` of N(mean, std^2) restricted to the points of ``grid`` ``[V]``.

    .. math:: \log q(y_i) = -\frac{(y_i-\mu)^2}{2\sigma^2}
        - \log\sum_j e^{-(y_j-\mu)^2/(2\sigma^2)}

    the Gaussians of :doc:`chapter 1 </book/01_kl_objective>`'s reverse and forward fits
    (:numref:`fig-1-kl-fits`).
    """
    if not torch.all(torch.as_tensor(std) > 0):
        raise ValueError(f"std must be > 0, got {std!r}")
    return torch.log_softmax(-0.5 * ((grid - mean) / std) ** 2, -1)


def gaussian_mixture_logprobs(
    grid: torch.Tensor,
    means: tuple[float, ...],
    stds: tuple[float, ...],
    weights: tuple[float, ...],
) -> torch.Tensor:
    r"""Log-probabilities ``[V]`` of a Gaussian mixture restricted to ``grid`` ``[V]``.

    .. math:: p(y_i) = \frac{\sum_k w_k\,q_k(y_i)}{\sum_j\sum_k w_k\,q_k(y_j)}

    with :math:`q_k` the discretized :math:`\mathcal{N}(\mu_k, \sigma_k^2)` of
    :func:`discretized_gaussian_logprobs`; the bimodal target of
    :doc:`chapter 1 </book/01_kl_objective>` (:numref:`fig-1-kl-fits`).
    """
    if not (len(means) == len(stds) == len(weights) > 0):
        raise ValueError(
            f"means, stds and weights must have the same non-zero length, got {len(means)}, {len(stds)}, {len(weights)}"
        )
    if any(w <= 0 for w in weights) or any(s <= 0 for s in stds):
        raise ValueError(f"weights and stds must be > 0, got weights={weights}, stds={stds}")
    comps = torch.stack(
        [
            math.log(w)
            + discretized_gaussian_logprobs(
                grid, torch.tensor(m, dtype=grid.dtype), torch.tensor(s, dtype=grid.dtype)
            )
            for m, s, w in zip(means, stds, weights)
        ]
    )
    return torch.log_softmax(torch.logsumexp(comps, 0), -1)


DIRECTIONS = ("reverse", "forward")


def fit_gaussian(
    target_logp: torch.Tensor,
    grid: torch.Tensor,
    direction: str,
    init: tuple[float, float] = (1.0, 0.5),
    steps: int = 500,
) -> tuple[float, float]:
    r"""Fit a discretized Gaussian q = N(mu, sigma^2) on ``grid`` to a target p.

    .. math:: \min_{\mu,\sigma}\ \mathrm{KL}(q_{\mu,\sigma}\,\|\,p) \ \text{(reverse)}, \qquad
        \min_{\mu,\sigma}\ \mathrm{KL}(p\,\|\,q_{\mu,\sigma}) \ \text{(forward)}

    with :math:`\mathrm{KL}` of :eq:`eq-1-kl`; ``target_logp``, ``grid``: ``[V]``
    (:numref:`fig-1-kl-fits`).

    ``direction="reverse"`` minimizes KL(q || p) (the RLHF direction: mode seeking);
    ``direction="forward"`` minimizes KL(p || q) (maximum likelihood: mass covering).
    Deterministic (L-BFGS from ``init``). Returns ``(mu, sigma)``.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    mu = torch.tensor(float(init[0]), dtype=grid.dtype, requires_grad=True)
    log_sigma = torch.tensor(math.log(init[1]), dtype=grid.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([mu, log_sigma], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        q = discretized_gaussian_logprobs(grid, mu, log_sigma.exp())
        loss = (
            kl_divergence(q, target_logp)
            if direction == "reverse"
            else kl_divergence(target_logp, q)
        )
        loss.backward()
        return loss

    opt.step(closure)
    return float(mu.detach()), float(log_sigma.detach().exp())


def optimal_frontier(logits_ref: torch.Tensor, reward: torch.Tensor, betas) -> pd.DataFrame:
    r"""Expected reward and KL(pi* || pi_ref) of the optimal policy for each beta in ``betas``.

    For each :math:`\beta`, :math:`\pi^\star \propto \pi_{\mathrm{ref}}\,e^{r/\beta}` (the
    maximizer of :eq:`eq-1-objective`, by :eq:`eq-1-gap`), and the point
    :math:`\big(\mathrm{KL}(\pi^\star\,\|\,\pi_{\mathrm{ref}}),\ \mathbb{E}_{\pi^\star}[r]\big)` of
    :numref:`fig-1-frontier`.

    Args:
        logits_ref: ``[V]``; reward: ``[V]``; betas: iterable of positive floats.
    Returns:
        a tidy frame with columns ``beta``, ``reward``, ``kl`` (one row per beta).
    """

    rows = []
    logp_ref = torch.log_softmax(logits_ref, -1)
    for beta in betas:
        logp = optimal_policy_logprobs(logits_ref, reward, float(beta))
        rows.append(
            {
                "beta": float(beta),
                "reward": float((logp.exp() * reward).sum()),
                "kl": float(kl_divergence(logp, logp_ref)),
            }
        )
    if not rows:
        raise ValueError("betas must contain at least one value")
    return pd.DataFrame(rows)
