"""klnotes.core.coefficients: the closed-form coefficients of all six implementations equal the
coefficients autograd extracts from their surrogates; new estimators are classified in one call."""

import math
from decimal import Decimal, localcontext

import pytest
import torch

from klnotes.core import coefficients as C
from klnotes.core import estimators as E
from klnotes.core import surrogates as S

U = torch.tensor(
    [-20.0, -5.0, -1.0, -0.5, -0.1, -1e-12, 0.0, 1e-12, 0.1, 0.5, 1.0, 5.0, 20.0],
    dtype=torch.float64,
)


def _k3_decimal(u: float) -> float:
    """exp(-u) - 1 + u with 80 significant digits (no cancellation at |u| ~ 1e-12)."""
    with localcontext() as ctx:
        ctx.prec = 80
        d = Decimal(u)
        return float((-d).exp() - 1 + d)


#: Independent closed forms written from the definitions with Python's math and decimal modules.
FORMULAS = {
    "k1 in reward": lambda u: u,
    "k1 as loss": lambda u: 1.0,
    "k2 as loss": lambda u: u,
    "k3 as loss": lambda u: -math.expm1(-u),
    "k2 in reward": lambda u: u * u / 2,
    "k3 in reward": _k3_decimal,
}


def test_six_implementations_in_book_order():
    assert C.IMPLEMENTATIONS == (
        "k1 in reward",
        "k1 as loss",
        "k2 as loss",
        "k3 as loss",
        "k2 in reward",
        "k3 in reward",
    )
    assert C.STYLES == ("in_reward", "as_loss")


@pytest.mark.parametrize("label", C.IMPLEMENTATIONS)
def test_closed_form_matches_the_definition(label):
    got = C.coefficient(label, U).tolist()
    expected = [FORMULAS[label](u) for u in U.tolist()]
    # k3 in reward at |u| ~ 1e-12 is ~5e-25: compare relative to each value, plus a tiny absolute floor
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-30)


@pytest.mark.parametrize("label", C.IMPLEMENTATIONS)
@pytest.mark.parametrize("logp_ref", [0.0, -3.7])
def test_closed_form_equals_autograd_of_the_surrogate(label, logp_ref):
    logp = U + logp_ref
    ref = torch.full_like(U, logp_ref)
    auto = C.from_surrogate(lambda lp, lr: S.surrogate(label, lp, lr), logp, ref)
    closed = C.coefficient(label, logp - ref)
    torch.testing.assert_close(auto, closed, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", E.NAMES)
def test_as_loss_coefficient_is_the_derivative_by_finite_differences(name):
    u = torch.linspace(-3, 3, 25, dtype=torch.float64)
    h = 1e-6
    zero = torch.zeros_like(u)
    fd = (E.get(name)(u + h, zero) - E.get(name)(u - h, zero)) / (2 * h)
    torch.testing.assert_close(C.closed_form(name, "as_loss", u), fd, rtol=1e-8, atol=1e-8)


def test_closed_form_preserves_shape_and_is_finite_at_large_log_ratios_in_float32():
    u = torch.linspace(-50, 50, 101, dtype=torch.float32).reshape(101, 1)
    for label in C.IMPLEMENTATIONS:
        c = C.coefficient(label, u)
        assert c.shape == u.shape and c.dtype == torch.float32 and bool(torch.isfinite(c).all())


def test_a_new_estimator_is_classified_by_autograd():
    # a reader's invention: chi-square-style k4 = (delta - 1)^2 / 2, delta = exp(-u)
    def k4(lp, lr):
        return 0.5 * torch.expm1(lr - lp) ** 2

    u = torch.linspace(-2, 2, 41, dtype=torch.float64)
    c = C.from_surrogate(k4, u, torch.zeros_like(u))
    expected = torch.exp(-u) * (-torch.expm1(-u))  # d/du (e^-u - 1)^2 / 2 = e^-u (1 - e^-u)
    torch.testing.assert_close(c, expected, rtol=1e-13, atol=1e-15)
    assert C.identify(k4) == ()
    in_reward = C.from_surrogate(lambda lp, lr: k4(lp, lr).detach() * lp, u, torch.zeros_like(u))
    torch.testing.assert_close(in_reward, k4(u, torch.zeros_like(u)), rtol=0, atol=0)


def test_identify_names_every_implementation_and_its_twins():
    for label in C.IMPLEMENTATIONS:
        found = C.identify(lambda lp, lr, label=label: S.surrogate(label, lp, lr))
        assert label in found
        if label in ("k1 in reward", "k2 as loss"):
            assert found == ("k1 in reward", "k2 as loss")
        else:
            assert found == (label,)


def test_identify_k3_in_reward_plus_as_loss_is_the_principled_coefficient():
    def both(lp, lr):
        return S.surrogate("k3 in reward", lp, lr) + S.surrogate("k3 as loss", lp, lr)

    assert C.identify(both) == ("k1 in reward", "k2 as loss")


def test_from_surrogate_of_a_sequence_level_loss():
    logp = torch.tensor([[-0.2, -1.0, -0.5], [-2.0, -0.1, -0.3]], dtype=torch.float64)
    logp_ref = torch.tensor([[-0.4, -0.9, -1.5], [-1.0, -0.3, -0.2]], dtype=torch.float64)

    def seq_k2(lp, lr):  # [batch]
        return 0.5 * (lp - lr).sum(1) ** 2

    c = C.from_surrogate(seq_k2, logp, logp_ref, elementwise=False)
    U = (logp - logp_ref).sum(1, keepdim=True)
    torch.testing.assert_close(c, U.expand_as(logp), rtol=1e-15, atol=0)
    with pytest.raises(
        ValueError, match=r"elementwise surrogate must return logp's shape \(2, 3\), got \(2,\)"
    ):
        C.from_surrogate(seq_k2, logp, logp_ref)


def test_from_surrogate_of_a_constant_is_zero_and_does_not_touch_inputs():
    logp = torch.tensor([-1.0, -2.0], dtype=torch.float64, requires_grad=True)
    c = C.from_surrogate(lambda lp, lr: lr * 3.0, logp, torch.zeros(2, dtype=torch.float64))
    assert c.tolist() == [0.0, 0.0] and not c.requires_grad and logp.grad is None


def test_from_surrogate_bad_input():
    x = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(TypeError, match="surrogate must be callable"):
        C.from_surrogate("k2 as loss", x, x)
    with pytest.raises(TypeError, match="must return a torch.Tensor, got float"):
        C.from_surrogate(lambda lp, lr: 1.0, x, x)
    with pytest.raises(ValueError, match="same shape"):
        C.from_surrogate(E.k2, x, torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="non-finite"):
        C.from_surrogate(E.k2, torch.tensor([0.0, float("nan"), 0.0], dtype=torch.float64), x)


def test_unknown_labels_names_and_styles_list_the_allowed_values():
    assert C.parse_implementation("k2_as_loss") == ("k2", "as_loss")
    assert C.parse_implementation(" k3 in reward ") == ("k3", "in_reward")
    with pytest.raises(
        ValueError, match=r"unknown implementation 'k4 as loss'; allowed: k1 in reward, k1 as loss"
    ):
        C.coefficient("k4 as loss", U)
    with pytest.raises(ValueError, match="unknown implementation 'k2 in loss'"):
        C.parse_implementation("k2 in loss")
    with pytest.raises(ValueError, match="unknown KL estimator 'k0'; allowed: k1, k2, k3"):
        C.closed_form("k0", "as_loss", U)
    with pytest.raises(ValueError, match="unknown style 'in_loss'; allowed: in_reward, as_loss"):
        C.closed_form("k1", "in_loss", U)
    with pytest.raises(TypeError, match="floating dtype"):
        C.closed_form("k1", "as_loss", torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="non-finite"):
        C.closed_form("k1", "as_loss", torch.tensor([float("inf")]))
