"""The audit's formula replicas equal the frameworks' own functions (kept verbatim in
tests/upstream/)."""

import pytest
import torch

from klnotes.frameworks import replicas
from tests.upstream import openrlhf_kl, verl_kl

U = torch.cat(
    [torch.linspace(-30.0, 30.0, 241), torch.tensor([-25.0, -20.0, -10.0, -2.6, 0.0, 2.6, 11.0])]
)


def _value_and_grad(fn, dtype):
    logp = (U.to(dtype) - 1.0).requires_grad_(True)
    ref = torch.full_like(logp, -1.0)
    value = fn(logp, ref)
    (grad,) = torch.autograd.grad(value.sum(), logp)
    return value.detach(), grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "kind",
    [
        "kl",
        "k1",
        "abs",
        "mse",
        "k2",
        "low_var_kl",
        "k3",
        "k1+",
        "abs+",
        "k3+",
        "low_var_kl+",
        "mse+",
    ],
)
def test_verl_replica_equals_verl(kind, dtype):
    want = _value_and_grad(lambda lp, r: verl_kl.kl_penalty(lp, r, kind), dtype)
    got = _value_and_grad(lambda lp, r: replicas.verl_kl_penalty(lp, r, kind), dtype)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True)


def test_verl_full_raises_in_both():
    x = torch.zeros(3)
    with pytest.raises(NotImplementedError):
        verl_kl.kl_penalty_forward(x, x, "full")
    with pytest.raises(NotImplementedError):
        replicas.verl_kl_penalty_forward(x, x, "full")


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_openrlhf_replica_equals_openrlhf(kind):
    # OpenRLHF casts to float32 first; the replica leaves the dtype alone, so compare in float32
    want = _value_and_grad(lambda lp, r: openrlhf_kl.compute_approx_kl(lp, r, kind), torch.float32)
    got = _value_and_grad(
        lambda lp, r: replicas.openrlhf_compute_approx_kl(lp, r, kind), torch.float32
    )
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6, equal_nan=True)
    # in float64 the upstream function still computes in float32: values agree to float32 precision
    want64 = _value_and_grad(
        lambda lp, r: openrlhf_kl.compute_approx_kl(lp, r, kind), torch.float64
    )[0]
    got64 = _value_and_grad(
        lambda lp, r: replicas.openrlhf_compute_approx_kl(lp, r, kind), torch.float64
    )[0]
    torch.testing.assert_close(got64.float(), want64.float(), rtol=1e-5, atol=1e-5)
