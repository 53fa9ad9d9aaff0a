"""klnotes.analysis.montecarlo: exact moments against independent references, Monte Carlo estimates inside
their intervals, interval coverage with fixed seeds, and input errors."""

import math

import pytest
import torch

from klnotes.analysis import montecarlo as mc
from klnotes.analysis import objective

PAPER_Q, PAPER_P = mc.Gaussian(0.1, 0.2), mc.Gaussian(0.0, 1.0)


def _categorical(V=6, seed=0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    logits = spread * torch.randn(V, dtype=torch.float64, generator=g)
    logits_ref = torch.randn(V, dtype=torch.float64, generator=g)
    return logits, logits_ref


def _quadrature(name, q, p, width=40.0, points=40_001):
    """Mean and variance of k_n under q by the trapezoid rule on a wide grid (an independent reference)."""
    x = torch.linspace(q.mean - width * q.std, q.mean + width * q.std, points, dtype=torch.float64)
    lq, lp = mc.gaussian_log_prob(x, q), mc.gaussian_log_prob(x, p)
    k = mc.estimator_values(name, lq, lp)
    dx = float(x[1] - x[0])
    mean = float(torch.trapezoid(lq.exp() * k, dx=dx))
    return mean, float(torch.trapezoid(lq.exp() * (k - mean) ** 2, dx=dx))


# --- intervals ----------------------------------------------------------------------------------


def test_z_value_is_the_two_sided_normal_quantile():
    assert mc.z_value(0.95) == pytest.approx(1.959963984540054, rel=1e-12)
    assert mc.z_value(0.999) == pytest.approx(3.2905267314918945, rel=1e-12)


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.1, "0.9", True, float("nan")])
def test_bad_confidence_levels_are_rejected(bad):
    with pytest.raises(ValueError, match=r"confidence must be a number strictly between 0 and 1"):
        mc.mean_ci(torch.ones(5, dtype=torch.float64), bad)


def test_mean_ci_matches_the_textbook_formula():
    x = torch.tensor([1.0, 2.0, 4.0, 7.0], dtype=torch.float64)
    e = mc.mean_ci(x, 0.9)
    s = math.sqrt(sum((v - 3.5) ** 2 for v in x.tolist()) / 3)
    assert e.value == 3.5 and e.std_error == pytest.approx(s / 2, rel=1e-15) and e.n == 4
    assert e.half_width == pytest.approx(1.6448536269514722 * s / 2, rel=1e-12)
    assert e.contains(3.5) and not e.contains(10.0)


def test_sample_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"at least 2 samples.*n = 1"):
        mc.mean_ci(torch.ones(1))
    with pytest.raises(ValueError, match=r"shape \[n\], got \(2, 2\)"):
        mc.variance_ci(torch.ones(2, 2))
    with pytest.raises(TypeError, match="floating dtype"):
        mc.mean_ci(torch.ones(3, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor, got list"):
        mc.mean_ci([1.0, 2.0])
    with pytest.raises(ValueError, match=r"1 non-finite value\(s\) of 3"):
        mc.mean_ci(torch.tensor([1.0, float("inf"), 2.0]))
    with pytest.raises(ValueError, match=r"n \(the number of samples\) must be an int >= 2, got 1"):
        mc.gaussian_samples(PAPER_Q, PAPER_P, 1)


def test_unknown_estimator_lists_the_allowed_names():
    x = torch.zeros(3, dtype=torch.float64)
    for call in (
        lambda: mc.kl_estimate("k4", x, x),
        lambda: mc.gaussian_moments("kl", PAPER_Q, PAPER_P),
        lambda: mc.categorical_moments(
            "K1", torch.log(torch.full((2,), 0.5)), torch.log(torch.full((2,), 0.5))
        ),
    ):
        with pytest.raises(ValueError, match="allowed: k1, k2, k3"):
            call()


def test_mean_interval_coverage_is_close_to_nominal_with_fixed_seeds():
    # 600 replications of n = 200 samples of k2 (skewed) from a categorical; nominal 90 %
    logits, logits_ref = _categorical(seed=1)
    lp, lr = torch.log_softmax(logits, -1), torch.log_softmax(logits_ref, -1)
    exact = mc.categorical_moments("k2", lp, lr).mean
    g = torch.Generator().manual_seed(0)
    hits = sum(
        mc.kl_estimate("k2", *mc.categorical_samples(lp, lr, 200, g), confidence=0.9).contains(
            exact
        )
        for _ in range(600)
    )
    assert 0.86 <= hits / 600 <= 0.94  # binomial sd 0.012 around 0.90


# --- exact moments: categorical -----------------------------------------------------------------


def test_categorical_moments_match_a_python_enumeration():
    logits, logits_ref = _categorical()
    lp, lr = torch.log_softmax(logits, -1), torch.log_softmax(logits_ref, -1)
    pi, u = lp.exp().tolist(), (lp - lr).tolist()
    kl = sum(p * x for p, x in zip(pi, u))
    funcs = {"k1": lambda x: x, "k2": lambda x: x * x / 2, "k3": lambda x: math.exp(-x) - 1 + x}
    for name, f in funcs.items():
        m = mc.categorical_moments(name, lp, lr)
        mean = sum(p * f(x) for p, x in zip(pi, u))
        var = sum(p * (f(x) - mean) ** 2 for p, x in zip(pi, u))
        assert m.kl == pytest.approx(kl, rel=1e-13)
        assert m.mean == pytest.approx(mean, rel=1e-13) and m.variance == pytest.approx(
            var, rel=1e-12
        )
    assert abs(mc.categorical_moments("k1", lp, lr).bias) < 1e-15
    assert abs(mc.categorical_moments("k3", lp, lr).bias) < 1e-14
    assert mc.categorical_moments("k2", lp, lr).bias != pytest.approx(0.0, abs=1e-3)


def test_categorical_inputs_must_be_normalized_log_probabilities():
    with pytest.raises(ValueError, match="normalized log-probabilities"):
        mc.categorical_moments(
            "k1",
            torch.zeros(3, dtype=torch.float64),
            torch.log(torch.full((3,), 1 / 3, dtype=torch.float64)),
        )
    with pytest.raises(ValueError, match=r"shape \[V\] with V >= 2"):
        mc.sample_categorical(torch.zeros(1, dtype=torch.float64), 10)
    half = torch.log(torch.full((2,), 0.5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"same shape \[V\], got \(2,\) and \(3,\)"):
        mc.categorical_samples(half, torch.log(torch.full((3,), 1 / 3, dtype=torch.float64)), 10)
    with pytest.raises(TypeError, match="torch.Tensor"):
        mc.estimator_values("k1", [0.0, 1.0], torch.zeros(2))


def test_monte_carlo_mean_and_variance_agree_with_exact_values():
    logits, logits_ref = _categorical(seed=2)
    lp, lr = torch.log_softmax(logits, -1), torch.log_softmax(logits_ref, -1)
    g = torch.Generator().manual_seed(1)
    s_lp, s_lr = mc.categorical_samples(lp, lr, 100_000, g)
    for name in ("k1", "k2", "k3"):
        exact = mc.categorical_moments(name, lp, lr)
        assert mc.kl_estimate(name, s_lp, s_lr, 0.999).contains(exact.mean)
        assert mc.variance_ci(mc.estimator_values(name, s_lp, s_lr), 0.999).contains(exact.variance)
        assert mc.bias_estimate(name, s_lp, s_lr, exact.kl, 0.999).contains(exact.bias)


def test_categorical_sweep_kl_grows_and_k2_bias_is_relatively_larger_far_away():
    logits, logits_ref = _categorical()
    frame = mc.categorical_sweep(logits_ref, logits - logits_ref, [0.05, 0.5, 2.0])
    assert set(frame.columns) >= {"t", "estimator", "kl", "bias", "std", "relative_std"}
    k2 = frame[frame.estimator == "k2"]
    assert k2.kl.is_monotonic_increasing
    assert abs(k2.relative_bias.iloc[-1]) > abs(k2.relative_bias.iloc[0])


# --- Gaussians ----------------------------------------------------------------------------------


def test_gaussian_kl_matches_quadrature():
    for q, p in [
        (PAPER_Q, PAPER_P),
        (PAPER_P, PAPER_Q),
        (mc.Gaussian(1.0, 2.0), mc.Gaussian(-0.5, 0.7)),
    ]:
        x = torch.linspace(q.mean - 40 * q.std, q.mean + 40 * q.std, 40_001, dtype=torch.float64)
        lq, lp = mc.gaussian_log_prob(x, q), mc.gaussian_log_prob(x, p)
        quad = float(torch.trapezoid(lq.exp() * (lq - lp), x))
        assert mc.gaussian_kl(q, p) == pytest.approx(quad, rel=1e-10)


def test_paper_example_kl_and_k1_variance_in_closed_form():
    assert mc.gaussian_kl(PAPER_Q, PAPER_P) == pytest.approx(
        math.log(5) + 0.05 / 2 - 0.5, rel=1e-15
    )
    # u = a + b z + c z^2 with b = 0.02, c = -0.48: Var[u] = b^2 + 2 c^2 = 0.4612
    assert mc.gaussian_moments("k1", PAPER_Q, PAPER_P).variance == pytest.approx(0.4612, rel=1e-14)


@pytest.mark.parametrize(
    "q", [mc.Gaussian(0.3, 0.9), mc.Gaussian(-0.5, 1.7), mc.Gaussian(0.1, 0.75), PAPER_P]
)
@pytest.mark.parametrize("name", ["k1", "k2", "k3"])
def test_gaussian_moments_match_quadrature_where_finite(q, name):
    p = PAPER_P if q is not PAPER_P else PAPER_Q
    m = mc.gaussian_moments(name, q, p)
    mean, var = _quadrature(name, q, p)
    assert m.mean == pytest.approx(mean, rel=1e-9)
    assert m.variance == pytest.approx(var, rel=1e-8)


def test_k3_variance_is_infinite_exactly_below_half_the_reference_variance():
    assert not mc.k3_variance_finite(PAPER_Q, PAPER_P)  # 0.04 < 0.5: the paper's direction
    assert math.isinf(mc.gaussian_moments("k3", PAPER_Q, PAPER_P).variance)
    assert mc.k3_variance_finite(PAPER_P, PAPER_Q)  # the other way round: 1 > 0.02
    assert math.isfinite(mc.gaussian_moments("k3", PAPER_P, PAPER_Q).variance)
    lo = mc.gaussian_moments("k3", mc.Gaussian(0.0, math.sqrt(0.5) * 1.001), PAPER_P).variance
    hi = mc.gaussian_moments("k3", mc.Gaussian(0.0, math.sqrt(0.5) * 1.1), PAPER_P).variance
    assert lo > 10 * hi  # diverges as sigma_q^2 -> sigma_p^2 / 2 from above
    assert math.isinf(mc.gaussian_moments("k3", mc.Gaussian(0.0, 0.7), PAPER_P).variance)


def test_paper_example_sampling_k1_k2_inside_intervals_and_k3_std_does_not_settle():
    g = torch.Generator().manual_seed(0)
    lq, lp = mc.gaussian_samples(PAPER_Q, PAPER_P, 200_000, g)
    for name in ("k1", "k2"):
        assert mc.kl_estimate(name, lq, lp, 0.999).contains(
            mc.gaussian_moments(name, PAPER_Q, PAPER_P).mean
        )
    at = torch.tensor([1000, 10_000, 200_000])
    s1 = mc.running_std(mc.estimator_values("k1", lq, lp), at)
    s3 = mc.running_std(mc.estimator_values("k3", lq, lp), at)
    assert abs(float(s1[-1]) - math.sqrt(0.4612)) < 0.01
    assert float(s3[-1]) > 10 * float(s1[-1])


def test_gaussian_validation():
    with pytest.raises(ValueError, match=r"std must be a finite number > 0, got 0.0"):
        mc.Gaussian(0.0, 0.0)
    with pytest.raises(ValueError, match="mean must be a finite number"):
        mc.Gaussian(float("nan"), 1.0)


def test_running_std_equals_prefix_standard_deviations():
    x = torch.randn(500, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 3 + 100
    at = torch.tensor([2, 17, 500])
    expected = torch.stack([x[:m].std() for m in at.tolist()])
    torch.testing.assert_close(mc.running_std(x, at), expected, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match=r"prefix lengths in \[2, 500\]"):
        mc.running_std(x, torch.tensor([1, 600]))


# --- gradients ----------------------------------------------------------------------------------


def test_outcome_gradients_are_coefficient_times_score():
    logits, logits_ref = _categorical(V=5)
    pi, lp, lr = (
        torch.softmax(logits, -1),
        torch.log_softmax(logits, -1),
        torch.log_softmax(logits_ref, -1),
    )
    u = lp - lr
    score = torch.eye(5, dtype=torch.float64) - pi  # row y: grad_logits log pi(y) = e_y - pi
    for label, c in {
        "k1 in reward": u,
        "k1 as loss": torch.ones_like(u),
        "k3 as loss": -torch.expm1(-u),
    }.items():
        torch.testing.assert_close(
            mc.outcome_gradients(label, logits, logits_ref),
            c[:, None] * score,
            rtol=1e-13,
            atol=1e-15,
        )


def test_exact_expected_gradients_are_rkl_zero_and_fkl():
    logits, logits_ref = _categorical(V=5)
    theta = logits.clone().requires_grad_(True)
    lr = torch.log_softmax(logits_ref, -1)
    (rkl,) = torch.autograd.grad(objective.kl_divergence(torch.log_softmax(theta, -1), lr), theta)
    torch.testing.assert_close(
        mc.exact_expected_gradient("k1 in reward", logits, logits_ref), rkl, rtol=1e-12, atol=1e-15
    )
    torch.testing.assert_close(
        mc.exact_expected_gradient("k2 as loss", logits, logits_ref), rkl, rtol=1e-12, atol=1e-15
    )
    assert float(mc.exact_expected_gradient("k1 as loss", logits, logits_ref).abs().max()) < 1e-15
    fkl = torch.softmax(logits, -1) - torch.softmax(logits_ref, -1)
    torch.testing.assert_close(
        mc.exact_expected_gradient("k3 as loss", logits, logits_ref), fkl, rtol=1e-12, atol=1e-15
    )


def test_gradient_estimate_contains_exact_mean_and_trace_of_covariance():
    logits, logits_ref = _categorical(V=5)
    G = mc.outcome_gradients("k3 as loss", logits, logits_ref)
    pi = torch.softmax(logits, -1)
    exact = pi @ G
    trace = float((pi[:, None] * (G - exact) ** 2).sum())
    g = torch.Generator().manual_seed(2)
    ys = mc.sample_categorical(torch.log_softmax(logits, -1), 50_000, g)
    est = mc.gradient_estimate(G[ys], 0.99)
    assert est.contains(exact) and est.n == 50_000
    assert est.cov_trace == pytest.approx(trace, rel=0.05)
    assert not est.contains(exact + 10 * est.std_error.max())
    with pytest.raises(ValueError, match=r"reference must have shape \(5,\)"):
        est.contains(torch.zeros(3))


def test_gradient_error_ci_contains_the_exact_cosine_and_relative_error():
    logits, logits_ref = _categorical(V=5, spread=2.0)
    G = mc.outcome_gradients("k3 as loss", logits, logits_ref)
    pi = torch.softmax(logits, -1)
    target = mc.exact_expected_gradient("k1 in reward", logits, logits_ref)
    mean = pi @ G
    cos = float(mean @ target / (mean.norm() * target.norm()))
    rel = float((mean - target).norm() / target.norm())
    g = torch.Generator().manual_seed(5)
    ys = mc.sample_categorical(torch.log_softmax(logits, -1), 20_000, g)
    err = mc.gradient_error_ci(G[ys], target, 0.99, n_boot=400, generator=g)
    assert err.cosine.contains(cos) and err.relative_error.contains(rel)
    assert (
        err.cosine.high < 1.0 and err.relative_error.low > 0.0
    )  # k3 as loss is measurably off target


def test_gradient_errors():
    g = torch.zeros(10, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"shape \[n, d\], got \(10,\)"):
        mc.gradient_estimate(torch.zeros(10, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"reference must have shape \[d\] = \[3\], got \(2,\)"):
        mc.gradient_error_ci(g, torch.ones(2))
    with pytest.raises(ValueError, match="reference gradient is zero"):
        mc.gradient_error_ci(g, torch.zeros(3))
    with pytest.raises(ValueError, match="n_boot must be an int >= 2, got 1"):
        mc.gradient_error_ci(g, torch.ones(3), n_boot=1)
    with pytest.raises(ValueError, match="unknown implementation 'k2 in loss'"):
        mc.outcome_gradients("k2 in loss", torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="same shape"):
        mc.outcome_gradients("k2 as loss", torch.zeros(3), torch.zeros(4))


def test_k3_variance_beyond_float64_range_is_reported_as_infinite_not_an_overflow_error():
    q = mc.Gaussian(0.1, math.sqrt(0.5) * (1 + 1e-9))
    assert mc.k3_variance_finite(q, PAPER_P)
    assert math.isinf(mc.gaussian_moments("k3", q, PAPER_P).variance)


def test_expected_gradient_sweep_separates_principled_from_biased_implementations():
    logits, logits_ref = _categorical(V=5)
    frame = mc.expected_gradient_sweep(
        ["k1 in reward", "k2 as loss", "k1 as loss", "k3 as loss"],
        logits_ref,
        logits - logits_ref,
        [0.01, 1.0],
    )
    err = frame.pivot(index="t", columns="label", values="relative_error")
    assert (err["k1 in reward"] < 1e-12).all() and (err["k2 as loss"] < 1e-12).all()
    assert ((err["k1 as loss"] - 1).abs() < 1e-12).all()
    assert err["k3 as loss"].loc[0.01] < 0.05 < err["k3 as loss"].loc[1.0]
    cos = frame.pivot(index="t", columns="label", values="cosine")
    assert cos["k1 as loss"].isna().all() and ((cos["k1 in reward"] - 1).abs() < 1e-12).all()
    kl = frame.groupby("t")["kl"].first()
    lp = torch.log_softmax(logits, -1)
    assert kl.loc[1.0] == pytest.approx(
        float(objective.kl_divergence(lp, torch.log_softmax(logits_ref, -1))), rel=1e-12
    )


def test_figures_draw_one_line_per_series():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from klnotes import plotting

    logits, logits_ref = _categorical()
    frame = mc.categorical_sweep(logits_ref, logits - logits_ref, [0.1, 1.0])
    assert len(plotting.plot_moments(frame).axes[0].lines) == 3
    at = torch.tensor([2, 10])
    assert (
        len(plotting.plot_running_std(at, {"k1": [1.0, 2.0], "k3": [1.0, 3.0]}).axes[0].lines) == 2
    )
    u = torch.linspace(-1, 1, 5, dtype=torch.float64)
    fig = plotting.plot_coefficients(u, {"k1 in reward": u, "mine": u * 2})
    lines = fig.axes[0].lines
    assert lines[0].get_color() == "#1b9e77" and lines[1].get_color() == "#555555"
    grads = mc.expected_gradient_sweep(
        ["k1 in reward", "k3 as loss"], logits_ref, logits - logits_ref, [0.1, 1.0]
    )
    assert len(plotting.plot_gradient_errors(grads).axes[0].lines) == 2
    plt.close("all")
