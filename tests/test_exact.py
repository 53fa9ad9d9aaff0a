"""klnotes.analysis.exact: exact enumeration against independent references (loops, torch.distributions, finite
differences) and the identities of chapter 4."""

import itertools
import math

import pytest
import torch

from klnotes.analysis import exact
from klnotes.core.estimators import k1, k2
from klnotes.core.surrogates import surrogate

F64 = torch.float64


def _rel(a, b):
    a, b = exact.flatten(a), exact.flatten(b)
    return float((a - b).norm() / max(float(b.norm()), 1e-300))


# --- the space ----------------------------------------------------------------------------------


@pytest.mark.parametrize("V,L", [(2, 1), (2, 4), (3, 3), (4, 2)])
def test_space_enumerates_every_sequence_in_lexicographic_order_with_a_consistent_prefix_index(
    V, L
):
    space = exact.SequenceSpace(V, L)
    seqs = list(itertools.product(range(V), repeat=L))
    assert space.seqs.tolist() == [list(s) for s in seqs]
    assert space.num_sequences == V**L
    prefixes = [()] + [p for t in range(1, L) for p in itertools.product(range(V), repeat=t)]
    index = {p: i for i, p in enumerate(prefixes)}
    assert space.num_prefixes == len(prefixes)
    assert space.prefix.tolist() == [[index[s[:t]] for t in range(L)] for s in seqs]


def _brute_token_logp(space, logits):
    """Python loop: log pi(y_t | y_<t) from the tabular logits, via a dict of prefixes."""
    V, L = space.vocab, space.length
    prefixes = [()] + [p for t in range(1, L) for p in itertools.product(range(V), repeat=t)]
    index = {p: i for i, p in enumerate(prefixes)}
    out = []
    for s in itertools.product(range(V), repeat=L):
        row = []
        for t in range(L):
            z = logits[index[s[:t]]].tolist()
            m = max(z)
            lse = m + math.log(sum(math.exp(v - m) for v in z))
            row.append(z[s[t]] - lse)
        out.append(row)
    return torch.tensor(out, dtype=F64)


def test_token_logprobs_match_a_python_loop_and_probabilities_sum_to_one():
    space = exact.SequenceSpace(3, 3)
    th = exact.random_tabular(space, scale=1.5, seed=3)
    assert torch.allclose(
        exact.token_logp(space, th), _brute_token_logp(space, th), rtol=0, atol=1e-14
    )
    assert exact.sequence_probs(space, th).sum().item() == pytest.approx(1.0, abs=1e-14)
    a = exact.next_token_logp(space, th)
    assert a.shape == (27, 3, 3)
    assert torch.allclose(a.exp().sum(-1), torch.ones(27, 3, dtype=F64), atol=1e-15)


def test_large_space_sums_to_one():
    space = exact.SequenceSpace(4, 8)
    th = exact.random_tabular(space, scale=2.0, seed=0)
    assert exact.sequence_probs(space, th).sum().item() == pytest.approx(1.0, abs=1e-12)


# --- KL values ----------------------------------------------------------------------------------


def test_categorical_kl_matches_torch_distributions_in_both_directions():
    th = exact.random_categorical(7, scale=1.3, seed=1, contexts=4)
    ref = exact.random_categorical(7, scale=1.3, seed=2, contexts=4)
    P, Q = torch.distributions.Categorical(logits=th), torch.distributions.Categorical(logits=ref)
    assert torch.allclose(
        exact.categorical_kl(th, ref), torch.distributions.kl_divergence(P, Q), rtol=1e-13
    )
    assert torch.allclose(
        exact.categorical_kl(th, ref, "forward"),
        torch.distributions.kl_divergence(Q, P),
        rtol=1e-13,
    )


def _brute_kls(space, th, ref):
    """Python loops over sequences: (seq RKL, seq FKL, token RKL, token FKL)."""
    lp, lr = _brute_token_logp(space, th), _brute_token_logp(space, ref)
    a, ar = exact.next_token_logp(space, th).tolist(), exact.next_token_logp(space, ref).tolist()
    seq_r = seq_f = tok_r = tok_f = 0.0
    for n in range(space.num_sequences):
        p, q = math.exp(sum(lp[n].tolist())), math.exp(sum(lr[n].tolist()))
        seq_r += p * (math.log(p) - math.log(q))
        seq_f += q * (math.log(q) - math.log(p))
        for t in range(space.length):
            tok_r += p * sum(math.exp(x) * (x - y) for x, y in zip(a[n][t], ar[n][t]))
            tok_f += p * sum(math.exp(y) * (y - x) for x, y in zip(a[n][t], ar[n][t]))
    return seq_r, seq_f, tok_r, tok_f


def test_sequence_and_token_kls_match_python_loops():
    space = exact.SequenceSpace(2, 3)
    th = exact.random_tabular(space, seed=4)
    ref = exact.random_tabular(space, seed=5)
    got = [exact.objective(space, th, ref, name).item() for name in exact.OBJECTIVES]
    seq_r, seq_f, tok_r, tok_f = _brute_kls(space, th, ref)
    assert got == pytest.approx([seq_r, tok_r, seq_f, tok_f], rel=1e-12)
    # chain rule of KL: per-token reverse KL with prefixes under pi_theta equals the sequence reverse KL
    assert tok_r == pytest.approx(seq_r, rel=1e-12)


# --- gradients against finite differences -------------------------------------------------------


def _central_difference(f, x, h=1e-6):
    g = torch.zeros_like(x)
    flat = g.view(-1)
    for i in range(x.numel()):
        e = torch.zeros_like(x).view(-1)
        e[i] = h
        e = e.view_as(x)
        flat[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


@pytest.mark.parametrize("direction", exact.DIRECTIONS)
def test_categorical_kl_gradient_matches_finite_differences_and_closed_form(direction):
    th = exact.random_categorical(5, seed=6)
    ref = exact.random_categorical(5, seed=7)
    g = exact.categorical_kl_gradient(th, ref, direction)
    fd = _central_difference(lambda x: exact.categorical_kl(x, ref, direction).item(), th)
    assert _rel(g, fd) < 1e-8
    pi, pr = torch.softmax(th, -1), torch.softmax(ref, -1)
    u = th.log_softmax(-1) - ref.log_softmax(-1)
    closed = pi * (u - (pi * u).sum()) if direction == "reverse" else pi - pr
    assert _rel(g, closed) < 1e-13


def _frozen_token_kl(space, th0, ref, direction):
    """Per-token KL with the prefix weights frozen at th0, as a function of th (for finite differences)."""
    w = exact.sequence_probs(space, th0)
    ar = exact.next_token_logp(space, ref)

    def f(th):
        a = exact.next_token_logp(space, th)
        kl = (
            (a.exp() * (a - ar)).sum(-1)
            if direction == "reverse"
            else (ar.exp() * (ar - a)).sum(-1)
        )
        return float((w * kl.sum(-1)).sum())

    return f


def test_objective_gradients_match_finite_differences():
    space = exact.SequenceSpace(2, 3)
    th = exact.random_tabular(space, seed=8)
    ref = exact.random_tabular(space, seed=9)
    refs = {
        "sequence reverse KL": lambda x: exact.sequence_kl(space, x, ref).item(),
        "sequence forward KL": lambda x: exact.sequence_kl(space, x, ref, "forward").item(),
        "per-token reverse KL": _frozen_token_kl(space, th, ref, "reverse"),
        "per-token forward KL": _frozen_token_kl(space, th, ref, "forward"),
    }
    for name, f in refs.items():
        assert (
            _rel(exact.objective_gradient(space, th, ref, name), _central_difference(f, th)) < 1e-8
        ), name


def test_full_token_kl_gradient_equals_sequence_gradient_and_partial_one_differs():
    space = exact.SequenceSpace(3, 3)
    th, ref = exact.random_tabular(space, seed=10), exact.random_tabular(space, seed=11)
    leaf = th.clone().requires_grad_(True)
    (full,) = torch.autograd.grad(exact.token_kl(space, leaf, ref, detach_prefix=False), leaf)
    seq = exact.objective_gradient(space, th, ref, "sequence reverse KL")
    part = exact.objective_gradient(space, th, ref, "per-token reverse KL")
    assert _rel(full, seq) < 1e-12
    assert _rel(part, seq) > 1e-2


# --- expected gradients: loop reference and identities ------------------------------------------


def test_expected_gradient_matches_a_loop_over_sequences_off_policy():
    space = exact.SequenceSpace(2, 3)
    th, ref, old = (exact.random_tabular(space, seed=s) for s in (12, 13, 14))
    f = exact.sequence_surrogate("k3 as loss", "token")
    got = exact.expected_gradient(space, f, th, ref, behaviour=old)
    want = torch.zeros_like(th)
    lr, lo = exact.token_logp(space, ref), exact.token_logp(space, old)
    mask = torch.ones(1, space.length, dtype=F64)
    for n in range(space.num_sequences):
        leaf = th.clone().requires_grad_(True)
        lp = exact.token_logp(space, leaf)[n : n + 1]
        (g,) = torch.autograd.grad(f(lp, lr[n : n + 1], lo[n : n + 1], mask).sum(), leaf)
        want += math.exp(float(lo[n].sum())) * g
    assert _rel(got, want) < 1e-13


def _cat_problem(distance=0.8):
    ref = exact.random_categorical(6, seed=20, contexts=3)
    th = exact.perturb(ref, distance, seed=21)
    return th, ref


def _eg(fn, th, ref, old=None):
    return exact.categorical_expected_gradient(fn, th, ref, old)


def test_score_function_identity_categorical_and_sequences():
    th, ref = _cat_problem()
    assert float(_eg(lambda lp, lr: lp, th, ref).abs().max()) < 1e-15
    space = exact.SequenceSpace(3, 4)
    ts, rs = exact.random_tabular(space, seed=22), exact.random_tabular(space, seed=23)
    g = exact.expected_gradient(space, lambda lp, lr, lo, m: lp.sum(-1), ts, rs)
    assert float(g.abs().max()) < 1e-14


def test_k1_in_reward_and_k2_as_loss_give_the_reverse_kl_gradient_and_k1_as_loss_gives_zero():
    th, ref = _cat_problem()
    rkl = exact.categorical_kl_gradient(th, ref)
    assert _rel(_eg(lambda lp, lr: surrogate("k1 in reward", lp, lr), th, ref), rkl) < 1e-12
    assert _rel(_eg(lambda lp, lr: surrogate("k2 as loss", lp, lr), th, ref), rkl) < 1e-12
    assert float(_eg(lambda lp, lr: surrogate("k1 as loss", lp, lr), th, ref).abs().max()) < 1e-15


def test_k3_as_loss_gives_the_forward_kl_gradient_and_k3_reward_plus_loss_gives_reverse():
    th, ref = _cat_problem(1.5)
    fkl = exact.categorical_kl_gradient(th, ref, "forward")
    rkl = exact.categorical_kl_gradient(th, ref, "reverse")
    k3_loss = _eg(lambda lp, lr: surrogate("k3 as loss", lp, lr), th, ref)
    assert _rel(k3_loss, fkl) < 1e-12
    assert _rel(k3_loss, rkl) > 1e-2  # and it is *not* the reverse-KL gradient
    both = _eg(
        lambda lp, lr: surrogate("k3 in reward", lp, lr) + surrogate("k3 as loss", lp, lr), th, ref
    )
    assert _rel(both, rkl) < 1e-12


def test_off_policy_naive_k2_is_biased_and_importance_weighted_coefficient_is_exact():
    th, ref = _cat_problem()
    old = exact.perturb(th, 0.5, seed=30)
    rkl = exact.categorical_kl_gradient(th, ref)
    naive = _eg(lambda lp, lr, lo: k2(lp, lr), th, ref, old)
    weighted = _eg(lambda lp, lr, lo: torch.exp(lp - lo) * k1(lp, lr).detach(), th, ref, old)
    assert _rel(naive, rkl) > 1e-2
    assert _rel(weighted, rkl) < 1e-12


def test_sequence_level_identities():
    space = exact.SequenceSpace(3, 3)
    th, ref = exact.random_tabular(space, seed=40), exact.random_tabular(space, seed=41)
    G = {n: exact.objective_gradient(space, th, ref, n) for n in exact.OBJECTIVES}

    def eg(label, level):
        return exact.expected_gradient(space, exact.sequence_surrogate(label, level), th, ref)

    assert _rel(eg("k1 in reward", "sequence"), G["sequence reverse KL"]) < 1e-12
    assert _rel(eg("k2 as loss", "sequence"), G["sequence reverse KL"]) < 1e-12
    assert _rel(eg("k1 in reward", "token-rtg"), G["sequence reverse KL"]) < 1e-12
    assert _rel(eg("k3 as loss", "sequence"), G["sequence forward KL"]) < 1e-12
    assert _rel(eg("k2 as loss", "token"), G["per-token reverse KL"]) < 1e-12
    assert _rel(eg("k3 as loss", "token"), G["per-token forward KL"]) < 1e-12
    assert float(eg("k1 as loss", "token").abs().max()) < 1e-14
    assert _rel(eg("k2 as loss", "token"), G["sequence reverse KL"]) > 1e-2


# --- callable (neural) policies -----------------------------------------------------------------


class _TinyCausal(torch.nn.Module):
    """Logits at t from a position embedding plus the mean embedding of the tokens before t."""

    def __init__(self, V, L, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.nn.Parameter(torch.randn(V, 5, generator=g, dtype=F64))
        self.pos = torch.nn.Parameter(torch.randn(L, 5, generator=g, dtype=F64))
        self.out = torch.nn.Parameter(torch.randn(5, V, generator=g, dtype=F64))

    def forward(self, seqs):
        e = self.emb[seqs]  # [N, L, 5]
        past = torch.cumsum(e, 1) - e  # tokens before t only
        count = torch.arange(seqs.shape[1], dtype=F64).clamp_min(1).view(1, -1, 1)
        return torch.tanh(past / count + self.pos) @ self.out


def test_logits_fn_from_a_table_reproduces_the_tabular_results():
    space = exact.SequenceSpace(3, 3)
    th, ref = exact.random_tabular(space, seed=50), exact.random_tabular(space, seed=51)
    table = th.clone().requires_grad_(True)
    fn = lambda seqs: table[space.prefix]  # noqa: E731  (seqs are the space's own)
    for name in exact.OBJECTIVES:
        (g,) = exact.objective_gradient(space, fn, ref, name, params=[table])
        assert _rel(g, exact.objective_gradient(space, th, ref, name)) < 1e-13
    f = exact.sequence_surrogate("k3 as loss", "token")
    (g,) = exact.expected_gradient(space, f, fn, ref, params=[table])
    assert _rel(g, exact.expected_gradient(space, f, th, ref)) < 1e-13


def test_neural_policy_gradient_matches_finite_differences_and_k2_identity():
    space = exact.SequenceSpace(3, 3)
    model = _TinyCausal(3, 3, seed=1)
    ref = exact.random_tabular(space, seed=52)
    grads = exact.objective_gradient(
        space, model, ref, "sequence reverse KL", params=list(model.parameters())
    )
    p = model.out
    base = p.detach().clone()

    def f(x):
        with torch.no_grad():
            p.copy_(x)
            v = exact.sequence_kl(space, model, ref).item()
            p.copy_(base)
        return v

    assert _rel(grads[2], _central_difference(f, base)) < 1e-8
    eg = exact.expected_gradient(
        space,
        exact.sequence_surrogate("k2 as loss", "sequence"),
        model,
        ref,
        params=list(model.parameters()),
    )
    assert _rel(eg, grads) < 1e-12


# --- bad inputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(vocab=1, length=2), r"vocab must be an integer >= 2, got 1"),
        (dict(vocab=2.5, length=2), r"vocab .* got 2.5"),
        (dict(vocab=3, length=0), r"length must be an integer >= 1, got 0"),
        (dict(vocab=2, length=21), r"2,097,152 sequences.*at most 2,000,000"),
    ],
)
def test_space_rejects_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        exact.SequenceSpace(**kwargs)


def test_bad_policies_and_names_are_rejected_with_clear_messages():
    space = exact.SequenceSpace(2, 2)
    th = exact.random_tabular(space)
    with pytest.raises(ValueError, match=r"shape \(3, 2\), got \(4, 2\)"):
        exact.token_logp(space, torch.zeros(4, 2, dtype=F64))
    bad = th.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        exact.sequence_kl(space, bad, th)
    with pytest.raises(ValueError, match="allowed: sequence reverse KL"):
        exact.objective_gradient(space, th, th, "reverse KL")
    with pytest.raises(ValueError, match="allowed: reverse, forward"):
        exact.categorical_kl(th[0], th[1], "backward")
    with pytest.raises(ValueError, match="needs params"):
        exact.objective_gradient(space, lambda s: th[space.prefix], th, "sequence reverse KL")
    with pytest.raises(ValueError, match="not causal"):
        exact.token_logp(space, lambda s: torch.nn.functional.one_hot(s, 2).to(F64))
    with pytest.raises(ValueError, match=r"shape \[N, L, V\]"):
        exact.token_logp(space, lambda s: torch.zeros(4, 2, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"one loss per sequence"):
        exact.expected_gradient(space, lambda lp, lr, lo, m: lp, th, th)
    with pytest.raises(ValueError, match="one value per outcome"):
        exact.categorical_expected_gradient(lambda lp, lr: lp.sum(), th[0], th[1])
    with pytest.raises(ValueError, match="allowed: token, token-rtg, sequence"):
        exact.sequence_surrogate("k1 in reward", "prefix")


# --- helpers used by the chapters ---------------------------------------------------------------


def test_chi_square_is_the_variance_of_delta_and_matches_a_loop():
    th, ref = exact.random_categorical(5, seed=60), exact.random_categorical(5, seed=61)
    p, q = torch.softmax(th, -1).tolist(), torch.softmax(ref, -1).tolist()
    want = sum(b * b / a for a, b in zip(p, q)) - 1
    assert exact.categorical_chi_square(th, ref).item() == pytest.approx(want, rel=1e-13)
    delta = torch.tensor(q, dtype=F64) / torch.tensor(p, dtype=F64)
    var = (torch.tensor(p, dtype=F64) * (1 - delta) ** 2).sum()  # E[1 - delta] = 0 on-policy
    assert var.item() == pytest.approx(want, rel=1e-12)


def test_k3_as_loss_bias_is_bounded_by_sqrt2_times_kl():
    for seed in range(20):
        ref = exact.random_categorical(6, seed=seed, contexts=3)
        th = exact.perturb(ref, 0.3 + 0.2 * seed, seed=100 + seed)
        bias = exact.categorical_implementation_gradient(
            "k3 as loss", th, ref
        ) - exact.categorical_kl_gradient(th, ref)
        assert (bias.norm(dim=-1) <= math.sqrt(2) * exact.categorical_kl(th, ref)).all()


def test_tiny_transformer_is_causal_normalized_and_seeded():
    space = exact.SequenceSpace(3, 3)
    a, b = exact.TinyTransformer(3, 3, seed=4), exact.TinyTransformer(3, 3, seed=4)
    assert torch.equal(
        exact.token_logp(space, a), exact.token_logp(space, b)
    )  # passes the causality check
    assert exact.sequence_probs(space, a).sum().item() == pytest.approx(1.0, abs=1e-14)
    assert not torch.equal(
        exact.token_logp(space, a), exact.token_logp(space, exact.TinyTransformer(3, 3, seed=5))
    )


def test_distance_sweep_reports_exact_equivalences_and_nan_cosine_for_zero_gradient():
    df = exact.distance_sweep(exact.SequenceSpace(3, 2), [0.1, 1.0], seeds=[0, 1])
    assert len(df) == 2 * 2 * 6
    exact_rows = df[df.implementation.isin(["k1 in reward", "k2 as loss"])]
    assert (exact_rows.rel_error < 1e-12).all() and (exact_rows.cosine > 1 - 1e-12).all()
    assert df[df.implementation == "k1 as loss"].cosine.isna().all()
    k3_error = df[df.implementation == "k3 as loss"].groupby("distance").rel_error.mean()
    assert k3_error.loc[0.1] < k3_error.loc[1.0]


def test_check_close_raises_with_the_error_and_relative_error_handles_zero():
    a = torch.tensor([1.0, 2.0], dtype=F64)
    assert exact.check_close(a, a) == 0.0
    with pytest.raises(AssertionError, match="demo: relative error 0.5"):
        exact.check_close(a * 1.5, a, name="demo")
    assert exact.relative_error(torch.zeros(2), torch.zeros(2)) == 0.0
    assert math.isnan(exact.cosine_similarity(torch.zeros(2), a))
