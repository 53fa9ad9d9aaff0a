"""Tests of klnotes.gpt2.gradcompare against exact references on a tiny float64 GPT-2."""

from __future__ import annotations

import math

import pytest
import torch

from klnotes import plotting
from klnotes.gpt2 import gradcompare as gc
from klnotes.gpt2 import responses

V, L = 5, 3
PROMPT = torch.tensor([1, 2])


def _tiny_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=V,
        n_positions=8,
        n_embd=8,
        n_layer=1,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(cfg).double().eval()


@pytest.fixture(scope="module")
def models():
    ref = _tiny_gpt2()
    target = gc.perturb(ref, 3.0, seed=1)
    return ref, target


@pytest.fixture(scope="module")
def on_policy(models):
    ref, target = models
    policy = gc.interpolate(ref, target, 1.0)
    return policy, gc.exact_gradients(policy, ref, PROMPT, L)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_enumerate_responses_lists_every_sequence_once():
    r = gc.enumerate_responses(3, 4)
    assert r.shape == (81, 4)
    assert len({tuple(x) for x in r.tolist()}) == 81
    with pytest.raises(ValueError, match="exceeds max_sequences"):
        gc.enumerate_responses(20, 4, max_sequences=1000)


def test_principled_gradient_equals_autograd_of_exact_sequence_kl(models, on_policy):
    ref, _ = models
    policy, gs = on_policy
    responses = gc.enumerate_responses(V, L)
    logp = gc.token_logprobs(policy, PROMPT, responses).sum(1)
    logp_ref = gc.token_logprobs(ref, PROMPT, responses).sum(1).detach()
    assert (
        abs(float(logp.detach().exp().sum()) - 1.0) < 1e-12
    )  # fixed-length responses: a distribution
    kl = (logp.exp() * (logp - logp_ref)).sum()
    grads = torch.autograd.grad(kl, list(policy.parameters()))
    direct = torch.cat([g.reshape(-1) for g in grads])
    assert abs(gs.kl - float(kl.detach())) < 1e-12
    assert gs.kl > 1e-3
    assert _rel(gs.grads[gc.PRINCIPLED], direct) < 1e-10


def test_principled_gradient_matches_finite_differences(models, on_policy):
    ref, _ = models
    policy, gs = on_policy
    responses = gc.enumerate_responses(V, L)
    param = policy.transformer.wte.weight
    offset = sum(
        p.numel()
        for p in list(policy.parameters())[: [id(p) for p in policy.parameters()].index(id(param))]
    )
    eps = 1e-6

    def kl():
        with torch.no_grad():
            lp = gc.token_logprobs(policy, PROMPT, responses).sum(1)
            lr = gc.token_logprobs(ref, PROMPT, responses).sum(1)
            return float((lp.exp() * (lp - lr)).sum())

    with torch.no_grad():
        param[2, 3] += eps
        up = kl()
        param[2, 3] -= 2 * eps
        down = kl()
        param[2, 3] += eps
    fd = (up - down) / (2 * eps)
    assert math.isclose(
        float(gs.grads[gc.PRINCIPLED][offset + 2 * param.shape[1] + 3]),
        fd,
        rel_tol=1e-6,
        abs_tol=1e-10,
    )


def test_exact_expected_gradients_follow_the_theory(on_policy):
    _, gs = on_policy
    g_star = gs.grads[gc.PRINCIPLED]
    for label in ("k1 in reward (seq)", "k1 in reward (rtg)", "k2 as loss (seq)"):
        assert _rel(gs.grads[label], g_star) < 1e-10, label
    assert float(gs.grads["k1 as loss"].norm()) < 1e-12 * float(g_star.norm())
    for label in ("k2 as loss", "k3 as loss", "k3 as loss (seq)"):
        assert _rel(gs.grads[label], g_star) > 1e-3, label
    frame = gc.compare(gs)
    row = frame.set_index("implementation").loc["k1 as loss"]
    assert math.isnan(row["cosine"]) and row["rel_norm"] < 1e-12


def test_sequence_importance_ratio_restores_the_on_policy_gradient(models, on_policy):
    ref, target = models
    policy, on = on_policy
    old = gc.interpolate(ref, target, 0.6)
    off = gc.exact_gradients(
        policy, ref, PROMPT, L, implementations=["k2 as loss", "k3 as loss"], old=old
    )
    assert _rel(off.grads[gc.PRINCIPLED], on.grads[gc.PRINCIPLED]) < 1e-10
    assert abs(off.kl - on.kl) < 1e-12
    for label in ("k2 as loss", "k3 as loss"):
        assert _rel(off.grads[label + " | sequence IS"], on.grads[label]) < 1e-10
        assert _rel(off.grads[label + " | off-policy"], on.grads[label]) > 1e-3
        assert _rel(off.grads[label + " | token IS"], on.grads[label]) > 1e-6


def test_token_coefficients_match_closed_forms():
    torch.manual_seed(0)
    lp, lr = -torch.rand(4, 3, dtype=torch.float64) * 3, -torch.rand(4, 3, dtype=torch.float64) * 3
    u = lp - lr
    torch.testing.assert_close(gc.token_coefficients("k2 as loss", lp, lr), u, rtol=0, atol=1e-14)
    torch.testing.assert_close(
        gc.token_coefficients("k3 as loss", lp, lr), -torch.expm1(-u), rtol=0, atol=1e-14
    )
    torch.testing.assert_close(
        gc.token_coefficients("k1 as loss", lp, lr), torch.ones_like(u), rtol=0, atol=0
    )
    torch.testing.assert_close(
        gc.token_coefficients("k1 in reward (seq)", lp, lr), u.sum(1, keepdim=True).expand_as(u)
    )
    rtg = torch.flip(torch.cumsum(torch.flip(u, [1]), 1), [1])
    torch.testing.assert_close(gc.token_coefficients("k1 in reward (rtg)", lp, lr), rtg)


def test_monte_carlo_estimate_agrees_with_exact(on_policy, models):
    ref, _ = models
    policy, exact = on_policy
    mc = gc.sampled_gradients(
        policy, ref, PROMPT, L, 4000, n_batches=4, implementations=["k2 as loss"], seed=0
    )
    assert abs(mc.kl - exact.kl) < 4 * mc.kl_se
    assert _rel(mc.grads[gc.PRINCIPLED], exact.grads[gc.PRINCIPLED]) < 0.3
    frame = gc.compare(mc)
    assert {"cosine_lo", "cosine_hi", "rel_norm_lo", "rel_norm_hi"} <= set(frame.columns)
    assert (frame["cosine_lo"] <= frame["cosine"]).all() and (
        frame["cosine"] <= frame["cosine_hi"]
    ).all()


def test_interpolate_endpoints_and_distance(models):
    ref, target = models
    assert gc.parameter_distance(gc.interpolate(ref, target, 0.0), ref) == 0.0
    assert gc.parameter_distance(gc.interpolate(ref, target, 1.0), target) < 1e-12
    half = gc.parameter_distance(gc.interpolate(ref, target, 0.5), ref)
    assert math.isclose(half, 0.5 * gc.parameter_distance(ref, target), rel_tol=1e-12)


def test_sweep_returns_one_row_per_distance_and_implementation(models):
    ref, target = models
    frame = gc.sweep(
        ref, target, [0.5, 1.0], PROMPT, 2, implementations=["k2 as loss", "k3 as loss"]
    )
    assert len(frame) == 4
    assert frame.groupby("alpha")["kl"].first().is_monotonic_increasing


def test_bad_inputs_are_rejected_with_the_allowed_values(models):
    ref, target = models
    with pytest.raises(ValueError, match="allowed: k1 in reward \\(seq\\)"):
        gc.get_implementation("k4 as loss")
    with pytest.raises(ValueError, match="unknown off-policy correction"):
        gc.exact_gradients(ref, ref, PROMPT, 2, corrections=["both"])
    with pytest.raises(ValueError, match="prompt must be a non-empty 1-D"):
        gc.token_logprobs(
            ref, torch.tensor([], dtype=torch.long), torch.zeros(1, 2, dtype=torch.long)
        )
    with pytest.raises(ValueError, match="multiple of n_batches"):
        gc.sampled_gradients(ref, ref, PROMPT, 2, 10, n_batches=4)
    with pytest.raises(ValueError, match="labels_per_pass must be >= 1, got 0"):
        gc.sampled_gradients(ref, ref, PROMPT, 2, 8, n_batches=4, labels_per_pass=0)
    with pytest.raises(KeyError, match="not among the gradients"):
        gc.compare(gc.exact_gradients(ref, ref, PROMPT, 1), target="nope")
    with pytest.raises(ValueError, match="same parameter names and shapes"):
        gc.interpolate(ref, torch.nn.Linear(2, 2), 0.5)


def test_sequence_k3_as_loss_is_the_forward_kl_gradient_and_k1_loss_off_policy_its_negative(
    models, on_policy
):
    ref, target = models
    policy, gs = on_policy
    kl, g_rev = gc.exact_kl_gradient(policy, ref, PROMPT, L)
    assert abs(kl - gs.kl) < 1e-12 and _rel(gs.grads[gc.PRINCIPLED], g_rev) < 1e-10
    _, g_fwd = gc.exact_kl_gradient(policy, ref, PROMPT, L, direction="forward")
    assert _rel(gs.grads["k3 as loss (seq)"], g_fwd) < 1e-10
    old = gc.interpolate(ref, target, 0.6)
    off = gc.exact_gradients(
        policy, ref, PROMPT, L, implementations=["k1 as loss"], old=old, corrections=[None]
    )
    _, g_old = gc.exact_kl_gradient(policy, old, PROMPT, L, direction="forward")
    assert _rel(off.grads["k1 as loss | off-policy"], -g_old) < 1e-10
    with pytest.raises(ValueError, match="allowed: reverse, forward"):
        gc.exact_kl_gradient(policy, ref, PROMPT, L, direction="both")


def test_trainer_kl_heads_have_the_expected_exact_gradients(on_policy, models):
    ref, _ = models
    policy, gs = on_policy
    arms = ("none", "k1-loss", "k2-loss", "k3-loss", "k1-reward", "k2-loss-is", "k3-loss-is")
    heads = gc.trainer_head_gradients(policy, ref, PROMPT, L, arms)
    g_star = gs.grads[gc.PRINCIPLED]
    scale = float(g_star.norm())
    assert float(heads["none"].norm()) == 0.0
    assert float(heads["k1-loss"].norm()) < 1e-12 * scale
    assert _rel(heads["k2-loss"], gs.grads["k2 as loss"]) < 1e-10
    assert _rel(heads["k3-loss"], gs.grads["k3 as loss"]) < 1e-10
    assert _rel(heads["k2-loss-is"], gs.grads["k2 as loss"]) < 1e-10  # on-policy the ratio is 1
    assert _rel(heads["k3-loss-is"], gs.grads["k3 as loss"]) < 1e-10
    assert _rel(heads["k1-reward"], g_star) < 1e-10
    with pytest.raises(ValueError, match="allowed: none, k1-loss"):
        gc.trainer_head_gradients(policy, ref, PROMPT, L, ["k4-loss"])


# --- Monte Carlo: Gram statistics against the all-vectors formulas -----------------------------------


def _reference_batch_vectors(
    policy, ref, n_samples, n_batches, impls, seed, old=None, corrections=(None,)
):
    """Every label's per-batch mean gradient ``[B, D]``, stored explicitly (the memory-heavy reference)."""
    gen = torch.Generator().manual_seed(seed)
    per = n_samples // n_batches
    params = list(policy.parameters())
    out: dict[str, list[torch.Tensor]] = {}
    for _ in range(n_batches):
        r = gc.sample_responses(policy if old is None else old, PROMPT, L, per, generator=gen)
        logp = gc.token_logprobs(policy, PROMPT, r)
        lp = logp.detach()
        with torch.no_grad():
            lr = gc.token_logprobs(ref, PROMPT, r)
            lo = lp if old is None else gc.token_logprobs(old, PROMPT, r)
        u = (lp - lr).sum(1, keepdim=True).expand_as(lp)
        ratio = (lp - lo).sum(1, keepdim=True).exp()
        coef = {gc.PRINCIPLED: ratio * u}
        for label in impls:
            c = gc.token_coefficients(label, lp, lr)
            if old is None:
                coef[label] = c
                continue
            for corr in corrections:
                suffix = {
                    None: " | off-policy",
                    "token": " | token IS",
                    "sequence": " | sequence IS",
                }[corr]
                coef[label + suffix] = (
                    c if corr is None else (c * (lp - lo).exp() if corr == "token" else ratio * c)
                )
        for label, c in coef.items():
            g = torch.autograd.grad(logp, params, grad_outputs=c / per, retain_graph=True)
            out.setdefault(label, []).append(torch.cat([x.reshape(-1) for x in g]))
    return {label: torch.stack(vs) for label, vs in out.items()}


def _reference_rows(batches):
    """cosine, rel_norm, rel_error and 95% jackknife intervals from the stored vectors (old formulas)."""

    def metrics(g, t):
        cos = float(g @ t) / float(g.norm() * t.norm())
        return cos, float(g.norm() / t.norm()), float((g - t).norm() / t.norm())

    bt = batches[gc.PRINCIPLED]
    rows = {}
    for label, b in batches.items():
        if label == gc.PRINCIPLED:
            continue
        n = b.shape[0]
        cos, rel, err = metrics(b.mean(0), bt.mean(0))
        row = {"cosine": cos, "rel_norm": rel, "rel_error": err}
        loo = [
            metrics((b.sum(0) - b[j]) / (n - 1), (bt.sum(0) - bt[j]) / (n - 1)) for j in range(n)
        ]
        for k, name in ((0, "cosine"), (1, "rel_norm")):
            vals = torch.tensor([v[k] for v in loo], dtype=torch.float64)
            se = math.sqrt((n - 1) / n * float(((vals - vals.mean()) ** 2).sum()))
            row[f"{name}_lo"], row[f"{name}_hi"] = row[name] - 1.96 * se, row[name] + 1.96 * se
            if name == "cosine":
                row["cosine_lo"], row["cosine_hi"] = (
                    max(row["cosine_lo"], -1.0),
                    min(row["cosine_hi"], 1.0),
                )
        rows[label] = row
    return rows


def _assert_frame_matches(frame, expected):
    assert list(frame["implementation"]) == list(expected)
    cols = (
        "cosine",
        "rel_norm",
        "rel_error",
        "cosine_lo",
        "cosine_hi",
        "rel_norm_lo",
        "rel_norm_hi",
    )
    for _, row in frame.iterrows():
        for col in cols:
            assert math.isclose(
                row[col], expected[row["implementation"]][col], rel_tol=1e-9, abs_tol=1e-12
            ), (row["implementation"], col)


@pytest.mark.parametrize("off_policy", [False, True])
def test_monte_carlo_gram_statistics_equal_the_all_vectors_formulas(models, off_policy):
    ref, target = models
    policy = gc.interpolate(ref, target, 1.0)
    old = gc.interpolate(ref, target, 0.6) if off_policy else None
    impls = (
        ["k2 as loss", "k3 as loss (seq)", "k1 in reward (rtg)"]
        if not off_policy
        else ["k3 as loss"]
    )
    mc = gc.sampled_gradients(
        policy,
        ref,
        PROMPT,
        L,
        24,
        n_batches=4,
        implementations=impls,
        seed=3,
        old=old,
        keep_grads=True,
    )
    batches = _reference_batch_vectors(
        policy, ref, 24, 4, impls, seed=3, old=old, corrections=gc.CORRECTIONS
    )
    assert list(mc.grads) == list(batches) and set(mc.gram) == set(batches) - {gc.PRINCIPLED}
    for label, b in batches.items():  # same samples for every label: the means agree to rounding
        assert _rel(mc.grads[label], b.mean(0)) < 1e-12, label
    for label, gram in mc.gram.items():
        b, bt = batches[label], batches[gc.PRINCIPLED]
        torch.testing.assert_close(gram.own, b @ b.T, rtol=1e-12, atol=0)
        torch.testing.assert_close(gram.cross, b @ bt.T, rtol=1e-12, atol=0)
        torch.testing.assert_close(gram.target, bt @ bt.T, rtol=1e-12, atol=0)
    _assert_frame_matches(gc.compare(mc), _reference_rows(batches))
    lean = gc.sampled_gradients(
        policy,
        ref,
        PROMPT,
        L,
        24,
        n_batches=4,
        implementations=impls,
        seed=3,
        old=old,
        labels_per_pass=2,
    )
    assert list(lean.grads) == [gc.PRINCIPLED]  # memory-light default: only g* is kept
    _assert_frame_matches(gc.compare(lean), _reference_rows(batches))
    with pytest.raises(ValueError, match="can only be compared with"):
        gc.compare(mc, target=impls[0] if not off_policy else "k3 as loss | off-policy")


def test_monte_carlo_sweep_offpolicy_bias_matches_stored_vectors(models):
    ref, target = models
    impls = ["k2 as loss"]
    frame = gc.sweep(
        ref,
        target,
        [1.0],
        PROMPT,
        L,
        old_lag=0.4,
        implementations=impls,
        n_samples=16,
        n_batches=2,
        seed=5,
    )
    policy, old = gc.interpolate(ref, target, 1.0), gc.interpolate(ref, target, 0.6)
    off = _reference_batch_vectors(
        policy, ref, 16, 2, impls, seed=5, old=old, corrections=gc.CORRECTIONS
    )
    on = _reference_batch_vectors(policy, ref, 16, 2, impls, seed=6)
    scale = float(on[gc.PRINCIPLED].mean(0).norm())
    _assert_frame_matches(frame, _reference_rows(off))
    for _, row in frame.iterrows():
        expected = (
            float((off[row["implementation"]].mean(0) - on["k2 as loss"].mean(0)).norm()) / scale
        )
        assert math.isclose(row["offpolicy_bias"], expected, rel_tol=1e-9), row["implementation"]
    assert {"kl_se", "param_distance", "alpha"} <= set(frame.columns)


class _DeviceTensor(torch.Tensor):
    """A tensor that behaves like one on a GPU for ``.numpy()``: it refuses unless ``.cpu()`` was called."""

    def numpy(self, *args, **kwargs):
        raise TypeError("can't convert a device tensor to numpy: call .cpu() first")

    def cpu(self, *args, **kwargs):
        return self.as_subclass(torch.Tensor)


def test_coefficient_scatter_moves_device_tensors_to_the_host(models, monkeypatch):
    """Chapter 7's scatter crashed on CUDA (``.numpy()`` on device tensors); CPU runs cannot see that, so the
    coefficients are made to behave like device tensors here."""
    import matplotlib

    matplotlib.use("Agg")
    real = gc.token_coefficients
    monkeypatch.setattr(
        gc, "token_coefficients", lambda *a, **k: real(*a, **k).as_subclass(_DeviceTensor)
    )
    with pytest.raises(TypeError, match="device tensor"):
        gc.token_coefficients("k2 as loss", torch.zeros(2, 2), torch.zeros(2, 2)).reshape(
            -1
        ).numpy()
    ref, target = models
    fig = plotting.plot_coefficient_scatter(target, ref, PROMPT, L, n=16)
    assert len(fig.axes[0].collections) == 2


def test_sampling_keeps_draws_and_returns_host_tensors(models):
    """The KV-cached sampler draws the same responses as a cache-free loop (CPU, same generator)."""
    _, target = models
    fast = gc.sample_responses(target, PROMPT, L, 32, generator=torch.Generator().manual_seed(3))
    ids, gen = PROMPT.expand(32, -1).clone(), torch.Generator().manual_seed(3)
    for _ in range(L):
        probs = torch.softmax(responses.full_logits(target, ids)[:, -1].double(), dim=-1)
        ids = torch.cat([ids, torch.multinomial(probs, 1, generator=gen)], dim=1)
    assert torch.equal(fast, ids[:, PROMPT.numel() :]) and fast.device.type == "cpu"


def test_compare_with_a_zero_target_gives_nan_not_an_error():
    zero = torch.zeros(4, dtype=torch.float64)
    gs = gc.GradientSet(
        grads={gc.PRINCIPLED: zero, "k2 as loss": torch.ones(4, dtype=torch.float64)},
        kl=0.0,
        kl_se=0.0,
        exact=True,
        gram={},
    )
    row = gc.compare(gs).iloc[0]
    assert (
        math.isnan(row["rel_norm"]) and math.isnan(row["rel_error"]) and math.isnan(row["cosine"])
    )
