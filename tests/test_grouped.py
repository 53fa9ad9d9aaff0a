"""Group- and batch-normalized advantages with the KL in the reward (klnotes.frameworks.grouped)."""

import pytest
import torch

from klnotes import frameworks as F
from klnotes.frameworks import grouped


@pytest.mark.parametrize(
    "framework, name, factor",
    [
        ("verl", "rloo", lambda g: 1.0),
        ("verl", "remax", lambda g: 1.0),
        ("verl", "grpo:nostd", lambda g: 1 - 1 / g),
        ("verl", "opo", lambda g: 1 - 1 / g),
        ("verl", "gpg", lambda g: 1 - 1 / g),
        ("openrlhf", "group_norm", lambda g: 1.0),
        ("openrlhf", "rloo", lambda g: 1.0),
    ],
)
@pytest.mark.parametrize("group", [2, 3])
def test_linear_estimators_give_an_exact_multiple_of_the_sequence_reverse_kl(
    framework, name, factor, group
):
    est = grouped.ESTIMATORS[(framework, name)]
    for with_task in (True, False):
        r = grouped.kl_gradient(est, group, beta=0.1, with_task=with_task)
        assert r.residual < 1e-9
        assert r.scale == pytest.approx(factor(group), abs=1e-9)


def test_centring_factor_is_one_minus_one_over_g_also_for_four_samples():
    r = grouped.kl_gradient(grouped.estimator("verl", "grpo", norm_by_std=False), 4, beta=0.05)
    assert r.scale == pytest.approx(0.75, abs=1e-9) and r.residual < 1e-9


@pytest.mark.parametrize(
    "name", ["grpo", "grpo_vectorized", "grpo_passk", "reinforce_plus_plus_baseline"]
)
def test_std_normalized_estimators_are_no_constant_multiple(name):
    est = grouped.ESTIMATORS[("verl", name)]
    small, large = (grouped.kl_gradient(est, 3, beta=b, with_task=False) for b in (0.01, 0.1))
    assert (
        small.residual > 0.05 and large.residual > 0.05
    )  # not along the sequence reverse KL gradient
    # without a task reward the normalized advantage does not depend on beta (but for the eps in the
    # denominator): the scale goes as 1/beta
    assert small.scale == pytest.approx(10 * large.scale, rel=1e-2)


def test_verl_grpo_recommendation_reaches_the_sequence_reverse_kl():
    assert F.audit("verl", use_kl_in_reward=True, adv_estimator="grpo").on_policy == F.OTHER
    fixed = F.audit(
        "verl", use_kl_in_reward=True, adv_estimator="grpo", norm_adv_by_std_in_grpo=False
    )
    assert fixed.on_policy == "sequence reverse KL" and "1 - 1/G" in fixed.grouped


def test_every_verl_estimator_is_known_to_the_model():
    from klnotes.frameworks.options import VERL_ADV

    assert set(VERL_ADV) == {n.split(":")[0] for f, n in grouped.ESTIMATORS if f == "verl"}


def test_bad_arguments_are_named():
    est = grouped.ESTIMATORS[("verl", "rloo")]
    with pytest.raises(ValueError, match="group=5"):
        grouped.kl_gradient(est, 5)
    with pytest.raises(ValueError, match="beta=nan"):
        grouped.kl_gradient(est, 2, beta=float("nan"))
    with pytest.raises(ValueError, match="not modelled|sum_pi_squared"):
        grouped.kl_gradient(grouped.ESTIMATORS[("verl", "optimal_token_baseline")], 2)
    with pytest.raises(ValueError, match="known: "):
        grouped.estimator("verl", "ppo")


def test_exact_enumeration_matches_a_monte_carlo_estimate():
    """The exact grouped gradient agrees with sampled groups (RLOO, G = 2) within 4 standard
    errors."""
    from klnotes.analysis import exact

    pol, theta, ref, _ = F.sequence_problem()
    est = grouped.ESTIMATORS[("verl", "rloo")]
    exact_g = grouped.kl_gradient(est, 2, beta=1.0, with_task=False).scale
    probs = exact.sequence_probs(pol, theta).detach()
    gen = torch.Generator().manual_seed(0)
    n = 20000
    idx = torch.multinomial(probs, n * 2, replacement=True, generator=gen).view(n, 2)
    u = (exact.token_logp(pol, theta) - exact.token_logp(pol, ref)).detach()
    adv = est.advantage(-u[idx].unsqueeze(0))[0]  # [n, 2, L]
    leaf = theta.detach().clone().requires_grad_(True)
    lp = exact.token_logp(pol, leaf)[idx]  # [n, 2, L]
    per = torch.stack(
        [
            torch.autograd.grad((adv[i] * lp[i]).sum() / 2, leaf, retain_graph=True)[0].flatten()
            for i in range(0, n, 50)
        ]
    )  # a thinned sample keeps the test fast
    t = -F.objective_gradients(pol, theta, ref)["sequence reverse KL"].flatten()
    proj = per @ t / (t @ t)
    assert abs(float(proj.mean()) - exact_g) < 4 * float(proj.std()) / len(proj) ** 0.5 + 1e-12
