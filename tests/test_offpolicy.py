"""Off-policy k1-as-loss drift condition, ratio weightings, variances, micro-batch splits
(exact)."""

import itertools

import pytest
import torch

from klnotes import frameworks as F
from klnotes.analysis import exact
from klnotes.analysis import offpolicy as O


def test_bernoulli_counterexample_reference_in_the_middle_still_drifts_away():
    step = O.bernoulli_k1_loss_step(1.0, 0.5, 0.0, lr=0.1)
    assert round(step["kl_before"], 4) == 0.0263 and round(step["kl_after"], 4) == 0.0287
    assert step["rate"] > 0 and step["same_side"]


@pytest.mark.parametrize(
    "theta,ref,old",
    [
        (1.0, 0.5, 0.0),
        (1.0, 0.0, 0.5),
        (1.0, 2.0, 0.0),
        (-1.0, 0.3, -2.0),
        (0.2, -0.5, 1.5),
        (0.0, 1.0, 2.0),
    ],
)
def test_one_logit_condition_is_same_side(theta, ref, old):
    step = O.bernoulli_k1_loss_step(theta, ref, old, lr=1e-4)
    assert (step["rate"] > 0) == step["same_side"]
    assert (step["kl_after"] > step["kl_before"]) == step["same_side"]


def test_drift_rate_predicts_the_kl_change_of_a_small_categorical_step():
    theta, ref, old = (exact.random_categorical(6, seed=s) for s in (1, 2, 3))
    rate = O.k1_loss_drift_rate(
        exact.categorical_kl_gradient(theta, ref),
        exact.categorical_kl_gradient(theta, old, direction="forward"),
    )
    g_k1 = exact.categorical_expected_gradient(lambda lp, lr, lo: lp, theta, ref, old)
    eta = 1e-6
    change = float(exact.categorical_kl(theta - eta * g_k1, ref) - exact.categorical_kl(theta, ref))
    assert change / eta == pytest.approx(rate, rel=1e-4)


def test_drift_rate_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="same size"):
        O.k1_loss_drift_rate(torch.zeros(3), torch.zeros(4))


@pytest.mark.parametrize("label", ["k1 as loss", "k2 as loss", "k3 as loss"])
def test_prefix_and_sequence_ratios_are_exact_token_ratio_and_none_are_not(label):
    space, theta, ref, old = F.off_policy_problem(0.3)
    on = exact.expected_gradient(space, O.ratio_weighted_surrogate(label, "none"), theta, ref)
    scale = float(exact.objective_gradient(space, theta, ref, "sequence reverse KL").norm())
    errs = {}
    for w in O.WEIGHTINGS:  # distance from the on-policy gradient, relative to |g*| (k1's is zero)
        g = exact.expected_gradient(
            space, O.ratio_weighted_surrogate(label, w), theta, ref, behaviour=old
        )
        errs[w] = float((g - on).norm()) / scale
    assert errs["prefix"] < 1e-12 and errs["sequence"] < 1e-12
    if label != "k1 as loss":  # k1's per-token ratio is exact too (zero given any prefix)
        assert errs["token"] > 1e-3
    assert errs["none"] > 1e-3


def test_gradient_moments_match_enumeration_and_prefix_variance_is_below_sequence():
    space, theta, ref, old = F.off_policy_problem(0.3)
    for w in ("prefix", "sequence"):
        f = O.ratio_weighted_surrogate("k2 as loss", w)
        m = O.gradient_moments(space, f, theta, ref, old)
        g = exact.expected_gradient(space, f, theta, ref, behaviour=old)
        assert float((m["mean"] - g).norm()) < 1e-14
        assert m["variance"] > 0
    v = {
        w: O.gradient_moments(space, O.ratio_weighted_surrogate("k2 as loss", w), theta, ref, old)[
            "variance"
        ]
        for w in O.WEIGHTINGS
    }
    assert v["prefix"] < v["sequence"]


def test_gradient_moments_on_one_sequence_by_hand():
    space = exact.SequenceSpace(vocab=3, length=1)
    theta, ref = exact.random_tabular(space, seed=1), exact.random_tabular(space, seed=2)
    m = O.gradient_moments(space, O.ratio_weighted_surrogate("k2 as loss", "none"), theta, ref)
    p = torch.softmax(theta[0], -1)
    u = torch.log_softmax(theta[0], -1) - torch.log_softmax(ref[0], -1)
    per = [u[y] * (torch.eye(3, dtype=torch.float64)[y] - p) for y in range(3)]
    mean = sum(p[y] * per[y] for y in range(3))
    second = sum(p[y] * per[y].square().sum() for y in range(3))
    assert float((m["mean"][0] - mean).norm()) < 1e-15
    assert m["variance"] == pytest.approx(float(second - mean.square().sum()), rel=1e-12)


def test_stale_value_with_sequence_ratio_adds_minus_grad_kl_to_old():
    space, theta, ref, old = F.off_policy_problem(0.03)
    opt = O.with_stale_sequence_ratio(F.option("openrlhf"))
    off = F.expected_gradient(opt, space, theta, ref, behaviour=old)
    on = F.expected_gradient(F.option("openrlhf"), space, theta, ref)
    kl_old = exact.objective_gradient(space, theta, old, "sequence reverse KL")
    kl_old = kl_old if opt.sum_tokens else kl_old / space.length  # a token mean over L tokens
    assert float((off - (on - kl_old)).norm() / on.norm()) < 1e-12
    assert F.off_policy_error(opt) > 1e-2


def test_stale_sequence_ratio_rejects_fresh_options():
    with pytest.raises(ValueError, match="pi_old"):
        O.with_stale_sequence_ratio(F.option("verl", use_kl_loss=True))


def test_split_weights_and_exact_split_error_by_enumeration():
    assert torch.allclose(O.split_weights([4, 4]), torch.full((8,), 1 / 8, dtype=torch.float64))
    w = O.split_weights([3, 5])
    assert (
        float(w.sum()) == pytest.approx(1.0)
        and O.split_error([3, 5], 1.0, 1.0)["variance_factor"] > 1
    )
    space = exact.SequenceSpace(vocab=3, length=1)
    theta, ref = exact.random_tabular(space, seed=1), exact.random_tabular(space, seed=2)
    f = O.ratio_weighted_surrogate("k2 as loss", "none")
    m = O.gradient_moments(space, f, theta, ref)
    p = exact.sequence_probs(space, theta)
    grads = [
        exact.expected_gradient(
            space, lambda a, b, c, d, y=y: f(a, b, c, d) * (torch.arange(3) == y) / p[y], theta, ref
        )
        for y in range(3)
    ]
    sizes = [1, 2]
    ws = O.split_weights(sizes)
    num = den = mean_split = 0.0
    for ys in itertools.product(range(3), repeat=3):
        prob = float(torch.prod(p[list(ys)]))
        split = sum(float(ws[i]) * grads[y] for i, y in enumerate(ys))
        plain = sum(grads[y] for y in ys) / 3
        num += prob * float((split - plain).square().sum())
        den += prob * float(plain.square().sum())
        mean_split = mean_split + prob * split
    assert float((mean_split - m["mean"]).norm()) < 1e-14
    want = O.split_error(sizes, float(m["mean"].square().sum()), m["variance"])["rms_relative"]
    assert (num / den) ** 0.5 == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("sizes", [[], [0, 2], [1.5]])
def test_split_weights_reject_bad_sizes(sizes):
    with pytest.raises(ValueError, match="positive integers"):
        O.split_weights(sizes)


def test_unknown_weighting_and_in_reward_label_are_rejected():
    with pytest.raises(ValueError, match="weighting"):
        O.ratio_weighted_surrogate("k2 as loss", "tokens")
    with pytest.raises(ValueError, match="as loss"):
        O.ratio_weighted_surrogate("k1 in reward", "prefix")
