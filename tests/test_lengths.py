"""Variable-length responses: the coefficient of a per-response mean, checked by enumeration."""

import itertools

import pytest
import torch

from klnotes.analysis import exact
from klnotes.analysis import lengths as Lg


@pytest.fixture(scope="module")
def problem():
    vs = Lg.variable_length_space(3, 3)
    return vs, exact.random_tabular(vs.space, seed=3), exact.random_tabular(vs.space, seed=4)


def test_responses_are_enumerated_once_and_sum_to_one(problem):
    vs, theta, _ = problem
    assert vs.num_responses == 1 + 2 + 3 * 4  # EOS first; EOS second; length 3
    assert float(Lg.response_logp(vs, theta).sum(-1).exp().sum()) == pytest.approx(1.0, abs=1e-14)
    assert float(Lg.length_pmf(vs, theta).sum()) == pytest.approx(1.0, abs=1e-14)


def test_mean_loss_has_coefficient_u_times_conditional_inverse_length(problem):
    vs, theta, ref = problem
    g = Lg.mean_k2_gradient(vs, theta, ref)
    assert float((Lg.coefficient_form_gradient(vs, theta, ref) - g).norm() / g.norm()) < 1e-13


def test_fixed_length_weight_claim_is_wrong_when_lengths_vary(problem):
    vs, theta, ref = problem
    g = Lg.mean_k2_gradient(vs, theta, ref)
    assert float((Lg.fixed_weight_gradient(vs, theta, ref) - g).norm() / g.norm()) > 0.1


def test_fixed_length_weight_claim_holds_when_every_response_has_the_same_length():
    vs = Lg.variable_length_space(3, 2)
    theta, ref = exact.random_tabular(vs.space, seed=5), exact.random_tabular(vs.space, seed=6)
    theta[0, Lg.EOS] = ref[0, Lg.EOS] = -80.0  # no response ends at the first token
    g = Lg.mean_k2_gradient(vs, theta, ref)
    assert float((Lg.fixed_weight_gradient(vs, theta, ref) - g).norm() / g.norm()) < 1e-12


def test_conditional_inverse_length_at_the_end_is_one_over_the_length(problem):
    vs, theta, _ = problem
    h = Lg.conditional_inverse_length(vs, theta)
    last = vs.lengths - 1
    assert torch.allclose(h[torch.arange(vs.num_responses), last], 1.0 / vs.lengths.double())


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_token_mean_gradient_matches_enumeration_of_batches(problem, batch):
    vs, theta, ref = problem
    lr = Lg.response_logp(vs, ref)
    leaf = theta.clone().requires_grad_(True)
    lp = Lg.response_logp(vs, leaf)
    k2 = (0.5 * (lp - lr).square()).sum(-1)
    w = lp.sum(-1).exp().detach()
    total = 0.0
    for idx in itertools.product(range(vs.num_responses), repeat=batch):
        idx = list(idx)
        total = total + torch.prod(w[idx]) * k2[idx].sum() / vs.lengths[idx].sum()
    (brute,) = torch.autograd.grad(total, leaf)
    got = Lg.token_mean_gradient(vs, theta, ref, batch)
    assert float((got - brute).norm() / brute.norm()) < 1e-12


def test_token_mean_approaches_sum_over_mean_length_only_as_the_batch_grows(problem):
    vs, theta, ref = problem
    mean_len = float((Lg.length_pmf(vs, theta) * torch.arange(vs.space.length + 1)).sum())
    ideal = Lg.sum_k2_gradient(vs, theta, ref) / mean_len
    errs = [
        float((Lg.token_mean_gradient(vs, theta, ref, b) - ideal).norm() / ideal.norm())
        for b in (1, 4, 64)
    ]
    assert errs[0] > errs[1] > errs[2] > 0 and errs[2] < 0.01


def test_bad_batch_is_rejected(problem):
    vs, theta, ref = problem
    with pytest.raises(ValueError, match="batch"):
        Lg.token_mean_gradient(vs, theta, ref, 0)
