"""klnotes.core.surrogates: the two implementation styles, reductions, token/sequence level, off-policy.

References are closed forms (coefficients of chapter 3), hand loops, and exact enumeration of a
categorical policy in float64.
"""

import math

import pytest
import torch

from klnotes.core import coefficients, estimators, surrogates

DT = torch.float64
LABELS = coefficients.IMPLEMENTATIONS


def _batch(B=4, T=5, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, dtype=DT, generator=g) * 2 - 0.05
    logp_ref = logp + scale * torch.randn(B, T, dtype=DT, generator=g)
    return logp, logp_ref


def _mask(B=4, T=5):
    lengths = [5, 3, 1, 0][:B] + [T] * max(0, B - 4)
    return torch.tensor([[t < n for t in range(T)] for n in lengths])


def _grad(fn, logp):
    leaf = logp.detach().clone().requires_grad_(True)
    out = fn(leaf)
    (g,) = torch.autograd.grad(out.sum(), leaf, allow_unused=True)
    return torch.zeros_like(logp) if g is None else g


# --- elementwise styles -------------------------------------------------------------------------


@pytest.mark.parametrize("name", estimators.NAMES)
def test_in_reward_value_is_detached_estimator_times_logp_and_gradient_is_the_estimator(name):
    logp, logp_ref = _batch()
    u = logp - logp_ref
    value = surrogates.in_reward(name, logp, logp_ref)
    torch.testing.assert_close(
        value, estimators.get(name)(logp, logp_ref) * logp, rtol=1e-14, atol=0
    )
    g = _grad(lambda lp: surrogates.in_reward(name, lp, logp_ref), logp)
    torch.testing.assert_close(
        g, coefficients.closed_form(name, "in_reward", u), rtol=1e-13, atol=1e-15
    )


@pytest.mark.parametrize(
    "name,expected",
    [
        ("k1", lambda u: torch.ones_like(u)),
        ("k2", lambda u: u),
        ("k3", lambda u: 1 - torch.exp(-u)),
    ],
)
def test_as_loss_gradient_is_the_derivative_of_the_estimator(name, expected):
    logp, logp_ref = _batch(scale=2.0)
    u = logp - logp_ref
    g = _grad(lambda lp: surrogates.as_loss(name, lp, logp_ref), logp)
    torch.testing.assert_close(g, expected(u), rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(
        g, coefficients.closed_form(name, "as_loss", u), rtol=1e-13, atol=1e-15
    )


@pytest.mark.parametrize("label", LABELS)
def test_surrogate_dispatches_on_the_label_and_its_coefficient_is_the_closed_form(label):
    logp, logp_ref = _batch(seed=2)
    g = _grad(lambda lp: surrogates.surrogate(label, lp, logp_ref), logp)
    torch.testing.assert_close(
        g, coefficients.coefficient(label, logp - logp_ref), rtol=1e-13, atol=1e-15
    )
    assert label in coefficients.identify(lambda lp, lr: surrogates.surrogate(label, lp, lr))


def test_in_reward_coefficient_is_detached_from_both_policies():
    logp, logp_ref = _batch()
    lp, ref = logp.clone().requires_grad_(True), logp_ref.clone().requires_grad_(True)
    surrogates.surrogate("k2 in reward", lp, ref).sum().backward()
    assert ref.grad is None
    torch.testing.assert_close(lp.grad, 0.5 * (logp - logp_ref) ** 2, rtol=1e-14, atol=0)


@pytest.mark.parametrize("bad", ["k4 as loss", "k2 in loss", "k2", 3])
def test_unknown_label_lists_the_allowed_implementations(bad):
    logp, logp_ref = _batch()
    with pytest.raises(ValueError, match="allowed: k1 in reward, k1 as loss"):
        surrogates.surrogate(bad, logp, logp_ref)


def test_unknown_estimator_name_lists_the_allowed_names():
    logp, logp_ref = _batch()
    with pytest.raises(ValueError, match="'k5'.*allowed: k1, k2, k3"):
        surrogates.in_reward("k5", logp, logp_ref)
    with pytest.raises(ValueError, match="'k5'.*allowed: k1, k2, k3"):
        surrogates.as_loss("k5", logp, logp_ref)


def test_elementwise_surrogates_reject_nan_with_its_location():
    logp, logp_ref = _batch()
    logp[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"logp has 1 non-finite value.*\(1, 2\)"):
        surrogates.as_loss("k3", logp, logp_ref)


# --- masks and reductions -----------------------------------------------------------------------


def _reduce_by_hand(x, mask, reduction):
    B, T = x.shape
    if reduction == "none":
        return [[float(x[b, t]) if mask[b, t] else 0.0 for t in range(T)] for b in range(B)]
    if reduction == "token-mean":
        n = sum(int(mask[b, t]) for b in range(B) for t in range(T))
        return sum(float(x[b, t]) for b in range(B) for t in range(T) if mask[b, t]) / max(n, 1)
    total = 0.0
    for b in range(B):
        s = sum(float(x[b, t]) for t in range(T) if mask[b, t])
        n = sum(int(mask[b, t]) for t in range(T))
        total += s / max(n, 1) if reduction == "seq-mean" else s
    return total / B


@pytest.mark.parametrize("reduction", surrogates.REDUCTIONS)
@pytest.mark.parametrize("as_float", [False, True])
def test_reduce_matches_a_hand_loop_with_padding(reduction, as_float):
    x, _ = _batch(seed=5)
    mask = _mask()
    m = mask.to(DT) if as_float else mask
    got = surrogates.reduce(x, m, reduction)
    expected = _reduce_by_hand(x, mask, reduction)
    if reduction == "none":
        torch.testing.assert_close(got, torch.tensor(expected, dtype=DT), rtol=0, atol=0)
    else:
        assert float(got) == pytest.approx(expected, rel=1e-14)


def test_reduce_seq_mean_weights_sequences_equally_token_mean_weights_tokens_equally():
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0], [5.0, 0.0, 0.0, 0.0]], dtype=DT)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    assert float(surrogates.reduce(x, mask, "token-mean")) == pytest.approx(9 / 5)
    assert float(surrogates.reduce(x, mask, "seq-mean")) == pytest.approx((1 + 5) / 2)
    assert float(surrogates.reduce(x, mask, "seq-sum")) == pytest.approx((4 + 5) / 2)


@pytest.mark.parametrize("reduction", surrogates.REDUCTIONS)
def test_reduce_ignores_nan_on_padding_in_value_and_gradient(reduction):
    x, _ = _batch(seed=6)
    mask = _mask()
    x[2, 3] = float("nan")
    x[3, 0] = float("inf")
    leaf = x.clone().requires_grad_(True)
    out = surrogates.reduce(leaf, mask, reduction)
    assert bool(torch.isfinite(out).all())
    out.sum().backward()
    assert bool(torch.isfinite(leaf.grad).all())
    assert float(leaf.grad[~mask].abs().max()) == 0.0


def test_reduce_all_padding_gives_zero_not_nan():
    x = torch.ones(2, 3, dtype=DT)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    for reduction in ("token-mean", "seq-mean", "seq-sum"):
        assert float(surrogates.reduce(x, mask, reduction)) == 0.0


def test_unknown_reduction_lists_the_allowed_ones():
    x, _ = _batch()
    with pytest.raises(ValueError, match="'mean'.*allowed: token-mean, seq-mean, seq-sum, none"):
        surrogates.reduce(x, _mask(), "mean")


@pytest.mark.parametrize(
    "mask,error,match",
    [
        (
            torch.ones(4, 6),
            ValueError,
            r"mask shape \(4, 6\) must equal the values' shape \(4, 5\)",
        ),
        (torch.ones(20), ValueError, r"2-D.*\(20,\)"),
        (torch.full((4, 5), 0.5), ValueError, "only 0 and 1"),
        (torch.full((4, 5), 2), ValueError, "only 0 and 1"),
        (torch.full((4, 5), float("nan")), ValueError, "only 0 and 1"),
        ([[1] * 5] * 4, TypeError, "torch.Tensor"),
    ],
)
def test_bad_masks_are_rejected_with_a_clear_message(mask, error, match):
    x, ref = _batch()
    with pytest.raises(error, match=match):
        surrogates.reduce(x, mask, "token-mean")
    with pytest.raises(error, match=match):
        surrogates.reward_to_go(x, mask)
    with pytest.raises(error, match=match):
        surrogates.kl_loss("k2 as loss", x, ref, mask)


def test_check_mask_returns_bool():
    x, _ = _batch()
    m = surrogates.check_mask(torch.ones(4, 5, dtype=torch.int64), x)
    assert m.dtype == torch.bool and bool(m.all())


# --- reward-to-go and sequence log-ratio ---------------------------------------------------------


def test_reward_to_go_matches_a_loop_reference():
    x, _ = _batch(B=4, T=5, seed=7)
    mask = _mask()
    # a mask with a hole and left padding too: the definition is the masked suffix sum
    mask = torch.cat([mask, torch.tensor([[0, 1, 1, 0, 1], [0, 0, 1, 1, 1]], dtype=torch.bool)])
    x = torch.cat([x, x[:2] * 2])
    got = surrogates.reward_to_go(x, mask)
    B, T = x.shape
    expected = torch.zeros(B, T, dtype=DT)
    for b in range(B):
        for t in range(T):
            if mask[b, t]:
                expected[b, t] = sum(float(x[b, s]) for s in range(t, T) if mask[b, s])
    torch.testing.assert_close(got, expected, rtol=1e-14, atol=1e-15)


def test_reward_to_go_at_the_first_token_is_the_sequence_sum():
    x, _ = _batch(seed=8)
    mask = torch.ones(4, 5, dtype=torch.bool)
    torch.testing.assert_close(surrogates.reward_to_go(x, mask)[:, 0], x.sum(1), rtol=1e-14, atol=0)


def test_sequence_log_ratio_sums_masked_log_ratios_and_ignores_nan_on_padding():
    logp, logp_ref = _batch(seed=9)
    mask = _mask()
    logp[1, 4] = float("nan")
    U = surrogates.sequence_log_ratio(logp, logp_ref, mask)
    for b in range(4):
        expected = sum(float(logp[b, t] - logp_ref[b, t]) for t in range(5) if mask[b, t])
        assert float(U[b]) == pytest.approx(expected, rel=1e-14, abs=1e-15)


# --- token and sequence level -------------------------------------------------------------------


@pytest.mark.parametrize("name", estimators.NAMES)
def test_in_reward_to_go_gradient_is_the_reward_to_go_of_the_estimator(name):
    logp, logp_ref = _batch(seed=10)
    mask = _mask()
    k = estimators.get(name)(logp, logp_ref)
    g = _grad(lambda lp: surrogates.in_reward_to_go(name, lp, logp_ref, mask), logp)
    expected = torch.zeros_like(logp)
    for b in range(4):
        for t in range(5):
            if mask[b, t]:
                expected[b, t] = sum(float(k[b, s]) for s in range(t, 5) if mask[b, s])
    torch.testing.assert_close(g, expected, rtol=1e-13, atol=1e-15)
    value = surrogates.in_reward_to_go(name, logp, logp_ref, mask)
    torch.testing.assert_close(value, expected * logp * mask, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("name", estimators.NAMES)
def test_sequence_in_reward_puts_the_sequence_estimator_on_every_token(name):
    logp, logp_ref = _batch(seed=11, scale=0.3)
    mask = _mask()
    U = ((logp - logp_ref) * mask).sum(1)
    kU = estimators.get(name)(U, torch.zeros_like(U))
    value = surrogates.sequence_in_reward(name, logp, logp_ref, mask)
    assert value.shape == (4,)
    torch.testing.assert_close(value, kU * (logp * mask).sum(1), rtol=1e-13, atol=1e-15)
    g = _grad(lambda lp: surrogates.sequence_in_reward(name, lp, logp_ref, mask), logp)
    torch.testing.assert_close(g, kU[:, None] * mask, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("name", estimators.NAMES)
def test_sequence_as_loss_has_the_derivative_of_the_estimator_at_the_sequence_log_ratio(name):
    logp, logp_ref = _batch(seed=12, scale=0.3)
    mask = _mask()
    U = ((logp - logp_ref) * mask).sum(1)
    value = surrogates.sequence_as_loss(name, logp, logp_ref, mask)
    torch.testing.assert_close(
        value, estimators.get(name)(U, torch.zeros_like(U)), rtol=1e-13, atol=1e-15
    )
    g = _grad(lambda lp: surrogates.sequence_as_loss(name, lp, logp_ref, mask), logp)
    c = coefficients.closed_form(name, "as_loss", U)
    torch.testing.assert_close(g, c[:, None] * mask, rtol=1e-13, atol=1e-15)


def test_sequence_k2_as_loss_and_k1_in_reward_have_the_same_per_sample_gradient():
    logp, logp_ref = _batch(seed=13)
    mask = _mask()
    a = _grad(lambda lp: surrogates.sequence_as_loss("k2", lp, logp_ref, mask), logp)
    b = _grad(lambda lp: surrogates.sequence_in_reward("k1", lp, logp_ref, mask), logp)
    torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("label", LABELS)
@pytest.mark.parametrize("reduction", surrogates.REDUCTIONS)
def test_kl_loss_token_level_is_the_reduced_elementwise_surrogate(label, reduction):
    logp, logp_ref = _batch(seed=14)
    mask = _mask()
    got = surrogates.kl_loss(label, logp, logp_ref, mask, level="token", reduction=reduction)
    expected = _reduce_by_hand(surrogates.surrogate(label, logp, logp_ref), mask, reduction)
    if reduction == "none":
        torch.testing.assert_close(got, torch.tensor(expected, dtype=DT), rtol=1e-14, atol=1e-15)
    else:
        assert float(got) == pytest.approx(expected, rel=1e-13)


@pytest.mark.parametrize("name", estimators.NAMES)
@pytest.mark.parametrize("reduction", surrogates.REDUCTIONS)
def test_kl_loss_token_rtg_is_the_reduced_reward_to_go_surrogate(name, reduction):
    logp, logp_ref = _batch(seed=15)
    mask = _mask()
    got = surrogates.kl_loss(
        f"{name} in reward", logp, logp_ref, mask, level="token-rtg", reduction=reduction
    )
    terms = surrogates.in_reward_to_go(name, logp, logp_ref, mask)
    expected = _reduce_by_hand(terms, mask, reduction)
    if reduction == "none":
        torch.testing.assert_close(got, torch.tensor(expected, dtype=DT), rtol=1e-14, atol=1e-15)
    else:
        assert float(got) == pytest.approx(expected, rel=1e-13)


@pytest.mark.parametrize("label", LABELS)
def test_kl_loss_sequence_level_reductions(label):
    logp, logp_ref = _batch(seed=16, scale=0.3)
    mask = _mask()
    name, style = coefficients.parse_implementation(label)
    fn = surrogates.sequence_in_reward if style == "in_reward" else surrogates.sequence_as_loss
    per_seq = fn(name, logp, logp_ref, mask)
    lengths = mask.sum(1).to(DT)
    kw = dict(level="sequence")
    torch.testing.assert_close(
        surrogates.kl_loss(label, logp, logp_ref, mask, reduction="none", **kw), per_seq
    )
    assert float(
        surrogates.kl_loss(label, logp, logp_ref, mask, reduction="seq-sum", **kw)
    ) == pytest.approx(float(per_seq.mean()), rel=1e-14, abs=1e-15)
    assert float(
        surrogates.kl_loss(label, logp, logp_ref, mask, reduction="seq-mean", **kw)
    ) == pytest.approx(float((per_seq / lengths.clamp_min(1)).mean()), rel=1e-14, abs=1e-15)
    assert float(
        surrogates.kl_loss(label, logp, logp_ref, mask, reduction="token-mean", **kw)
    ) == pytest.approx(float(per_seq.sum() / lengths.sum()), rel=1e-14, abs=1e-15)


def test_kl_loss_token_level_ignores_nan_on_padding_but_rejects_it_on_response_tokens():
    logp, logp_ref = _batch(seed=17)
    mask = _mask()
    logp[3, 0] = float("nan")  # sequence 3 is all padding
    leaf = logp.clone().requires_grad_(True)
    out = surrogates.kl_loss("k3 as loss", leaf, logp_ref, mask)
    out.backward()
    assert math.isfinite(float(out.detach())) and bool(torch.isfinite(leaf.grad).all())
    logp[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite.*\(0, 0\)"):
        surrogates.kl_loss("k3 as loss", logp, logp_ref, mask)


def test_kl_loss_bad_level_reduction_and_style_are_rejected():
    logp, logp_ref = _batch()
    mask = _mask()
    with pytest.raises(ValueError, match="'tokens'.*allowed: token, token-rtg, sequence"):
        surrogates.kl_loss("k1 in reward", logp, logp_ref, mask, level="tokens")
    with pytest.raises(ValueError, match="'sum'.*allowed: token-mean, seq-mean, seq-sum, none"):
        surrogates.kl_loss("k1 in reward", logp, logp_ref, mask, reduction="sum")
    with pytest.raises(ValueError, match="token-rtg.*in reward.*'k2 as loss'"):
        surrogates.kl_loss("k2 as loss", logp, logp_ref, mask, level="token-rtg")
    with pytest.raises(ValueError, match="allowed: k1 in reward"):
        surrogates.kl_loss("k9 as loss", logp, logp_ref, mask)


def test_kl_loss_rejects_mismatched_shapes_and_dtypes():
    logp, logp_ref = _batch()
    with pytest.raises(ValueError, match="same shape"):
        surrogates.kl_loss("k2 as loss", logp, logp_ref[:, :4], _mask())
    with pytest.raises(TypeError, match="same dtype"):
        surrogates.kl_loss("k2 as loss", logp, logp_ref.float(), _mask())


# --- off-policy ---------------------------------------------------------------------------------


def test_importance_ratio_value_and_gradient():
    logp, logp_old = _batch(seed=18, scale=0.2)
    old = logp_old.clone().requires_grad_(True)
    leaf = logp.clone().requires_grad_(True)
    rho = surrogates.importance_ratio(leaf, old)
    torch.testing.assert_close(rho, torch.exp(logp - logp_old), rtol=1e-14, atol=0)
    rho.sum().backward()
    torch.testing.assert_close(leaf.grad, torch.exp(logp - logp_old), rtol=1e-14, atol=0)
    assert old.grad is None


def test_importance_ratio_rejects_nan():
    logp, logp_old = _batch()
    logp_old[0, 1] = float("nan")
    with pytest.raises(ValueError, match="logp_old has 1 non-finite"):
        surrogates.importance_ratio(logp, logp_old)


# rho, A: the four clip regions and the inside, with PPO's expected (value, d value / d rho)
@pytest.mark.parametrize(
    "rho,adv,value,slope",
    [
        (1.05, 2.0, -1.05 * 2.0, -2.0),  # inside the range: unclipped
        (1.5, 2.0, -1.2 * 2.0, 0.0),  # A > 0, rho > 1 + eps: clipped, no gradient
        (0.5, 2.0, -0.5 * 2.0, -2.0),  # A > 0, rho < 1 - eps: min picks rho A, gradient flows
        (0.5, -2.0, 0.8 * 2.0, 0.0),  # A < 0, rho < 1 - eps: clipped, no gradient
        (1.5, -2.0, 1.5 * 2.0, 2.0),  # A < 0, rho > 1 + eps: min picks rho A, gradient flows
        (0.9, -2.0, 0.9 * 2.0, 2.0),  # inside
    ],
)
def test_ppo_clip_loss_matches_the_hand_formula_in_every_region(rho, adv, value, slope):
    r = torch.tensor([rho], dtype=DT, requires_grad=True)
    a = torch.tensor([adv], dtype=DT)
    out = surrogates.ppo_clip_loss(r, a, 0.2)
    assert float(out.detach()) == pytest.approx(value, rel=1e-14)
    out.sum().backward()
    assert float(r.grad) == pytest.approx(slope, abs=1e-14)


def test_ppo_clip_loss_vectorised_equals_the_elementwise_formula():
    g = torch.Generator().manual_seed(19)
    rho = torch.exp(0.5 * torch.randn(200, dtype=DT, generator=g))
    adv = torch.randn(200, dtype=DT, generator=g)
    eps = 0.2
    expected = torch.tensor(
        [
            -min(r * a, min(max(r, 1 - eps), 1 + eps) * a)
            for r, a in zip(rho.tolist(), adv.tolist())
        ],
        dtype=DT,
    )
    torch.testing.assert_close(
        surrogates.ppo_clip_loss(rho, adv, eps), expected, rtol=1e-14, atol=1e-15
    )


@pytest.mark.parametrize("eps", [0.0, 1.0, -0.1, float("nan"), 1.5])
def test_ppo_clip_loss_rejects_bad_eps(eps):
    with pytest.raises(ValueError, match=r"clip eps must be in \(0, 1\)"):
        surrogates.ppo_clip_loss(torch.ones(3, dtype=DT), torch.ones(3, dtype=DT), eps)


def test_ppo_clip_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"shapes differ: \(3,\) vs \(4,\)"):
        surrogates.ppo_clip_loss(torch.ones(3, dtype=DT), torch.ones(4, dtype=DT), 0.2)


def test_ppo_clip_loss_does_not_differentiate_the_advantage():
    adv = torch.tensor([1.0, -1.0], dtype=DT, requires_grad=True)
    rho = torch.tensor([1.0, 1.0], dtype=DT, requires_grad=True)
    surrogates.ppo_clip_loss(rho, adv, 0.2).sum().backward()
    assert adv.grad is None and rho.grad is not None


def _off_policy_batch(seed=20, spread=0.4):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(64, dtype=DT, generator=g) * 3 - 0.01
    logp_ref = logp + torch.randn(64, dtype=DT, generator=g)
    logp_old = logp + spread * torch.randn(64, dtype=DT, generator=g)
    return logp, logp_ref, logp_old


@pytest.mark.parametrize("label", LABELS)
def test_off_policy_kl_unclipped_gradient_is_beta_coefficient_times_ratio(label):
    logp, logp_ref, logp_old = _off_policy_batch()
    beta = 0.7
    c = coefficients.coefficient(label, logp - logp_ref)
    rho = torch.exp(logp - logp_old)
    value = surrogates.off_policy_kl(label, logp, logp_ref, logp_old, beta=beta)
    torch.testing.assert_close(value, beta * c * rho, rtol=1e-13, atol=1e-15)
    g = _grad(lambda lp: surrogates.off_policy_kl(label, lp, logp_ref, logp_old, beta=beta), logp)
    torch.testing.assert_close(g, beta * c * rho, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("label", ["k1 in reward", "k2 as loss", "k3 as loss"])
def test_off_policy_kl_clipped_gradient_vanishes_exactly_where_the_clip_is_active(label):
    logp, logp_ref, logp_old = _off_policy_batch(spread=0.5)
    beta, eps = 0.5, 0.2
    c = coefficients.coefficient(label, logp - logp_ref)
    rho = torch.exp(logp - logp_old)
    adv = -beta * c
    clipped = ((adv > 0) & (rho > 1 + eps)) | ((adv < 0) & (rho < 1 - eps))
    assert 5 < int(clipped.sum()) < 60, "the batch must exercise both regions"
    g = _grad(
        lambda lp: surrogates.off_policy_kl(label, lp, logp_ref, logp_old, beta=beta, clip_eps=eps),
        logp,
    )
    torch.testing.assert_close(
        g, torch.where(clipped, torch.zeros_like(g), beta * c * rho), rtol=1e-13, atol=1e-15
    )
    value = surrogates.off_policy_kl(label, logp, logp_ref, logp_old, beta=beta, clip_eps=eps)
    torch.testing.assert_close(
        value, -torch.minimum(rho * adv, rho.clamp(1 - eps, 1 + eps) * adv), rtol=1e-14, atol=0
    )


def test_off_policy_kl_with_ratio_one_is_the_on_policy_coefficient():
    logp, logp_ref, _ = _off_policy_batch()
    for label in LABELS:
        g = _grad(
            lambda lp: surrogates.off_policy_kl(label, lp, logp_ref, lp.detach(), clip_eps=0.2),
            logp,
        )
        torch.testing.assert_close(
            g, coefficients.coefficient(label, logp - logp_ref), rtol=1e-13, atol=1e-15
        )


def test_off_policy_kl_combined_head_adds_the_reward_advantage_and_clips_them_together():
    logp, logp_ref, logp_old = _off_policy_batch(seed=21, spread=0.5)
    g = torch.Generator().manual_seed(22)
    adv_r = torch.randn(64, dtype=DT, generator=g)
    beta, eps = 0.3, 0.2
    c = logp - logp_ref  # k2 as loss: c = u
    rho = torch.exp(logp - logp_old)
    A = adv_r - beta * c
    unclipped = surrogates.off_policy_kl(
        "k2 as loss", logp, logp_ref, logp_old, beta=beta, advantage=adv_r
    )
    torch.testing.assert_close(unclipped, -rho * A, rtol=1e-14, atol=1e-15)
    got = _grad(
        lambda lp: surrogates.off_policy_kl(
            "k2 as loss", lp, logp_ref, logp_old, beta=beta, clip_eps=eps, advantage=adv_r
        ),
        logp,
    )
    active = ((A > 0) & (rho > 1 + eps)) | ((A < 0) & (rho < 1 - eps))
    torch.testing.assert_close(
        got, torch.where(active, torch.zeros_like(A), -A * rho), rtol=1e-13, atol=1e-15
    )


def test_off_policy_kl_expected_gradient_under_pi_old_equals_the_on_policy_gradient_exactly():
    """Categorical policy, exact enumeration: E_{y~pi_old}[grad off_policy_kl] = E_{y~pi_theta}[c grad logp]."""
    g = torch.Generator().manual_seed(23)
    theta = torch.randn(7, dtype=DT, generator=g)
    ref = torch.randn(7, dtype=DT, generator=g)
    old = theta + 0.8 * torch.randn(7, dtype=DT, generator=g)
    lref, lold = torch.log_softmax(ref, -1), torch.log_softmax(old, -1)
    for label in LABELS:
        th = theta.clone().requires_grad_(True)
        lp = torch.log_softmax(th, -1)
        off = (lold.exp() * surrogates.off_policy_kl(label, lp, lref, lold)).sum()
        (g_off,) = torch.autograd.grad(off, th)
        th2 = theta.clone().requires_grad_(True)
        lp2 = torch.log_softmax(th2, -1)
        on = (lp2.exp().detach() * surrogates.surrogate(label, lp2, lref)).sum()
        (g_on,) = torch.autograd.grad(on, th2)
        scale = 1.0 if label == "k1 as loss" else float(g_on.norm())  # k1 as loss: both are zero
        assert float((g_off - g_on).norm()) / scale < 1e-12, label
        # without the ratio, the same coefficient on pi_old's samples is biased
        th3 = theta.clone().requires_grad_(True)
        lp3 = torch.log_softmax(th3, -1)
        naive = (lold.exp() * surrogates.surrogate(label, lp3, lref)).sum()
        (g_naive,) = torch.autograd.grad(naive, th3)
        if label != "k1 as loss":
            assert float((g_naive - g_on).norm() / g_on.norm()) > 1e-2, label


def test_off_policy_kl_rejects_bad_inputs():
    logp, logp_ref, logp_old = _off_policy_batch()
    with pytest.raises(ValueError, match="allowed: k1 in reward"):
        surrogates.off_policy_kl("k3", logp, logp_ref, logp_old)
    with pytest.raises(ValueError, match=r"advantage shape \(3,\) must equal logp's \(64,\)"):
        surrogates.off_policy_kl(
            "k2 as loss", logp, logp_ref, logp_old, advantage=torch.zeros(3, dtype=DT)
        )
    with pytest.raises(ValueError, match="clip eps"):
        surrogates.off_policy_kl("k2 as loss", logp, logp_ref, logp_old, clip_eps=2.0)
    bad = logp_ref.clone()
    bad[5] = float("nan")
    with pytest.raises(ValueError, match="logp_ref has 1 non-finite"):
        surrogates.off_policy_kl("k2 as loss", logp, bad, logp_old)
    with pytest.raises(ValueError, match="same shape"):
        surrogates.off_policy_kl("k2 as loss", logp, logp_ref, logp_old[:10])
