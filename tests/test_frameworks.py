"""klnotes.frameworks: the audit of verl, OpenRLHF and TRL KL options is computed, and TRL's
recorded formula is TRL's own code (value and autograd gradient)."""

import re

import pytest
import torch

from klnotes import frameworks as F

# --- errors ---------------------------------------------------------------------------------


def test_unknown_framework_lists_the_known_ones():
    with pytest.raises(
        ValueError, match=r"unknown framework 'deepspeed-chat'; known: verl, openrlhf, trl, klnotes"
    ):
        F.audit("deepspeed-chat")


def test_unknown_flag_lists_the_known_flags():
    with pytest.raises(ValueError, match=r"unknown flag\(s\) \['kl_coef'\]; known: .*use_kl_loss"):
        F.audit("verl", kl_coef=0.1)


@pytest.mark.parametrize(
    "framework, flags, allowed",
    [
        ("verl", dict(use_kl_loss=True, kl_loss_type="k4"), "'low_var_kl'"),
        ("openrlhf", dict(kl_estimator="k5"), "'k1', 'k2', 'k3'"),
        ("trl", dict(loss_type="ppo"), "'dapo'"),
        ("klnotes", dict(kl="k3_as_loss"), "'k1_in_reward', 'k2_as_loss'"),
    ],
)
def test_unknown_flag_value_lists_the_allowed_values(framework, flags, allowed):
    with pytest.raises(ValueError, match=re.escape(allowed)):
        F.audit(framework, **flags)


@pytest.mark.parametrize(
    "flags", [dict(beta=-1.0), dict(num_iterations=0), dict(use_bias_correction_kl="yes")]
)
def test_bad_trl_numbers_are_rejected(flags):
    with pytest.raises(ValueError, match="trl"):
        F.audit("trl", **flags)


# --- formulas recorded from the frameworks' code ---------------------------------------------


def test_replicated_formulas_are_k1_k2_k3_inside_the_clamps():
    from klnotes.core import estimators

    u = torch.linspace(-2.0, 2.0, 41, dtype=torch.float64)
    ref = torch.zeros_like(u)
    for name, verl_kind in (("k1", "kl"), ("k2", "mse"), ("k3", "low_var_kl")):
        expected = estimators.get(name)(u, ref)
        torch.testing.assert_close(
            F.verl_kl_penalty(u, ref, verl_kind), expected, rtol=1e-12, atol=1e-12
        )
        torch.testing.assert_close(
            F.openrlhf_compute_approx_kl(u, ref, name), expected, rtol=1e-12, atol=1e-12
        )
    torch.testing.assert_close(
        F.trl_per_token_kl(u, ref), estimators.k3(u, ref), rtol=1e-12, atol=1e-12
    )


def test_verl_straight_through_keeps_the_value_and_takes_k2s_gradient():
    u = torch.linspace(-1.5, 1.5, 7, dtype=torch.float64, requires_grad=True)
    ref = torch.zeros_like(u)
    value = F.verl_kl_penalty(u, ref, "k3+")
    torch.testing.assert_close(value, F.verl_kl_penalty_forward(u, ref, "k3"))
    (g,) = torch.autograd.grad(value.sum(), u)
    torch.testing.assert_close(g, u.detach())


def test_verl_full_is_not_implemented_in_verl_and_in_the_audit():
    with pytest.raises(NotImplementedError):
        F.verl_kl_penalty(torch.zeros(2), torch.zeros(2), "full")
    assert (
        F.audit("verl", use_kl_loss=True, kl_loss_type="full").on_policy
        == "not implemented (raises)"
    )


def test_every_source_names_a_full_commit_or_a_version():
    for framework, sources in F.SOURCES.items():
        for s in sources:
            if s.repo.startswith("pypi:"):
                assert re.fullmatch(r"\d+\.\d+\.\d+", s.ref), s
            elif framework != "klnotes":
                assert re.fullmatch(r"[0-9a-f]{40}", s.ref), s
                assert s.url.endswith(s.path)


# --- computed coefficients and objectives ------------------------------------------------------

EXPECTED = [
    # framework, flags, coefficient, on-policy objective, off-policy verdict starts with
    ("verl", dict(), "0", "nothing", "-"),
    (
        "verl",
        dict(use_kl_in_reward=True, kl_penalty="kl"),
        "u",
        "sequence reverse KL",
        "biased: KL value frozen",
    ),
    # GRPO's per-group std makes the in-reward KL no constant multiple of any objective (grouped.py)
    (
        "verl",
        dict(use_kl_in_reward=True, kl_penalty="kl", adv_estimator="grpo"),
        "u",
        "none of these",
        "biased: KL",
    ),
    (
        "verl",
        dict(use_kl_in_reward=True, adv_estimator="grpo", norm_adv_by_std_in_grpo=False),
        "u",
        "sequence reverse KL",
        "biased: KL",
    ),
    (
        "verl",
        dict(use_kl_in_reward=True, adv_estimator="rloo"),
        "u",
        "sequence reverse KL",
        "biased: KL",
    ),
    ("verl", dict(use_kl_in_reward=True, adv_estimator="gdpo"), "u", "nothing", "biased: KL"),
    (
        "verl",
        dict(use_kl_in_reward=True, kl_penalty="low_var_kl"),
        "e^{-u} - 1 + u",
        "none of these",
        "biased: KL",
    ),
    (
        "verl",
        dict(use_kl_loss=True),
        "1 - e^{-u}",
        "per-token forward KL",
        "biased: no importance ratio",
    ),
    (
        "verl",
        dict(use_kl_loss=True, kl_loss_type="mse"),
        "u",
        "per-token reverse KL",
        "biased: no importance",
    ),
    (
        "verl",
        dict(use_kl_loss=True, kl_loss_type="low_var_kl+"),
        "u",
        "per-token reverse KL",
        "biased",
    ),
    ("verl", dict(use_kl_loss=True, kl_loss_type="kl"), "1", "nothing", "biased"),
    ("verl", dict(use_kl_loss=True, kl_loss_type="abs"), "sign(u)", "none of these", "biased"),
    ("openrlhf", dict(), "u", "sequence reverse KL", "biased: KL value frozen at pi_old"),
    (
        "openrlhf",
        dict(kl_estimator="k2", advantage_estimator="rloo"),
        "u^2/2",
        "none of these",
        "biased: KL",
    ),
    ("openrlhf", dict(use_kl_loss=True, kl_estimator="k2"), "u", "per-token reverse KL", "biased"),
    (
        "openrlhf",
        dict(use_kl_loss=True, kl_estimator="k3"),
        "1 - e^{-u}",
        "per-token forward KL",
        "biased",
    ),
    ("openrlhf", dict(init_kl_coef=0.0), "0", "nothing", "-"),
    ("trl", dict(), "0", "nothing", "-"),
    (
        "trl",
        dict(beta=0.04),
        "u",
        "per-token reverse KL",
        "unbiased per token given the prefix; biased over sequences",
    ),
    (
        "trl",
        dict(beta=0.04, use_bias_correction_kl=False),
        "1 - e^{-u}",
        "per-token forward KL",
        "biased",
    ),
    (
        "klnotes",
        dict(),
        "u",
        "sequence reverse KL",
        "biased: per-token ratios; prefixes and future tokens",
    ),
    ("klnotes", dict(kl="k2_as_loss"), "u", "sequence reverse KL", "biased: per-token ratios"),
    (
        "klnotes",
        dict(level="token"),
        "u",
        "per-token reverse KL",
        "unbiased per token given the prefix",
    ),
]


@pytest.mark.parametrize("framework, flags, coefficient, objective, offpolicy", EXPECTED)
def test_audit_computes_coefficient_objective_and_off_policy_behaviour(
    framework, flags, coefficient, objective, offpolicy
):
    a = F.audit(framework, **flags)
    assert a.coefficient == coefficient
    assert a.on_policy == objective
    assert a.off_policy.startswith(offpolicy)
    if objective in F.OBJECTIVES[:4]:
        assert a.on_policy_residual <= 1e-9 and a.on_policy_scale > 0


def test_coefficient_is_from_surrogate_of_the_recorded_loss():
    from klnotes.core.coefficients import closed_form

    u = torch.linspace(-2, 2, 9, dtype=torch.float64)
    c = F.coefficient(F.option("openrlhf", use_kl_loss=True, kl_estimator="k3"), u)
    torch.testing.assert_close(c, closed_form("k3", "as_loss", u), rtol=1e-12, atol=1e-12)


def test_the_enumeration_targets_are_distinct_so_the_classification_means_something():
    _, _, _, targets = F.sequence_problem()
    names = list(targets)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            ga, gb = targets[a], targets[b]
            scale = float((ga * gb).sum() / (gb * gb).sum())
            assert float((ga - scale * gb).norm() / ga.norm()) > 1e-2, (a, b)


def test_clamps_zero_the_coefficient_of_k2_and_k3_as_loss_far_from_the_reference():
    a2 = F.audit("openrlhf", use_kl_loss=True, kl_estimator="k2")
    assert a2.clamp_effect == "c = 0 for u < -4.48; c = 0 for u > 4.48"  # u^2/2 > 10
    a3 = F.audit("verl", use_kl_loss=True, kl_loss_type="low_var_kl")
    assert a3.clamp_effect == "c = 0 for u < -2.62; c = 0 for u > 11.00"  # k3 > 10
    assert (
        F.audit("trl", beta=0.1, use_bias_correction_kl=False).clamp_effect == "none on |u| <= 25"
    )


def test_stale_kl_reward_bias_is_minus_the_gradient_of_kl_to_pi_old():
    """k1 in reward computed at rollout: E_old[rho u_old grad log pi] = grad RKL - grad KL(pi_theta || pi_old)."""
    pol, theta, ref, old = F.single_step_problem()
    off = F.expected_gradient(F.option("openrlhf"), pol, theta, ref, behaviour=old)

    def kl_grad(q):
        th = theta.clone().requires_grad_(True)
        lp, lq = torch.log_softmax(th, -1), torch.log_softmax(q, -1)
        (g,) = torch.autograd.grad((lp.exp() * (lp - lq)).sum(), th)
        return g

    torch.testing.assert_close(off, kl_grad(ref) - kl_grad(old), rtol=1e-10, atol=1e-12)


def test_off_policy_verdicts_are_computed_at_sequence_level():
    """Pinned: on the length-3 problem (pi_old = theta + 0.03 z) per-token ratios correct the token given
    its prefix, not the prefix; only a sequence-level ratio is unbiased over sequences."""
    trl = F.option("trl", beta=0.04)
    plugin = F.option("klnotes", clip=False)
    # One token, no prefix: both corrected heads are exact (the old single-step verdict) ...
    assert F.off_policy_error(trl, problem="single step") <= 1e-12
    assert F.off_policy_error(plugin, problem="single step") <= 1e-12
    # ... over sequences neither is: TRL's k3 x ratio is unbiased per token given the prefix only,
    assert F.off_policy_prefix_error(trl) <= 1e-12
    assert 1e-3 < F.off_policy_error(trl) < 0.05
    assert F.off_policy_bias(trl)[0] == "unbiased per token given the prefix; biased over sequences"
    # the plug-in's reward-to-go also draws the future tokens from pi_old.
    assert F.off_policy_prefix_error(plugin) > 1e-3 and F.off_policy_error(plugin) > 1e-3
    assert (
        F.off_policy_bias(plugin)[0]
        == "biased: per-token ratios; prefixes and future tokens from pi_old"
    )
    # First order in the step: 10x the step, about 10x the error.
    for opt in (trl, plugin, F.option("openrlhf"), F.option("verl", use_kl_loss=True)):
        growth = F.off_policy_error(opt, 0.3) / F.off_policy_error(opt, 0.03)
        assert 5 < growth < 20, growth
    # No audited option is unbiased over sequences; every one is, with the detached sequence ratio,
    # and keeps its on-policy objective.
    verdicts = set(F.table()["off-policy"])
    assert "unbiased" not in verdicts
    for opt in (trl, plugin, F.option("openrlhf"), F.option("verl", use_kl_loss=True)):
        fixed = F.with_sequence_ratio(opt)
        assert F.off_policy_bias(fixed)[0] == "unbiased" and F.off_policy_error(fixed) <= 1e-12
        assert F.classify_objective(fixed)[0] == F.classify_objective(opt)[0]


def test_prefix_probs_sum_to_one_per_length():
    pol, theta, _, _ = F.sequence_problem()
    p = F.exact.prefix_probs(pol, theta)
    assert float(p[0]) == pytest.approx(1.0, abs=1e-15)
    assert float(p[1:4].sum()) == pytest.approx(1.0, abs=1e-14) and float(
        p[4:].sum()
    ) == pytest.approx(1.0, abs=1e-14)


def test_table_lists_every_option_with_the_computed_columns():
    t = F.table()
    assert len(t) == sum(len(fw.space) for fw in F.FRAMEWORKS.values())
    for column in (
        "framework",
        "flags",
        "coefficient c(u)",
        "on-policy objective",
        "off-policy",
        "ratio on KL",
    ):
        assert column in t.columns
    assert t["default"].sum() == 4  # one default per framework


def test_principled_options_are_the_sequence_reverse_kl_ones():
    found = {(a.option.framework, a.option.flag_string()) for a in F.principled_options()}
    assert ("openrlhf", F.option("openrlhf").flag_string()) in found
    # TRL's GRPOTrainer has none (hence the plug-in); its RLOO and PPO trainers put k1 in the reward
    trl = {flags for fw, flags in found if fw == "trl"}
    assert trl == {
        F.option("trl", trainer="rloo", beta=0.05).flag_string(),
        F.option("trl", trainer="ppo", beta=0.05, lam=1.0).flag_string(),
    }
    assert ("klnotes", F.option("klnotes").flag_string()) in found


# --- parity with TRL's own code -----------------------------------------------------------


@pytest.fixture(scope="module")
def trl_trainer(tmp_path_factory):
    pytest.importorskip("trl")
    from klnotes.trl_plugin import tiny_trainer

    tr = tiny_trainer(tmp_path_factory.mktemp("trl"), plugin=False, beta=0.3)
    tr.model.train()
    if not hasattr(tr, "current_gradient_accumulation_steps"):
        tr.current_gradient_accumulation_steps = 1
    return tr


@pytest.mark.parametrize("bias_correction", [True, False])
@pytest.mark.parametrize("off_policy", [False, True])
def test_trl_kl_formula_matches_trl_value_and_gradient(trl_trainer, bias_correction, off_policy):
    from klnotes.trl_plugin import completion_logps, synthetic_batch

    tr, model = trl_trainer, trl_trainer.model
    tr.args.use_bias_correction_kl = bias_correction
    inputs = synthetic_batch(
        model, seed=int(bias_correction) + 2 * int(off_policy), off_policy=off_policy
    )
    params = [p for p in model.parameters() if p.requires_grad]

    loss = tr._compute_loss(model, inputs)  # TRL's own code; advantages = 0 leave only the KL term
    g_trl = torch.autograd.grad(loss, params, allow_unused=True)
    trl_kl_value = tr._metrics["train"]["kl"][-1]

    opt = F.option("trl", beta=tr.beta, use_bias_correction_kl=bias_correction)
    mask = inputs["completion_mask"].float()
    logp = completion_logps(
        model, inputs["prompt_ids"], inputs["completion_ids"], inputs["completion_mask"]
    )
    old = inputs.get("old_per_token_logps", logp.detach())
    per_token = opt.token_loss(logp, inputs["ref_per_token_logps"], old, mask)
    ours = tr.beta * per_token.sum() / mask.sum()  # loss_type "dapo"
    g_ours = torch.autograd.grad(ours, params, allow_unused=True)

    assert trl_kl_value == pytest.approx(float(per_token.detach().sum() / mask.sum()), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(float(ours.detach()), rel=1e-5, abs=1e-7)
    for a, b in zip(g_trl, g_ours):
        if a is None or b is None:
            assert a is None and b is None or float((a if a is not None else b).abs().max()) == 0
            continue
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# --- the audit is current (versions, flag spellings, numerics) --------------------------------


def test_sources_are_release_commits_and_the_audit_says_what_it_covers():
    assert set(F.COVERS) == set(F.SOURCES)
    for name in ("verl", "openrlhf"):
        assert any(s.what.startswith(("v0.9.0", "v0.11.0")) for s in F.SOURCES[name])
        assert "v0." in F.COVERS[name]
    assert not any("dp_actor.py" == s.path.rsplit("/", 1)[-1] for s in F.SOURCES["verl"])


def test_openrlhf_flags_use_the_current_spelling_with_the_old_one_as_alias():
    opt = F.option("openrlhf", use_kl_loss=True, kl_estimator="k3")
    assert [k for k, _ in opt.flags] == [
        "--algo.kl.init_coef",
        "--algo.kl.estimator",
        "--algo.kl.use_loss",
        "--algo.advantage.estimator",
    ]
    assert all(k in F.OPENRLHF_FLAG_ALIASES for k, _ in opt.flags)
    assert F.OPENRLHF_FLAG_ALIASES["--algo.kl.init_coef"] == "--init_kl_coef"
    assert "whole optimizer step" in opt.aggregation


def test_openrlhf_k3_as_loss_has_a_nan_gradient_below_minus_88_7_in_float32():
    u = torch.tensor([-88.6, -88.8, -5.0], dtype=torch.float32, requires_grad=True)
    F.openrlhf_compute_approx_kl(u, torch.zeros(3), "k3").sum().backward()
    assert u.grad[0] == 0 and torch.isnan(u.grad[1]) and u.grad[2] == 0
    assert "NaN" in F.option("openrlhf", use_kl_loss=True, kl_estimator="k3").notes


def test_audit_html_keeps_every_flag_in_full_and_every_row():
    import re

    frame = F.table()
    for fw in dict.fromkeys(frame["framework"]):
        page = F.audit_html(frame, fw)
        rows = frame[frame["framework"] == fw]
        assert page.count("<tr>") == len(rows) + 1  # a header and one row per option
        text = re.sub(r"<wbr>", "", page)
        for flags in rows["flags"]:
            for flag in flags.split(", "):
                assert flag.replace("'", "&#x27;") in text, flag  # full flag names, no ellipsis
        assert "\u2026" not in page
    with pytest.raises(ValueError, match="have: verl"):
        F.audit_html(frame, "deepspeed")


# --- one vocabulary: each option's KL term as a klnotes.core.variants.KLVariant ------------------


@pytest.mark.parametrize(
    "framework, flags, label",
    [
        ("verl", dict(use_kl_in_reward=True, adv_estimator="gae"), "k1 in reward (rtg) + stale IS"),
        (
            "verl",
            dict(use_kl_in_reward=True, adv_estimator="grpo"),
            "k1 in reward (seq) + stale IS",
        ),
        ("verl", dict(use_kl_loss=True), "k3 as loss"),
        (
            "verl",
            dict(use_kl_loss=True, kl_loss_type="low_var_kl+"),
            "k2 as loss",
        ),  # straight-through
        ("verl", dict(use_kl_loss=True, kl_loss_type="abs"), "-"),
        ("verl", dict(use_kl_in_reward=True, kl_penalty="mse", adv_estimator="grpo"), "-"),
        (
            "verl",
            dict(use_kl_in_reward=True, use_kl_loss=True, kl_loss_type="mse"),
            "k1 in reward (rtg) + stale IS + k2 as loss",
        ),
        ("openrlhf", dict(), "k1 in reward (rtg) + stale IS"),
        ("openrlhf", dict(use_kl_loss=True, kl_estimator="k2"), "k2 as loss"),
        ("trl", dict(beta=0.04), "-"),  # k3 times a differentiated ratio: no KLVariant
        ("trl", dict(beta=0.04, use_bias_correction_kl=False), "k3 as loss"),
        ("trl", dict(trainer="rloo", beta=0.05), "k1 in reward (seq) + stale IS"),
        ("trl", dict(trainer="ppo", beta=0.05, lam=0.95), "-"),  # GAE with lam < 1
        ("klnotes", dict(), "k1 in reward (rtg) + IS"),
        ("klnotes", dict(kl="k2_as_loss"), "k2 as loss (seq) + IS"),
        ("trl", dict(), "-"),  # beta = 0: no KL term
    ],
)
def test_each_option_names_its_kl_term_with_the_one_vocabulary(framework, flags, label):
    opt = F.option(framework, **flags)
    assert opt.label == label
    assert (opt.variant is None) == (label == "-" or " + k" in label)


def test_verl_estimator_names_go_through_variants_parse_estimator():
    assert [F.verl_estimator(k) for k in ("kl", "mse", "low_var_kl", "k3+", "abs", "full")] == [
        "k1",
        "k2",
        "k3",
        "k3",
        "abs",
        "full",
    ]
    with pytest.raises(ValueError, match=r"verl: KL type 'k4' is not known; allowed: .*low_var_kl"):
        F.verl_estimator("k4")


def _expected_coefficient(v, u, mask):
    """The per-token coefficient of ``v`` on-policy (chapter 3 and 5), ``[batch, time]``."""
    from klnotes.core.coefficients import closed_form
    from klnotes.core.surrogates import reward_to_go

    if v.level == "token":
        return closed_form(v.estimator, v.style, u)
    if v.level == "token-rtg":
        return reward_to_go(closed_form(v.estimator, "in_reward", u), mask)
    big_u = (u * mask).sum(-1, keepdim=True)
    return closed_form(v.estimator, v.style, big_u).expand_as(u)


@pytest.mark.parametrize("framework", ["verl", "openrlhf", "trl", "klnotes"])
def test_an_options_variant_has_the_gradient_of_its_token_loss_on_policy(framework):
    """d/d logp of the replicated per-token loss (summed) is the variant's coefficient at u."""
    gen = torch.Generator().manual_seed(0)
    ref = -1.0 - torch.rand(3, 4, generator=gen, dtype=torch.float64)
    logp = (ref + 0.4 * torch.randn(3, 4, generator=gen, dtype=torch.float64)).requires_grad_()
    mask = torch.ones(3, 4, dtype=torch.float64)
    checked = 0
    for flags in F.FRAMEWORKS[framework].space:
        opt = F.option(framework, **flags)
        if opt.variant is None:
            continue
        (grad,) = torch.autograd.grad(opt.token_loss(logp, ref, logp.detach(), mask).sum(), logp)
        want = _expected_coefficient(opt.variant, (logp - ref).detach(), mask)
        assert torch.allclose(grad, want, atol=1e-10), (framework, flags, opt.label)
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize(
    "framework, flags, estimator",
    [
        ("verl", dict(use_kl_loss=True, kl_loss_type="mse"), "k2"),
        ("verl", dict(use_kl_in_reward=True, kl_penalty="kl"), "k1"),
        ("verl", dict(use_kl_in_reward=True, use_kl_loss=True), "k3"),  # kl in reward + low_var_kl
        ("verl", dict(use_kl_loss=True, kl_loss_type="low_var_kl+"), "k3"),
        ("openrlhf", dict(kl_estimator="k2"), "k2"),  # not the advantage estimator's "gae"
        ("trl", dict(beta=0.04), "k3"),  # no estimator flag: TRL's GRPO KL is k3
    ],
)
def test_the_clamp_estimator_is_read_from_the_estimator_flags(framework, flags, estimator):
    from klnotes.frameworks.verdict import clamped_estimator

    assert clamped_estimator(F.option(framework, **flags)) == estimator


def test_the_sequence_ratio_option_names_no_variant():
    opt = F.option("verl", use_kl_loss=True)
    assert opt.label == "k3 as loss" and F.with_sequence_ratio(opt).variants == ()
