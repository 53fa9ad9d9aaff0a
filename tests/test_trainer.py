"""klnotes.gpt2.trainer: sampling and masks, each KL arm's gradient against its closed form, resume."""

import dataclasses

import pandas as pd
import pytest
import torch
from _tiny import CONFIG, TINY

from klnotes.core import coefficients, surrogates, variants
from klnotes.gpt2 import policies, tasks
from klnotes.gpt2 import trainer as TR


@pytest.fixture()
def pair(cache):
    """A fresh (policy, reference) pair of the same pretrained tiny model."""
    return policies.tiny_policy(TINY, cache), policies.tiny_policy(TINY, cache)


@pytest.fixture(scope="module")
def task():
    return tasks.synthetic_task(TINY, n_prompts=8)


def _prompts(policy, texts):
    enc = policy.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


def test_sampling_pads_after_eos_and_matches_a_full_forward_pass(pair):
    policy, _ = pair
    tok = policy.tokenizer
    prompt_ids, prompt_mask = _prompts(policy, ["ba be bi", "bo"] * 8)  # left padding in row 1
    ids, mask, logprobs = TR.sample(
        policy.model,
        prompt_ids,
        prompt_mask,
        max_new_tokens=12,
        eos_id=tok.eos_token_id,
        pad_id=tok.pad_token_id,
        generator=torch.Generator().manual_seed(0),
    )
    batch, width = ids.shape
    assert (
        mask.dtype == torch.bool
        and mask.shape == (batch, width)
        and logprobs.shape == (batch, width, len(tok))
    )
    assert width <= 12 and bool(mask[:, 0].all())
    for row, m in zip(ids.tolist(), mask.tolist()):
        length = sum(m)
        assert m == [True] * length + [False] * (width - length)  # one block of ones
        if length < width or tok.eos_token_id in row:
            assert (
                row.index(tok.eos_token_id) == length - 1
            )  # mask ends with the first EOS, included
            assert all(t == tok.pad_token_id for t in row[length:])
    assert int((ids == tok.eos_token_id).sum()) > 0  # end_prob 0.25: some completions ended
    torch.testing.assert_close(logprobs.exp().sum(-1), torch.ones(batch, width), rtol=0, atol=1e-5)
    # log-probabilities of the KV-cache sampler = those of one forward pass over prompt + completion
    full = TR.token_logprobs(policy.model, prompt_ids, prompt_mask, ids).detach()
    sampled = logprobs.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(full[mask], sampled[mask], rtol=0, atol=1e-5)


def test_min_new_tokens_keeps_eos_from_being_sampled(pair):
    policy, _ = pair
    tok = policy.tokenizer
    prompt_ids, prompt_mask = _prompts(policy, ["ba"] * 16)
    ids, mask, _ = TR.sample(
        policy.model,
        prompt_ids,
        prompt_mask,
        max_new_tokens=6,
        min_new_tokens=6,
        eos_id=tok.eos_token_id,
        pad_id=tok.pad_token_id,
        generator=torch.Generator().manual_seed(0),
    )
    assert ids.shape == (16, 6) and bool(mask.all()) and not bool((ids == tok.eos_token_id).any())


def test_rollout_exact_kl_entropy_and_advantages(pair, task):
    policy, reference = pair
    with torch.no_grad():  # move the policy away from the reference
        for p in policy.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    batch = TR.rollout(
        policy,
        reference,
        task,
        list(task.prompts[:2]),
        CONFIG,
        generator=torch.Generator().manual_seed(0),
    )
    m = batch.mask
    assert batch.completion_ids.shape == m.shape == batch.logp_old.shape == batch.kl_exact.shape
    for name in ("logp_old", "logp_ref", "kl_exact", "entropy"):
        assert bool((getattr(batch, name)[~m] == 0).all()), name
    t = 1.0
    with torch.no_grad():
        lp = torch.log_softmax(
            TR.completion_logits(
                policy.model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids
            ).double()
            / t,
            -1,
        )
        lr = torch.log_softmax(
            TR.completion_logits(
                reference.model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids
            ).double()
            / t,
            -1,
        )
    kl = (lp.exp() * (lp - lr)).sum(-1)
    ent = -(lp.exp() * lp).sum(-1)
    torch.testing.assert_close(batch.kl_exact[m].double(), kl[m], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(batch.entropy[m].double(), ent[m], rtol=1e-4, atol=1e-6)
    assert float(kl[m].min()) >= 0 and float(kl[m].max()) > 1e-3
    groups = batch.advantages.view(-1, CONFIG.group_size)
    torch.testing.assert_close(groups.mean(1), torch.zeros(len(groups)), rtol=0, atol=1e-6)
    assert (
        len(batch.texts) == CONFIG.batch_size
        and batch.rewards.tolist() == task.score(batch.texts).float().tolist()
    )
    metrics = batch.metrics()
    assert metrics["kl_seq_exact"] == pytest.approx(
        float((batch.kl_exact * m).sum(1).mean()), rel=1e-6
    )
    assert metrics["response_length"] == pytest.approx(float(m.sum(1).double().mean()))


def test_group_advantages_are_centred_and_scaled_per_group():
    r = torch.tensor([1.0, 0.0, 0.0, 2.0, 2.0, 2.0])
    a = TR.group_advantages(r, 3)
    s = torch.tensor([1.0, 0.0, 0.0]).std()  # unbiased sample std, as TRL
    expected = torch.tensor([2 / 3, -1 / 3, -1 / 3]) / (s + 1e-4)
    torch.testing.assert_close(
        a, torch.cat([expected, torch.zeros(3)])
    )  # constant group: 0 (eps keeps it finite)
    torch.testing.assert_close(
        TR.group_advantages(r, 3, scale=False)[:3], torch.tensor([2 / 3, -1 / 3, -1 / 3])
    )
    with pytest.raises(ValueError, match="multiple of group_size=4"):
        TR.group_advantages(r, 4)


def _logp_batch(policy):
    """A float64 model's completion log-probs with gradient, and a mask with padding."""
    model = policy.model.double()
    prompt_ids, prompt_mask = _prompts(policy, ["ba be", "bo", "bi bu ba"])
    completion = torch.tensor([[3, 4, 5, 1], [6, 1, 0, 0], [2, 2, 7, 3]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    logp = TR.token_logprobs(model, prompt_ids, prompt_mask, completion).double()
    return model, logp, mask


def _grad(model, loss):
    grads = torch.autograd.grad(
        loss, [p for p in model.parameters()], retain_graph=True, allow_unused=True
    )
    return torch.cat(
        [
            torch.zeros(p.numel(), dtype=p.dtype) if g is None else g.reshape(-1)
            for g, p in zip(grads, model.parameters())
        ]
    )


COEFFICIENT = {  # arm -> closed-form coefficient c_t(u) (coefficients.closed_form), None = no KL term
    "none": None,
    "k1-loss": lambda u, m: coefficients.closed_form("k1", "as_loss", u),
    "k2-loss": lambda u, m: coefficients.closed_form("k2", "as_loss", u),
    "k3-loss": lambda u, m: coefficients.closed_form("k3", "as_loss", u),
    "k2-loss-is": lambda u, m: coefficients.closed_form("k2", "as_loss", u),
    "k3-loss-is": lambda u, m: coefficients.closed_form("k3", "as_loss", u),
    "k1-reward": lambda u, m: surrogates.reward_to_go(
        coefficients.closed_form("k1", "in_reward", u), m
    ),
}


@pytest.mark.parametrize("arm", TR.ARMS)
@pytest.mark.parametrize("reduction", ["token-mean", "seq-sum"])
def test_on_policy_kl_gradient_is_closed_form_coefficient_times_grad_logp(pair, arm, reduction):
    assert set(COEFFICIENT) == set(TR.ARMS)
    policy, _ = pair
    model, logp, mask = _logp_batch(policy)
    logp_ref = logp.detach() + torch.randn(
        logp.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    beta = 0.7
    loss = TR.kl_loss(arm, logp, logp_ref, logp.detach(), mask, beta, reduction=reduction)
    got = _grad(model, loss)
    if COEFFICIENT[arm] is None:
        assert float(got.abs().max()) == 0.0
        return
    u = torch.where(mask, logp.detach() - logp_ref, torch.zeros_like(logp_ref))
    c = COEFFICIENT[arm](u, mask)
    weights = mask.double() / (mask.sum() if reduction == "token-mean" else mask.shape[0])
    expected = _grad(model, beta * (c * weights * logp).sum())
    assert float(expected.abs().max()) > 1e-4
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "arm", ["k1-loss", "k2-loss", "k3-loss", "k2-loss-is", "k3-loss-is", "k1-reward"]
)
def test_off_policy_gradient_only_the_corrected_arms_carry_the_ratio(pair, arm):
    """After an update (logp_old != logp): *-is arms get rho * c (unbiased), "as loss" arms keep c (biased),
    k1-reward gets rho * c with c frozen at the sampler's log-ratio."""
    policy, _ = pair
    model, logp, mask = _logp_batch(policy)
    gen = torch.Generator().manual_seed(3)
    logp_ref = logp.detach() + torch.randn(logp.shape, generator=gen, dtype=torch.float64)
    logp_old = logp.detach() + 0.1 * (
        2 * torch.rand(logp.shape, generator=gen, dtype=torch.float64) - 1
    )  # |log rho| < 0.1
    loss = TR.kl_loss(arm, logp, logp_ref, logp_old, mask, 1.0)
    rho = torch.exp(logp.detach() - logp_old)
    if arm == "k1-reward":
        c = rho * surrogates.reward_to_go(
            torch.where(mask, logp_old - logp_ref, torch.zeros_like(logp)), mask
        )
    else:
        u = torch.where(mask, logp.detach() - logp_ref, torch.zeros_like(logp))
        c = COEFFICIENT[arm](u, mask) * (rho if arm.endswith("-is") else 1.0)
    expected = _grad(model, (c * mask.double() / mask.sum() * logp).sum())
    torch.testing.assert_close(_grad(model, loss), expected, rtol=1e-10, atol=1e-12)


def test_kl_loss_and_config_errors_list_the_allowed_values():
    x, m = torch.zeros(1, 2), torch.ones(1, 2)
    with pytest.raises(ValueError, match="allowed: none, k1-loss"):
        TR.kl_loss("k3", x, x, x, m, 0.1)
    with pytest.raises(ValueError, match="allowed: token-mean, seq-mean, seq-sum"):
        TR.kl_loss("k2-loss", x, x, x, m, 0.1, reduction="none")
    with pytest.raises(ValueError, match="exactly the same shape"):
        TR.kl_loss("k2-loss", x, torch.zeros(2, 2), x, m, 0.1)
    with pytest.raises(
        ValueError, match="TrainConfig.kl='k4-loss' is not a known arm; allowed: none"
    ):
        TR.TrainConfig(kl="k4-loss")
    with pytest.raises(ValueError, match="updates_per_batch=3 must divide"):
        TR.TrainConfig(updates_per_batch=3)
    with pytest.raises(ValueError, match="clip_eps must be a number in"):
        TR.TrainConfig(clip_eps=1.5)
    with pytest.raises(ValueError, match="beta must be a number in"):
        TR.TrainConfig(beta=-0.1)
    with pytest.raises(ValueError, match="group_size must be an int >= 2"):
        TR.TrainConfig(group_size=1)
    with pytest.raises(ValueError, match="min_new_tokens=9 exceeds"):
        TR.TrainConfig(max_new_tokens=8, min_new_tokens=9)


def test_train_rejects_bad_inputs(pair, task):
    policy, reference = pair
    with pytest.raises(ValueError, match="exceeds the task's 8 prompts"):
        TR.train(
            policy, reference, task, dataclasses.replace(CONFIG, prompts_per_step=9), progress=False
        )
    with pytest.raises(ValueError, match=r"max_new_tokens \(40\) exceeds the model's 32 positions"):
        TR.train(
            policy, reference, task, dataclasses.replace(CONFIG, max_new_tokens=40), progress=False
        )
    with pytest.raises(ValueError, match="share one model"):
        TR.train(policy, policy, task, CONFIG, progress=False)
    with pytest.raises(TypeError, match="TrainConfig"):
        TR.train(policy, reference, task, {"kl": "none"}, progress=False)


def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(cache, task, tmp_path):
    def fresh():
        return policies.tiny_policy(TINY, cache), policies.tiny_policy(TINY, cache)

    policy_a, reference = fresh()
    whole = TR.train(policy_a, reference, task, CONFIG, run_dir=tmp_path / "a", progress=False)
    assert list(whole.columns) == list(TR.METRICS) and whole["step"].tolist() == [0, 1, 2, 3]
    assert abs(whole["kl_seq_exact"].iloc[0]) < 1e-5 and whole["kl_seq_exact"].iloc[-1] > 0.0

    policy_b, reference = fresh()
    first = TR.train(
        policy_b,
        reference,
        task,
        dataclasses.replace(CONFIG, steps=2),
        run_dir=tmp_path / "b",
        progress=False,
    )
    assert len(first) == 2
    policy_b, reference = (
        fresh()
    )  # a new process: weights back at the start, restored from the checkpoint
    resumed = TR.train(policy_b, reference, task, CONFIG, run_dir=tmp_path / "b", progress=False)
    columns = [c for c in TR.METRICS if c != "seconds"]
    pd.testing.assert_frame_equal(resumed[columns], whole[columns], check_exact=True)
    for (name, a), (_, b) in zip(
        policy_a.model.state_dict().items(), policy_b.model.state_dict().items()
    ):
        assert torch.equal(a, b), name
    pd.testing.assert_frame_equal(
        TR.load_metrics(tmp_path / "b")[columns], whole[columns], check_exact=True
    )

    with pytest.raises(ValueError, match=r"another config \(beta: saved 0.1 vs now 0.2\)"):
        TR.train(
            policy_b,
            reference,
            task,
            dataclasses.replace(CONFIG, beta=0.2),
            run_dir=tmp_path / "b",
            progress=False,
        )
    with pytest.raises(FileNotFoundError, match="no metrics.csv"):
        TR.load_metrics(tmp_path)


def test_mask_comes_from_eos_even_when_padding_is_the_eos_token(pair):
    """GPT-2 pads with its EOS token: the mask must follow the first EOS, not the token ids."""
    policy, _ = pair
    tok = policy.tokenizer
    prompt_ids, prompt_mask = _prompts(policy, ["ba be"] * 16)
    ids, mask, _ = TR.sample(
        policy.model,
        prompt_ids,
        prompt_mask,
        max_new_tokens=10,
        eos_id=tok.eos_token_id,
        pad_id=tok.eos_token_id,
        generator=torch.Generator().manual_seed(4),
    )
    lengths = mask.sum(1)
    first_eos = [
        row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
        for row in ids.tolist()
    ]
    assert lengths.tolist() == first_eos and int(lengths.min()) < ids.size(1)


def test_arm_labels_are_variant_labels_that_parse_back_to_the_arm_variant():
    assert set(TR.ARM_LABELS) == set(TR.ARMS) == set(TR.ARM_VARIANTS)
    for arm, label in TR.ARM_LABELS.items():
        if arm != "none":
            assert variants.parse(label) == variants.parse(arm) == TR.ARM_VARIANTS[arm]
            assert TR.ARM_VARIANTS[arm].implementation in coefficients.IMPLEMENTATIONS
