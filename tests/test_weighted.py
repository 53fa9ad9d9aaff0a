import pytest
import torch

from klnotes.analysis import exact
from klnotes.analysis import weighted as W

DT = torch.float64


def _targets(logits, ref_logits):
    return {
        "reverse KL": exact.categorical_kl_gradient(logits, ref_logits, "reverse"),
        "forward KL": exact.categorical_kl_gradient(logits, ref_logits, "forward"),
        "E[k2]": W.expected_k2_gradient(logits, ref_logits),
        "nothing": torch.zeros_like(logits),
    }


@pytest.mark.parametrize("form", W.FORMS)
def test_each_weighted_form_follows_its_gradient_off_policy_exactly(form):
    logits, ref_logits = exact.random_categorical(6, seed=3), exact.random_categorical(6, seed=4)
    old = exact.perturb(logits, 0.8, seed=5)
    g = exact.categorical_expected_gradient(
        lambda lp, lr, lo: W.weighted_kl(form, lp, lr, lo), logits, ref_logits, old
    )
    targets = _targets(logits, ref_logits)
    want = targets[W.FOLLOWS[form]]
    scale = float(targets["reverse KL"].norm())
    assert float((g - want).norm()) <= 1e-12 * scale
    for name, t in targets.items():  # and not the others
        if name != W.FOLLOWS[form]:
            assert float((g - t).norm()) > 1e-3 * scale, name


@pytest.mark.parametrize("form", ["w*k1", "w*k3", "sg(w)*k2"])
def test_sequence_weight_gives_the_sequence_reverse_kl_gradient(form):
    space = exact.SequenceSpace(vocab=3, length=3)
    theta, ref = (
        exact.random_tabular(space, scale=0.7, seed=1),
        exact.random_tabular(space, scale=0.7, seed=2),
    )
    old = exact.perturb(theta, 0.4, seed=7)
    g = exact.expected_gradient(
        space, W.sequence_weighted_surrogate(form), theta, ref, behaviour=old
    )
    want = exact.objective_gradient(space, theta, ref, "sequence reverse KL")
    assert float((g - want).norm() / want.norm()) <= 1e-12


def test_k3_is_the_integrand_of_the_unnormalized_kl():
    p = torch.softmax(exact.random_categorical(7, seed=1), -1)
    mu = 0.6 * torch.softmax(exact.random_categorical(7, seed=2), -1)  # a measure of mass 0.6
    u = p.log() - mu.log()
    torch.testing.assert_close(
        (p * (torch.exp(-u) - 1 + u)).sum(), W.unnormalized_kl(p, mu), rtol=1e-14, atol=0
    )
    q = mu / mu.sum()
    torch.testing.assert_close(
        W.unnormalized_kl(p, q), (p * (p.log() - q.log())).sum(), rtol=1e-13, atol=0
    )


def test_weighted_kl_rejects_bad_input():
    x = torch.zeros(3, dtype=DT)
    with pytest.raises(ValueError, match="unknown form 'k4'"):
        W.weighted_kl("k4", x, x, x)
    with pytest.raises(ValueError, match="same shape"):
        W.unnormalized_kl(torch.ones(2), torch.ones(3))
    with pytest.raises(ValueError, match="positive"):
        W.unnormalized_kl(torch.ones(2), torch.tensor([1.0, 0.0]))
