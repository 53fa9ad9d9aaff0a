"""klnotes.analysis.objective: the regularized objective, its optimum, and the reverse/forward KL fits."""

import math

import pytest
import torch

from klnotes.analysis import objective


def _problem(V=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(V, dtype=torch.float64, generator=g),
        torch.rand(V, dtype=torch.float64, generator=g),
    )


def test_kl_divergence_matches_the_definition_and_is_zero_on_the_diagonal():
    logp = torch.log_softmax(torch.tensor([0.1, -0.3, 2.0], dtype=torch.float64), -1)
    logq = torch.log_softmax(torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64), -1)
    expected = sum(math.exp(a) * (a - b) for a, b in zip(logp.tolist(), logq.tolist()))
    assert objective.kl_divergence(logp, logq).item() == pytest.approx(expected, rel=1e-14)
    assert objective.kl_divergence(logp, logp).item() == 0.0


def test_kl_divergence_ignores_zero_probability_outcomes():
    logp = torch.tensor([0.0, -math.inf], dtype=torch.float64)
    logq = torch.log(torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert objective.kl_divergence(logp, logq).item() == pytest.approx(math.log(2), rel=1e-14)


def test_kl_divergence_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"same shape.*\(3,\).*\(4,\)"):
        objective.kl_divergence(torch.zeros(3), torch.zeros(4))


def test_objective_equals_log_partition_minus_kl_to_the_optimum():
    logits_ref, reward = _problem()
    beta = 0.3
    best = objective.optimal_objective(logits_ref, reward, beta)
    star = objective.optimal_policy_logprobs(logits_ref, reward, beta)
    pis = torch.randn(50, 6, dtype=torch.float64)
    lhs = objective.regularized_objective(pis, logits_ref, reward, beta)
    rhs = best - beta * objective.kl_divergence(torch.log_softmax(pis, -1), star.expand(50, 6))
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-14)
    assert objective.regularized_objective(star, logits_ref, reward, beta).item() == pytest.approx(
        best.item(), rel=1e-13
    )


def test_gradient_of_the_objective_vanishes_at_the_optimum():
    logits_ref, reward = _problem(seed=3)
    star = objective.optimal_policy_logprobs(logits_ref, reward, 0.7).clone().requires_grad_(True)
    objective.regularized_objective(star, logits_ref, reward, 0.7).backward()
    assert star.grad.abs().max().item() < 1e-14


@pytest.mark.parametrize("beta", [0.0, -1.0, float("inf"), float("nan"), "1"])
def test_bad_beta_is_rejected_with_its_value(beta):
    logits_ref, reward = _problem()
    with pytest.raises(ValueError, match="beta"):
        objective.optimal_policy_logprobs(logits_ref, reward, beta)


def test_bad_logits_are_rejected():
    with pytest.raises(ValueError, match="V >= 2"):
        objective.optimal_objective(torch.zeros(1), torch.zeros(1), 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        objective.regularized_objective(
            torch.tensor([0.0, math.nan]), torch.zeros(2), torch.zeros(2), 1.0
        )
    with pytest.raises(TypeError, match="torch.Tensor"):
        objective.regularized_objective([0.0, 1.0], torch.zeros(2), torch.zeros(2), 1.0)


def test_frontier_trades_kl_for_reward_as_beta_falls():
    logits_ref, reward = _problem(V=10, seed=4)
    frame = objective.optimal_frontier(logits_ref, reward, [8, 2, 0.5, 0.1])
    assert list(frame.columns) == ["beta", "reward", "kl"]
    assert frame["kl"].is_monotonic_increasing and frame["reward"].is_monotonic_increasing
    with pytest.raises(ValueError, match="at least one"):
        objective.optimal_frontier(logits_ref, reward, [])


def test_reverse_kl_fit_seeks_a_mode_and_forward_kl_fit_covers_both():
    grid = torch.linspace(-6, 6, 401, dtype=torch.float64)
    target = objective.gaussian_mixture_logprobs(grid, (-2.0, 2.0), (0.6, 0.6), (0.4, 0.6))
    mu_r, s_r = objective.fit_gaussian(target, grid, "reverse")
    mu_f, s_f = objective.fit_gaussian(target, grid, "forward")
    assert abs(mu_r - 2.0) < 0.05 and s_r < 0.7
    # forward KL over an exponential family = moment matching: the fitted q has the target's
    # mean and second moment on the grid.
    q = objective.discretized_gaussian_logprobs(
        grid, torch.tensor(mu_f, dtype=grid.dtype), torch.tensor(s_f, dtype=grid.dtype)
    ).exp()
    p = target.exp()
    assert (q * grid).sum().item() == pytest.approx((p * grid).sum().item(), abs=1e-6)
    assert (q * grid**2).sum().item() == pytest.approx((p * grid**2).sum().item(), abs=1e-5)
    assert s_f > 2.0


def test_fit_rejects_unknown_direction_and_bad_mixtures():
    grid = torch.linspace(-1, 1, 11, dtype=torch.float64)
    with pytest.raises(ValueError, match="reverse, forward.*'sideways'"):
        objective.fit_gaussian(torch.log_softmax(grid, -1), grid, "sideways")
    with pytest.raises(ValueError, match="same non-zero length"):
        objective.gaussian_mixture_logprobs(grid, (0.0,), (1.0, 1.0), (1.0,))
    with pytest.raises(ValueError, match="> 0"):
        objective.gaussian_mixture_logprobs(grid, (0.0,), (-1.0,), (1.0,))
