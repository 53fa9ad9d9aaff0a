"""klnotes.core.estimators: k1, k2, k3 against exact references (Python ``decimal`` at 120 digits), their
gradients against closed forms, and the input checks."""

from decimal import Decimal, getcontext

import pytest
import torch

from klnotes.core import estimators as E

getcontext().prec = 120  # k3(1e-20) ~ 5e-41 needs > 41 + 17 digits after cancellation


def _k3_exact(u: float) -> float:
    """exp(-u) - 1 + u at 120 significant digits, rounded once to float64."""
    d = Decimal(u)
    return float((-d).exp() - 1 + d)


def _dk3_exact(u: float) -> float:
    """d k3 / d logp = 1 - exp(-u) at 120 digits."""
    return float(1 - (-Decimal(u)).exp())


U_VALUES = [
    -50.0,
    -20.0,
    -3.0,
    -1.0,
    -0.5,
    -0.4999999,
    -0.1,
    -1e-3,
    -1e-8,
    -1e-20,
    1e-20,
    1e-8,
    1e-3,
    0.1,
    0.4999999,
    0.5,
    1.0,
    3.0,
    20.0,
    50.0,
]


def _pair(u, dtype):
    logp = torch.tensor(u, dtype=dtype)
    return logp, torch.zeros_like(logp)


def test_names_are_the_three_estimators_in_book_order():
    assert E.NAMES == ("k1", "k2", "k3")
    assert [E.get(n) for n in E.NAMES] == [E.k1, E.k2, E.k3]


def test_k1_and_k2_are_the_log_ratio_and_half_its_square():
    logp = torch.tensor([-0.3, -2.0, -7.5], dtype=torch.float64)
    logp_ref = torch.tensor([-1.0, -0.25, -7.5], dtype=torch.float64)
    u = [a - b for a, b in zip(logp.tolist(), logp_ref.tolist())]
    assert E.log_ratio(logp, logp_ref).tolist() == u
    assert E.k1(logp, logp_ref).tolist() == u
    assert E.k2(logp, logp_ref).tolist() == pytest.approx([x * x / 2 for x in u], rel=1e-15)


@pytest.mark.parametrize("u", U_VALUES)
def test_k3_float64_matches_high_precision_reference(u):
    got = E.k3(*_pair([u], torch.float64)).item()
    assert got == pytest.approx(_k3_exact(u), rel=4e-16, abs=0.0)


@pytest.mark.parametrize("u", [x for x in U_VALUES if abs(x) >= 1e-15])
def test_k3_float32_matches_reference_to_float32_precision(u):
    logp, logp_ref = _pair([u], torch.float32)
    got = E.k3(logp, logp_ref)
    assert got.dtype == torch.float32
    exact = _k3_exact(float(logp.item()))  # the float32 input actually represented
    assert got.item() == pytest.approx(exact, rel=3e-7, abs=0.0)


def test_k3_float32_tiny_log_ratio_is_accurate_down_to_subnormals():
    # u = 1e-20: k3 ~ 5e-41 lies below float32's smallest normal number (1.2e-38), so only an
    # absolute accuracy of a few subnormal steps (1.4e-45) is possible; catastrophic cancellation
    # (exp(-u) - 1 + u = 0 in float32) would give 0.
    for u in (1e-20, -1e-20):
        logp, logp_ref = _pair([u], torch.float32)
        exact = _k3_exact(float(logp.item()))
        got = E.k3(logp, logp_ref).item()
        assert got > 0
        assert abs(got - exact) < 1e-44


def test_naive_k3_formula_fails_where_the_module_does_not():
    u = torch.tensor([1e-9], dtype=torch.float64)
    naive = (torch.exp(-u) - 1 + u).item()
    assert naive == 0.0 or abs(naive - _k3_exact(1e-9)) / _k3_exact(1e-9) > 1e-3
    assert E.k3_of_u(u).item() == pytest.approx(_k3_exact(1e-9), rel=4e-16)


def test_k3_is_continuous_across_the_series_boundary():
    u = torch.tensor([0.5 - 1e-12, 0.5, -0.5 + 1e-12, -0.5], dtype=torch.float64)
    k = E.k3_of_u(u)
    assert abs(k[0] - k[1]).item() < 1e-12 and abs(k[2] - k[3]).item() < 1e-11


def test_k3_is_nonnegative_and_zero_only_at_zero():
    u = torch.linspace(-30, 30, 60001, dtype=torch.float64)
    k = E.k3_of_u(u)
    assert bool((k >= 0).all())
    assert E.k3_of_u(torch.zeros(1, dtype=torch.float64)).item() == 0.0
    assert bool((k[u != 0] > 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_k3_is_finite_for_log_ratios_up_to_50(dtype):
    u = torch.linspace(-50, 50, 1001, dtype=dtype)
    assert bool(torch.isfinite(E.k3_of_u(u)).all())


def test_shape_is_preserved_for_any_shape():
    for shape in [(), (3,), (2, 5), (2, 3, 4)]:
        logp, logp_ref = (
            torch.randn(shape, dtype=torch.float64),
            torch.randn(shape, dtype=torch.float64),
        )
        for name in E.NAMES:
            assert E.get(name)(logp, logp_ref).shape == torch.Size(shape)


@pytest.mark.parametrize("u", [-50.0, -3.0, -0.5, -0.2, -1e-20, 0.0, 1e-20, 0.2, 0.5, 3.0, 50.0])
def test_gradients_match_closed_forms_in_both_arguments(u):
    logp = torch.tensor([u - 1.3], dtype=torch.float64, requires_grad=True)
    logp_ref = torch.tensor([-1.3], dtype=torch.float64, requires_grad=True)
    uu = (logp - logp_ref).item()
    expected = {"k1": 1.0, "k2": uu, "k3": _dk3_exact(uu)}
    for name in E.NAMES:
        g, g_ref = torch.autograd.grad(E.get(name)(logp, logp_ref).sum(), (logp, logp_ref))
        assert g.item() == pytest.approx(expected[name], rel=1e-14, abs=1e-300)
        assert g_ref.item() == pytest.approx(-expected[name], rel=1e-14, abs=1e-300)


def test_k3_gradient_at_tiny_log_ratio_is_accurate_not_zero():
    u = torch.tensor([1e-20, -1e-20], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(E.k3_of_u(u).sum(), u)
    assert g.tolist() == pytest.approx([1e-20, -1e-20], rel=1e-15)


def test_gradcheck_by_finite_differences():
    u = torch.tensor(
        [-4.0, -0.7, -0.3, 0.01, 0.45, 0.55, 2.0], dtype=torch.float64, requires_grad=True
    )
    ref = torch.zeros_like(u)
    for name in E.NAMES:
        assert torch.autograd.gradcheck(lambda x: E.get(name)(x, ref), (u,))


def test_unbiased_estimators_average_to_the_exact_kl_on_a_categorical():
    g = torch.Generator().manual_seed(3)
    logp = torch.log_softmax(torch.randn(7, dtype=torch.float64, generator=g), -1)
    logp_ref = torch.log_softmax(torch.randn(7, dtype=torch.float64, generator=g), -1)
    pi = logp.exp()
    kl = float((pi * (logp - logp_ref)).sum())
    assert float((pi * E.k1(logp, logp_ref)).sum()) == pytest.approx(kl, rel=1e-14)
    assert float((pi * E.k3(logp, logp_ref)).sum()) == pytest.approx(kl, rel=1e-13)
    assert float((pi * E.k2(logp, logp_ref)).sum()) != pytest.approx(kl, rel=1e-3)


def test_get_unknown_name_lists_the_allowed_names():
    with pytest.raises(ValueError, match=r"unknown KL estimator 'k4'; allowed: k1, k2, k3"):
        E.get("k4")
    with pytest.raises(ValueError, match="allowed: k1, k2, k3"):
        E.get(3)


def test_shape_mismatch_is_an_error_not_a_broadcast():
    with pytest.raises(ValueError, match=r"same shape.*\(3,\) and \(1,\)"):
        E.k1(torch.zeros(3), torch.zeros(1))


def test_dtype_and_type_errors():
    with pytest.raises(TypeError, match="same dtype"):
        E.k2(torch.zeros(2, dtype=torch.float32), torch.zeros(2, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating dtype"):
        E.k3(torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor.*list"):
        E.k1([0.0], torch.zeros(1))


@pytest.mark.parametrize(
    "bad, kind", [(float("nan"), "NaN"), (float("inf"), "inf"), (-float("inf"), "inf")]
)
def test_nonfinite_inputs_are_reported_with_count_and_index(bad, kind):
    logp = torch.zeros(2, 3, dtype=torch.float64)
    logp[1, 2] = bad
    for name in E.NAMES:
        with pytest.raises(
            ValueError,
            match=rf"logp has 1 non-finite value\(s\) \({kind}\) of 6, at index \(1, 2\)",
        ):
            E.get(name)(logp, torch.zeros_like(logp))
    with pytest.raises(ValueError, match="logp_ref has 1"):
        E.k1(torch.zeros_like(logp), logp)


def test_validate_pair_can_skip_the_finiteness_check():
    x = torch.tensor([float("nan")])
    E.validate_pair(x, x, finite=False)
    with pytest.raises(ValueError, match="non-finite"):
        E.validate_pair(x, x)
