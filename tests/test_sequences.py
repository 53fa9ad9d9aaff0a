"""klnotes.analysis.sequences: token vs sequence level (chapter 5) and off-policy updates (chapter 6), exactly."""

import pytest
import torch

from klnotes.analysis import exact
from klnotes.analysis import sequences as S

DT = torch.float64
TOL = 1e-12


@pytest.fixture(scope="module")
def problem():
    space = exact.SequenceSpace(3, 3)
    theta = exact.random_tabular(space, scale=0.7, seed=1)
    ref = exact.random_tabular(space, scale=0.7, seed=2)
    return space, theta, ref


def _rel(g, t):
    return float((exact.flatten(g) - exact.flatten(t)).norm() / exact.flatten(t).norm())


def _target(space, theta, ref, name="sequence reverse KL"):
    return exact.objective_gradient(space, theta, ref, name)


# --- chapter 5 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["k1 in reward, reward-to-go", "k1 in reward, sequence", "k2 as loss, sequence"]
)
@pytest.mark.parametrize("shape", [(3, 3), (2, 4)])
def test_sequence_exact_implementations_give_the_sequence_reverse_kl_gradient(name, shape):
    space = exact.SequenceSpace(*shape)
    theta = exact.random_tabular(space, scale=0.8, seed=3)
    ref = exact.random_tabular(space, scale=0.8, seed=4)
    g = S.expected_gradient(space, S.IMPLEMENTATIONS[name], theta, ref)
    assert _rel(g, _target(space, theta, ref)) < TOL


@pytest.mark.parametrize(
    "name,objective",
    [
        ("k2 as loss, per token", "per-token reverse KL"),
        ("k1 in reward, own token", "per-token reverse KL"),
        ("k3 as loss, per token", "per-token forward KL"),
        ("k3 as loss, sequence", "sequence forward KL"),
    ],
)
def test_other_implementations_follow_another_objective_exactly(problem, name, objective):
    space, theta, ref = problem
    g = S.expected_gradient(space, S.IMPLEMENTATIONS[name], theta, ref)
    assert _rel(g, _target(space, theta, ref, objective)) < TOL
    assert _rel(g, _target(space, theta, ref)) > 1e-2  # and not the sequence reverse KL


def test_per_token_k1_as_loss_has_zero_expected_gradient(problem):
    space, theta, ref = problem
    g = S.expected_gradient(space, S.IMPLEMENTATIONS["k1 as loss, per token"], theta, ref)
    assert float(g.abs().max()) < 1e-15


def test_grpo_seq_mean_is_the_per_token_sum_divided_by_the_length(problem):
    space, theta, ref = problem
    a = S.expected_gradient(
        space, S.IMPLEMENTATIONS["k3 as loss, per token, seq-mean (GRPO)"], theta, ref
    )
    b = S.expected_gradient(space, S.IMPLEMENTATIONS["k3 as loss, per token"], theta, ref)
    assert _rel(a, b / space.length) < TOL


def test_sequence_gradient_is_the_partial_gradient_plus_the_future_term(problem):
    space, theta, ref = problem
    partial = _target(space, theta, ref, "per-token reverse KL")
    future = S.expected_gradient(space, S.future_surrogate, theta, ref)
    assert _rel(partial + future, _target(space, theta, ref)) < TOL
    assert float(future.norm()) > 1e-3


def test_future_surrogate_is_rtg_minus_own_token_per_sample():
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(4, 3, dtype=DT, generator=g)
    ref = -torch.rand(4, 3, dtype=DT, generator=g)
    mask = torch.ones(4, 3, dtype=DT)
    rtg = S.implementation_surrogate(S.IMPLEMENTATIONS["k1 in reward, reward-to-go"])
    own = S.implementation_surrogate(S.IMPLEMENTATIONS["k1 in reward, own token"])
    torch.testing.assert_close(
        S.future_surrogate(logp, ref, logp, mask),
        rtg(logp, ref, logp, mask) - own(logp, ref, logp, mask),
    )


def test_per_token_error_vanishes_at_the_last_position(problem):
    space, theta, ref = problem
    g = S.expected_gradient(space, S.IMPLEMENTATIONS["k2 as loss, per token"], theta, ref)
    frame = S.position_errors(space, g, _target(space, theta, ref))
    assert list(frame["position"]) == [1, 2, 3]
    assert frame["error"].iloc[-1] < 1e-15 * frame["target_norm"].sum()
    assert frame["error"].iloc[0] > 1e-3


def test_prefix_lengths_counts_v_to_the_t_prefixes_of_length_t():
    space = exact.SequenceSpace(3, 4)
    lengths = S.prefix_lengths(space)
    assert lengths.shape == (space.num_prefixes,)
    assert [int((lengths == t).sum()) for t in range(4)] == [1, 3, 9, 27]
    # consistent with the space's own prefix index: position t uses prefixes of length t
    assert bool((lengths[space.prefix] == torch.arange(4)).all())


def test_compare_on_known_vectors():
    t = torch.tensor([1.0, 0.0], dtype=DT)
    c = S.compare(torch.tensor([2.0, 0.0], dtype=DT), t)
    assert c == pytest.approx({"rel_error": 1.0, "cosine": 1.0, "scale": 2.0})
    c = S.compare(torch.tensor([0.0, 3.0], dtype=DT), t)
    assert c["cosine"] == pytest.approx(0.0) and c["scale"] == pytest.approx(0.0)
    assert S.compare(torch.zeros(2, dtype=DT), t)["cosine"] == 0.0
    with pytest.raises(ValueError, match="target gradient is zero"):
        S.compare(t, torch.zeros(2, dtype=DT))


def test_gradient_table_rows_and_exact_matches(problem):
    space, theta, ref = problem
    frame = S.gradient_table(space, theta, ref)
    assert list(frame["implementation"]) == list(S.IMPLEMENTATIONS)
    exact_rows = frame[frame["sequence reverse KL"] < TOL]["implementation"].tolist()
    assert exact_rows == [
        "k1 in reward, reward-to-go",
        "k1 in reward, sequence",
        "k2 as loss, sequence",
    ]


def test_bias_sweep_errors_shrink_towards_the_reference(problem):
    space, _, ref = problem
    impls = {k: S.IMPLEMENTATIONS[k] for k in ("k2 as loss, per token", "k2 as loss, sequence")}
    frame = S.bias_sweep(space, ref, [0.01, 0.1, 0.5], impls)
    assert set(frame.columns) >= {"distance", "kl", "implementation", "rel_error", "cosine"}
    assert frame.groupby("distance")["kl"].first().is_monotonic_increasing
    tok = frame[frame["implementation"] == "k2 as loss, per token"]["rel_error"].to_numpy()
    assert tok[0] < tok[1] < tok[2]
    assert float(frame[frame["implementation"] == "k2 as loss, sequence"]["rel_error"].max()) < TOL
    with pytest.raises(ValueError, match="distances must be positive"):
        S.bias_sweep(space, ref, [0.0], impls)


def test_token_kl_under_own_prefixes_is_exact_token_kl(problem):
    space, theta, ref = problem
    for direction in exact.DIRECTIONS:
        a = S.token_kl_under(space, theta, ref, theta, direction)
        b = exact.token_kl(space, theta, ref, direction)
        assert float(a) == pytest.approx(float(b), rel=1e-13)
    with pytest.raises(ValueError, match="allowed: reverse, forward"):
        S.token_kl_under(space, theta, ref, theta, "sideways")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(label="k4 as loss"), "allowed: k1 in reward"),
        (dict(label="k2 as loss", level="tokens"), "allowed: token, token-rtg, sequence"),
        (dict(label="k2 as loss", per_sequence="median"), "allowed: sum, mean"),
        (dict(label="k2 as loss", level="token-rtg"), "in reward"),
    ],
)
def test_implementation_rejects_bad_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        S.Implementation(**kwargs)


# --- chapter 6 ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def off_problem(problem):
    space, theta, ref = problem
    old = exact.perturb(theta, 0.4, seed=7)
    return space, theta, ref, old


def _on(space, impl, theta, ref):
    return S.expected_gradient(space, impl, theta, ref)


def _off(space, f, theta, ref, old):
    return exact.expected_gradient(space, f, theta, ref, behaviour=old)


@pytest.mark.parametrize("label", ["k1 in reward", "k2 as loss", "k3 as loss", "k2 in reward"])
def test_sequence_ratio_correction_recovers_the_on_policy_gradient_exactly(off_problem, label):
    space, theta, ref, old = off_problem
    f = S.off_policy_surrogate(S.OffPolicyVariant(label, "ratio", "sequence"))
    target = _on(space, S.Implementation(label, "sequence"), theta, ref)
    assert _rel(_off(space, f, theta, ref, old), target) < TOL


@pytest.mark.parametrize("label", ["k2 as loss", "k3 as loss"])
def test_without_the_ratio_as_loss_terms_are_biased(off_problem, label):
    space, theta, ref, old = off_problem
    f = S.off_policy_surrogate(S.OffPolicyVariant(label, "none", "sequence"))
    target = _on(space, S.Implementation(label, "sequence"), theta, ref)
    got = _off(space, f, theta, ref, old)
    assert _rel(got, target) > 1e-2
    # and the bias is exactly sum_y (pi_old - pi_theta) c grad log pi (the naive formula)
    naive = exact.expected_gradient(
        space,
        S.implementation_surrogate(S.Implementation(label, "sequence")),
        theta,
        ref,
        behaviour=old,
    )
    assert _rel(got, naive) < TOL


def test_stale_k1_coefficient_with_ratio_is_rkl_minus_kl_to_old(off_problem):
    space, theta, ref, old = off_problem
    f = S.off_policy_surrogate(S.OffPolicyVariant("k1 in reward", "stale-ratio", "sequence"))
    got = _off(space, f, theta, ref, old)
    expected = _target(space, theta, ref) - exact.objective_gradient(
        space, theta, old, "sequence reverse KL"
    )
    assert _rel(got, expected) < TOL
    assert _rel(got, _target(space, theta, ref)) > 1e-2


def test_clipped_head_equals_the_unclipped_gradient_without_the_clipped_samples(off_problem):
    space, theta, ref, old = off_problem
    for eps in (0.1, 0.2):
        f = S.off_policy_surrogate(
            S.OffPolicyVariant("k2 as loss", "ratio", "sequence", clip_eps=eps)
        )
        ref_f = S.clipped_surrogate_reference("k2 as loss", eps)
        a, b = _off(space, f, theta, ref, old), _off(space, ref_f, theta, ref, old)
        assert _rel(a, b) < TOL
        unclipped = _on(space, S.Implementation("k2 as loss", "sequence"), theta, ref)
        assert _rel(a, unclipped) > 1e-3  # the ratio spread at this distance does trigger the clip


def test_per_token_ratio_gives_the_partial_gradient_with_old_prefix_weights(off_problem):
    space, theta, ref, old = off_problem
    f = S.off_policy_surrogate(S.OffPolicyVariant("k2 as loss", "ratio", "token"))
    got = _off(space, f, theta, ref, old)
    leaf = theta.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(S.token_kl_under(space, leaf, ref, old), leaf)
    assert _rel(got, expected) < TOL
    assert _rel(got, _target(space, theta, ref, "per-token reverse KL")) > 1e-3


def test_on_policy_every_variant_reduces_to_its_implementation(problem):
    space, theta, ref = problem
    for label in ("k1 in reward", "k2 as loss", "k3 as loss"):
        for correction in ("none", "ratio", "stale-ratio"):
            for level in ("sequence", "token"):
                f = S.off_policy_surrogate(S.OffPolicyVariant(label, correction, level, beta=0.5))
                target = 0.5 * _on(space, S.Implementation(label, level), theta, ref)
                assert _rel(exact.expected_gradient(space, f, theta, ref), target) < TOL, (
                    label,
                    correction,
                    level,
                )
    f = S.off_policy_surrogate(
        S.OffPolicyVariant("k1 in reward", "stale-ratio", "token-rtg", clip_eps=0.2)
    )
    assert _rel(exact.expected_gradient(space, f, theta, ref), _target(space, theta, ref)) < TOL


def test_reward_and_combined_heads_are_unbiased_unclipped(off_problem):
    space, theta, ref, old = off_problem
    g = torch.Generator().manual_seed(5)
    r = torch.rand(space.num_sequences, dtype=DT, generator=g)
    on_reward = exact.expected_gradient(space, S.reward_surrogate(r), theta, ref)
    assert _rel(_off(space, S.reward_surrogate(r, ratio=True), theta, ref, old), on_reward) < TOL
    beta = 0.3
    target = on_reward + beta * _target(space, theta, ref)
    assert (
        _rel(_off(space, S.combined_surrogate("k2 as loss", r, beta=beta), theta, ref, old), target)
        < TOL
    )
    clipped = _off(
        space, S.combined_surrogate("k2 as loss", r, beta=beta, clip_eps=0.2), theta, ref, old
    )
    assert _rel(clipped, target) > 1e-3
    with pytest.raises(ValueError, match="clip_eps needs ratio=True"):
        S.reward_surrogate(r, clip_eps=0.2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(label="k2 as loss", correction="is"), "allowed: none, ratio, stale-ratio"),
        (dict(label="k2 as loss", level="batch"), "allowed: sequence, token, token-rtg"),
        (dict(label="k2 as loss", correction="none", clip_eps=0.2), "needs a ratio"),
        (dict(label="k2 as loss", clip_eps=1.5), r"clip_eps must be in \(0, 1\)"),
        (dict(label="k3 as loss", correction="none", level="token-rtg"), "in reward"),
        (dict(label="k2", correction="ratio"), "allowed: k1 in reward"),
    ],
)
def test_off_policy_variant_rejects_bad_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        S.OffPolicyVariant(**kwargs)


def test_surrogate_builders_reject_wrong_types():
    with pytest.raises(TypeError, match="Implementation"):
        S.implementation_surrogate("k2 as loss")
    with pytest.raises(TypeError, match="OffPolicyVariant"):
        S.off_policy_surrogate("k2 as loss")


def test_simulate_updates_bias_is_zero_on_policy_exact_when_corrected_and_grows_otherwise(problem):
    space, old, ref = problem
    r = torch.rand(space.num_sequences, dtype=DT, generator=torch.Generator().manual_seed(9))
    variants = {
        "naive": S.OffPolicyVariant("k2 as loss", "none"),
        "corrected": S.OffPolicyVariant("k2 as loss", "ratio"),
        "clipped": S.OffPolicyVariant("k2 as loss", "ratio", clip_eps=0.1),
    }
    frame, thetas = S.simulate_updates(
        space, old, ref, r, variants, updates=4, lr=3.0, beta=0.1, clip_eps=0.1
    )
    assert len(thetas) == 5 and len(frame) == 5 * 3
    assert torch.equal(thetas[0], old)
    assert float(frame[frame["update"] == 0]["rel_error"].max()) == 0.0
    assert float(frame[frame["variant"] == "corrected"]["rel_error"].max()) < TOL
    naive = frame[frame["variant"] == "naive"]["rel_error"].to_numpy()
    assert all(a < b for a, b in zip(naive, naive[1:]))
    kl = frame.groupby("update")["kl_to_old"].first().to_numpy()
    assert all(a < b for a, b in zip(kl, kl[1:]))
    clipped = frame[frame["variant"] == "clipped"]
    assert float(clipped[clipped["clipped_mass"] == 0]["rel_error"].max()) < TOL
    assert float(clipped["rel_error"].max()) > 1e-3
    # Exact iff no sample is actively clipped (on the side the head pushes); active <= outside the range.
    active = clipped["active_clipped_mass"].to_numpy()
    assert ((clipped["rel_error"].to_numpy() < TOL) == (active == 0)).all()
    assert (active <= clipped["clipped_mass"].to_numpy() + 1e-15).all()
    assert (frame[frame["variant"] != "clipped"]["active_clipped_mass"] == 0).all()
    with pytest.raises(ValueError, match="updates must be a non-negative integer"):
        S.simulate_updates(space, old, ref, r, variants, updates=-1, lr=1.0)
    with pytest.raises(ValueError, match="lr must be positive"):
        S.simulate_updates(space, old, ref, r, variants, updates=1, lr=0.0)
    with pytest.raises(ValueError, match=r"reward must have shape \(27,\)"):
        S.simulate_updates(space, old, ref, r[:5], variants, updates=1, lr=1.0)


def test_active_clip_mass_counts_only_the_side_the_head_pushes():
    # Two sequences; pi_theta moved both ratios outside [0.8, 1.2]: y=0 up (rho 1.5), y=1 down.
    lp_old = torch.log(torch.tensor([[0.5], [0.5]], dtype=DT))
    lp = torch.log(torch.tensor([[0.75], [0.25]], dtype=DT))
    lr = torch.log(torch.tensor([[0.5], [0.5]], dtype=DT))
    w = torch.tensor([0.5, 0.5], dtype=DT)
    head = S.OffPolicyVariant("k2 as loss", "ratio", clip_eps=0.2)
    # c = u: y=0 has u > 0 (A < 0, head pushes down; rho > 1+eps is not the clipped side), y=1 has u < 0
    # (A > 0, head pushes up; rho < 1-eps is not the clipped side either): nothing actively clipped.
    assert S.active_clip_mass(head, lp, lr, lp_old, w) == 0.0
    lr_far = torch.log(
        torch.tensor([[0.9], [0.1]], dtype=DT)
    )  # now u < 0 on y=0 and u > 0 on y=1: both clipped
    assert S.active_clip_mass(head, lp, lr_far, lp_old, w) == pytest.approx(1.0)
    assert (
        S.active_clip_mass(S.OffPolicyVariant("k2 as loss", "ratio"), lp, lr_far, lp_old, w) == 0.0
    )


def test_clip_active_regions():
    rho = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.0], dtype=DT)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0], dtype=DT)
    assert S.clip_active(rho, adv, 0.2).tolist() == [True, False, False, True, False]


# --- fixed points and training (chapter 5) -------------------------------------------------------


def test_tabular_logits_round_trips_a_policy(problem):
    space, theta, _ = problem
    back = S.tabular_logits(space, exact.sequence_probs(space, theta))
    torch.testing.assert_close(
        torch.log_softmax(back, -1), torch.log_softmax(theta, -1), rtol=0, atol=1e-13
    )
    with pytest.raises(ValueError, match=r"probs must have shape \(27,\)"):
        S.tabular_logits(space, torch.ones(5, dtype=DT))
    with pytest.raises(ValueError, match="positive"):
        S.tabular_logits(space, torch.zeros(27, dtype=DT))


def test_optimum_is_a_fixed_point_of_sequence_exact_updates_only(problem):
    space, _, ref = problem
    r = (space.seqs == 0).double().mean(-1)
    beta = 0.3
    star = S.optimal_logits(space, ref, r, beta)
    p = exact.sequence_probs(space, star)
    expected = torch.softmax(exact.sequence_logp(space, ref) + r / beta, 0)
    torch.testing.assert_close(p, expected, rtol=1e-12, atol=0)
    g_r = exact.expected_gradient(space, S.reward_surrogate(r), star, ref)
    for name, impl in S.IMPLEMENTATIONS.items():
        residual = float(
            (g_r + beta * S.expected_gradient(space, impl, star, ref)).norm() / g_r.norm()
        )
        if name in ("k1 in reward, reward-to-go", "k1 in reward, sequence", "k2 as loss, sequence"):
            assert residual < TOL, name
        else:
            assert residual > 0.05, name
    with pytest.raises(ValueError, match="beta must be positive"):
        S.optimal_logits(space, ref, r, 0.0)


def test_train_exact_converges_to_the_optimum_with_reward_to_go_only(problem):
    space, _, ref = problem
    r = (space.seqs == 0).double().mean(-1)
    impls = {
        k: S.IMPLEMENTATIONS[k] for k in ("k1 in reward, reward-to-go", "k2 as loss, per token")
    }
    frame = S.train_exact(space, ref, ref, r, impls, beta=0.3, steps=150, lr=4.0, every=50)
    assert list(frame.columns) == ["step", "implementation", "reward", "kl", "objective", "gap"]
    assert sorted(set(frame["step"])) == [0, 50, 100, 150]
    assert (frame["gap"] >= -1e-12).all()
    exact_gap = frame[frame["implementation"] == "k1 in reward, reward-to-go"]["gap"].to_numpy()
    tok_gap = frame[frame["implementation"] == "k2 as loss, per token"]["gap"].to_numpy()
    assert (exact_gap[1:] < exact_gap[:-1]).all() and exact_gap[-1] < 5e-4
    assert tok_gap[-1] > 3 * exact_gap[-1]
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        S.train_exact(space, ref, ref, r, impls, beta=0.3, steps=0, lr=1.0)
    with pytest.raises(ValueError, match="beta and lr must be positive"):
        S.train_exact(space, ref, ref, r, impls, beta=-1.0, steps=1, lr=1.0)
    with pytest.raises(ValueError, match=r"reward must have shape"):
        S.train_exact(space, ref, ref, r[:3], impls, beta=0.3, steps=1, lr=1.0)


def test_display_name_sets_estimators_and_symbols_in_math():
    from klnotes.plotting import display_name

    assert display_name("k2 as loss x ratio, eps") == "$k_2$ as loss \u00d7 ratio, $\\epsilon$"
    assert display_name("k1 in reward -> k3") == "$k_1$ in reward \u2192 $k_3$"
    assert display_name("kl2") == "kl2"


def test_implementation_styles_use_house_colours_and_never_repeat_a_colour_and_dash():
    from klnotes import plotting
    from klnotes.plotting import implementation_styles as line_styles

    names = [
        "k2 as loss, sequence",
        "k2 as loss, per token",
        "k3 as loss, GRPO seq-mean",
        "something else",
        "k2 as loss, per token, again",
    ]
    styles = line_styles(names)
    assert styles[names[0]] == (plotting.PALETTE["k2 as loss"], "-")
    assert styles[names[1]] == (plotting.PALETTE["k2 as loss"], "--")
    assert styles[names[2]][0] == plotting.PALETTE["k3 as loss"] and styles[names[2]][1] not in (
        "-",
        "--",
    )
    assert styles[names[3]][0] not in plotting.PALETTE.values()
    assert len(set(styles.values())) == len(names)
