"""klnotes.trl_plugin: the principled KL term for TRL's GRPOTrainer, on a tiny GPT-2 on CPU."""

import subprocess
import sys

import pytest
import torch

from klnotes import trl_plugin as P

# --- the math, without TRL -------------------------------------------------------------------


def test_kl_coefficients_are_reward_to_go_sequence_sum_or_own_token():
    logp = torch.tensor([[0.5, -1.0, 2.0, 9.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    ref = torch.zeros_like(logp)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    rtg = P.kl_coefficients("k1_in_reward", logp, ref, mask)
    torch.testing.assert_close(
        rtg, torch.tensor([[1.5, 1.0, 2.0, 0.0], [4.0, 3.0, 2.0, 1.0]], dtype=torch.float64)
    )
    total = P.kl_coefficients("k2_as_loss", logp, ref, mask)
    torch.testing.assert_close(
        total, torch.tensor([[1.5, 1.5, 1.5, 0.0], [4.0] * 4], dtype=torch.float64)
    )
    own = P.kl_coefficients("k2_as_loss", logp, ref, mask, level="token")
    torch.testing.assert_close(own, logp * mask)
    assert not rtg.requires_grad


def test_k2_as_loss_coefficient_is_the_autograd_of_half_the_squared_sequence_log_ratio():
    from klnotes.core.estimators import k2

    logp = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    ref, mask = torch.randn(3, 4, dtype=torch.float64), torch.ones(3, 4)
    (g,) = torch.autograd.grad(k2((logp * mask).sum(-1), (ref * mask).sum(-1)).sum(), logp)
    torch.testing.assert_close(g, P.kl_coefficients("k2_as_loss", logp, ref, mask))


def test_kl_head_gradient_is_ratio_times_coefficient_and_zero_where_clipped():
    logp = torch.tensor([[0.3, -0.2, 0.1]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-0.5, 0.4, 0.0]], dtype=torch.float64)
    old = logp.detach() + torch.tensor(
        [[0.01, -0.5, 0.02]], dtype=torch.float64
    )  # token 1: ratio e^{0.5}
    mask = torch.ones(1, 3)
    c = P.kl_coefficients("k1_in_reward", logp, ref, mask)
    rho = torch.exp(logp.detach() - old)
    (g_open,) = torch.autograd.grad(
        P.principled_kl_token_loss("k1_in_reward", logp, ref, old, mask, clip=False).sum(), logp
    )
    torch.testing.assert_close(g_open, rho * c)
    (g_clip,) = torch.autograd.grad(
        P.principled_kl_token_loss("k1_in_reward", logp, ref, old, mask).sum(), logp
    )
    # token 1: c = u_1 + u_2 = -0.5, so A = 0.5 > 0 with ratio e^{0.5} > 1 + 0.2: PPO clips it, zero gradient;
    # tokens 0 and 2 have ratios within [0.8, 1.2] and keep rho * c.
    expected = rho * c
    expected[0, 1] = 0.0
    torch.testing.assert_close(g_clip, expected)


def test_unknown_kl_name_or_level_lists_the_known_ones():
    with pytest.raises(ValueError, match="known: k1_in_reward, k2_as_loss"):
        P.PrincipledKL(name="k3_as_loss")
    with pytest.raises(ValueError, match="known: sequence, token"):
        P.kl_coefficients(
            "k2_as_loss", torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), level="sentence"
        )


def test_importing_klnotes_does_not_import_trl():
    code = "import sys, klnotes, klnotes.frameworks, klnotes.trl_plugin; assert 'trl' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- in TRL ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trl():
    return pytest.importorskip("trl")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("plugin")


@pytest.fixture(scope="module")
def plugin_trainer(trl, workdir):
    original = trl.GRPOTrainer._compute_loss
    tr = P.tiny_trainer(workdir, kl="k1_in_reward", beta=0.3)
    tr.model.train()
    if not hasattr(tr, "current_gradient_accumulation_steps"):
        tr.current_gradient_accumulation_steps = 1
    yield tr
    assert trl.GRPOTrainer._compute_loss is original  # the plug-in never patches TRL's class


def grads(loss, model):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, allow_unused=True)


def assert_same_grads(a, b):
    for x, y in zip(a, b):
        if x is None or y is None:
            for z in (x, y):
                assert z is None or float(z.abs().max()) == 0.0
            continue
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-7)


def math_core_kl(name, model, inputs, beta):
    """beta * the book's sequence-level surrogate (klnotes.core.surrogates, chapter 5), mean over sequences."""
    from klnotes.core.surrogates import kl_loss

    mask = inputs["completion_mask"]
    logp = P.completion_logps(model, inputs["prompt_ids"], inputs["completion_ids"], mask)
    ref = inputs["ref_per_token_logps"]
    if name == "k2_as_loss":  # (1/2) U^2 differentiated, U = sequence log-ratio
        return beta * kl_loss("k2 as loss", logp, ref, mask, level="sequence", reduction="seq-sum")
    # k1 in reward, credited by reward-to-go: sum_t sg(sum_{s>=t} u_s) log pi_t
    return beta * kl_loss("k1 in reward", logp, ref, mask, level="token-rtg", reduction="seq-sum")


@pytest.mark.parametrize("name", P.KL_NAMES)
def test_plugin_kl_gradient_equals_the_math_core_on_policy(plugin_trainer, name):
    tr, model = plugin_trainer, plugin_trainer.model
    tr.principled_kl = P.PrincipledKL(name=name)
    inputs = P.synthetic_batch(model, seed=3)
    loss = tr._compute_loss(model, inputs)  # zero advantages: only the KL term has a gradient
    assert "_get_per_token_logps_and_entropies" not in vars(tr) and tr.beta == 0.3
    assert_same_grads(grads(loss, model), grads(math_core_kl(name, model, inputs, tr.beta), model))


def test_plugin_off_policy_gradient_is_the_importance_weighted_coefficient(plugin_trainer):
    tr, model = plugin_trainer, plugin_trainer.model
    tr.principled_kl = P.PrincipledKL(name="k1_in_reward")
    inputs = P.synthetic_batch(
        model, seed=4, off_policy=True, old_noise=0.05
    )  # ratios within the clip range
    loss = tr._compute_loss(model, inputs)
    mask = inputs["completion_mask"].float()
    logp = P.completion_logps(
        model, inputs["prompt_ids"], inputs["completion_ids"], inputs["completion_mask"]
    )
    rho = torch.exp(logp.detach() - inputs["old_per_token_logps"])
    assert float((rho - 1).abs().max()) < 0.2
    c = P.kl_coefficients("k1_in_reward", logp, inputs["ref_per_token_logps"], mask)
    expected = tr.beta * (rho * c * logp * mask).sum(-1).mean()  # sg(rho c) grad log pi
    assert_same_grads(grads(loss, model), grads(expected, model))


def test_plugin_off_leaves_trls_own_kl_path_untouched(plugin_trainer, workdir):
    plain = P.tiny_trainer(workdir, plugin=False, beta=0.3)
    plain.model.train()
    plain.current_gradient_accumulation_steps = 1
    plugin_trainer.principled_kl = None
    try:
        for off_policy in (False, True):
            inputs = P.synthetic_batch(plain.model, seed=5, off_policy=off_policy)
            a = plugin_trainer._compute_loss(plugin_trainer.model, inputs)
            b = plain._compute_loss(plain.model, inputs)
            assert float(a.detach()) == float(b.detach())
            assert_same_grads(grads(a, plugin_trainer.model), grads(b, plain.model))
    finally:
        plugin_trainer.principled_kl = P.PrincipledKL()


def test_plugin_needs_a_positive_beta(trl, workdir):
    with pytest.raises(ValueError, match="beta > 0"):
        P.tiny_trainer(workdir, kl="k2_as_loss", beta=0.0)


def test_plugin_trains_a_few_off_policy_steps_on_cpu(trl, workdir):
    tr = P.tiny_trainer(workdir, kl="k1_in_reward", beta=0.2, max_steps=2, num_iterations=2)
    before = [p.detach().clone() for p in tr.model.parameters()]
    tr.train()
    logs = [h for h in tr.state.log_history if "kl" in h]
    assert len(logs) == 2 and all(
        torch.isfinite(torch.tensor([h["kl"], h["loss"]])).all() for h in logs
    )
    assert any(not torch.equal(b, p) for b, p in zip(before, tr.model.parameters()))


def test_a_trl_older_than_the_supported_floor_is_refused_by_name():
    """Before trl 0.22 GRPO's loss was not scaled for gradient accumulation inside _compute_loss, as the
    plug-in's KL term is (with trl 0.20 the plug-in failed in the floors run): such a TRL is refused."""
    from klnotes import trl_plugin

    trl_plugin.check_trl_version("0.22.0")
    trl_plugin.check_trl_version("1.16.0")
    trl_plugin.check_trl_version("0.29.1.dev0")
    with pytest.raises(ImportError, match=r"needs trl >= 0\.22 .*trl 0\.21\.0 is installed"):
        trl_plugin.check_trl_version("0.21.0")
    with pytest.raises(ImportError, match=r"trl 0\.9\.6 is installed"):
        trl_plugin.check_trl_version("0.9.6")
