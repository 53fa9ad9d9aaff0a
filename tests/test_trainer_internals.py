"""klnotes.gpt2.trainer's fast paths equal the public reference functions they replace inside a step."""

import pytest
import torch
from _tiny import TINY

from klnotes.core import coefficients, surrogates
from klnotes.gpt2 import losses, policies, rollout, tasks
from klnotes.gpt2 import trainer as TR


@pytest.fixture()
def policy(cache):
    """A fresh copy of the pretrained tiny model (tests change its dtype or weights)."""
    return policies.tiny_policy(TINY, cache)


def _minibatch(policy, seed: int):
    """A float64 minibatch with padding, off-policy ``logp_old`` and a distant reference; ``logp`` with gradient."""
    model = policy.model.double()
    enc = policy.tokenizer(
        ["ba be", "bo", "bi bu ba", "be"],
        padding=True,
        return_tensors="pt",
        add_special_tokens=False,
    )
    completion = torch.tensor([[3, 4, 5, 1, 0], [6, 1, 0, 0, 0], [2, 2, 7, 3, 5], [4, 4, 1, 0, 0]])
    mask = torch.tensor(
        [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool
    )
    logp = TR.token_logprobs(model, enc["input_ids"], enc["attention_mask"], completion)
    gen = torch.Generator().manual_seed(seed)
    zero = torch.zeros((), dtype=torch.float64)
    noise = lambda: torch.randn(logp.shape, generator=gen, dtype=torch.float64)  # noqa: E731
    logp_old = torch.where(mask, logp.detach() + 0.3 * noise(), zero)
    logp_ref = torch.where(mask, logp.detach() + noise(), zero)
    advantages = torch.randn(4, generator=gen, dtype=torch.float64)
    batch = TR.Batch(
        prompt_ids=enc["input_ids"],
        prompt_mask=enc["attention_mask"],
        completion_ids=completion,
        mask=mask,
        logp_old=logp_old,
        logp_ref=logp_ref,
        kl_exact=zero.expand(4, 5),
        entropy=zero.expand(4, 5),
        rewards=advantages,
        advantages=advantages,
        texts=("",) * 4,
    )
    return model, logp, batch


@pytest.mark.parametrize("arm", TR.ARMS)
@pytest.mark.parametrize("reduction", ["token-mean", "seq-mean", "seq-sum"])
def test_minibatch_loss_equals_policy_loss_plus_kl_loss_with_gradients(policy, arm, reduction):
    model, logp, mb = _minibatch(policy, seed=0)
    config = TR.TrainConfig(kl=arm, beta=0.7, clip_eps=0.2, reduction=reduction)
    loss, kl, clip_frac = losses.minibatch_loss(logp, mb, config)
    pg, clip_ref = TR.policy_loss(
        logp, mb.logp_old, mb.advantages, mb.mask, 0.2, reduction=reduction
    )
    kl_ref = TR.kl_loss(
        arm, logp, mb.logp_ref, mb.logp_old, mb.mask, 0.7, clip_eps=0.2, reduction=reduction
    )
    assert (
        0.0 < float(clip_ref) < 1.0
    )  # some ratios are clipped, some not: both branches are exercised
    torch.testing.assert_close(loss, pg + kl_ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(kl, kl_ref.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(clip_frac.double(), clip_ref.double(), rtol=0, atol=0)
    params = [p for p in model.parameters()]
    got = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    want = torch.autograd.grad(pg + kl_ref, params, allow_unused=True)
    for g, w in zip(got, want):
        if w is None:
            assert g is None or float(g.abs().max()) == 0.0
        else:
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-13)
    assert any(w is not None and float(w.abs().max()) > 1e-4 for w in want)


def _closed_form_coefficient(arm: str, u: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
    """The coefficient c_t of the arm's variant from klnotes.core.coefficients alone (None: none)."""
    variant = TR.ARM_VARIANTS[arm]
    if variant is None:
        return None
    c = coefficients.closed_form(variant.estimator, variant.style, u)
    return surrogates.reward_to_go(c, mask) if variant.level == "token-rtg" else c


@pytest.mark.parametrize("arm", TR.ARMS)
@pytest.mark.parametrize("reduction", ["token-mean", "seq-mean", "seq-sum"])
def test_minibatch_loss_per_token_gradient_is_beta_times_the_coefficient(policy, arm, reduction):
    """On-policy, with zero advantages, the trainer's fused loss has the per-token gradient
    beta * w_t * c_t * grad logp_t, c_t from klnotes.core.coefficients, w_t the reduction's weight."""
    model, logp, mb = _minibatch(policy, seed=1)
    zero = torch.zeros_like(mb.advantages)
    mb = TR.Batch(
        **{
            **{f: getattr(mb, f) for f in mb.__dataclass_fields__},
            "logp_old": torch.where(mb.mask, logp.detach(), 0.0),
            "advantages": zero,
        }
    )
    config = TR.TrainConfig(kl=arm, beta=0.7, clip_eps=0.2, reduction=reduction)
    loss, _, _ = losses.minibatch_loss(logp, mb, config)
    (got,) = torch.autograd.grad(loss, logp)
    u = torch.where(mb.mask, logp.detach() - mb.logp_ref, 0.0)
    c = _closed_form_coefficient(arm, u, mb.mask)
    if c is None:
        assert float(got.abs().max()) == 0.0
        return
    m = mb.mask.double()
    weight = {
        "token-mean": m / m.sum(),
        "seq-sum": m / m.shape[0],
        "seq-mean": m / m.sum(1, keepdim=True) / m.shape[0],
    }[reduction]
    assert float(c[mb.mask].abs().min()) > 0.0
    torch.testing.assert_close(got, 0.7 * c * weight, rtol=1e-12, atol=1e-15)


def test_encode_prompts_equals_the_tokenizer_left_padding_the_repeated_list(policy):
    tok = policy.tokenizer
    prompts = ["ba be bi", "bo", "ba be bi", "bu ba"]  # a duplicate and three lengths
    ids, mask = rollout._encode_prompts(tok, prompts, "cpu", repeat=3)
    side, tok.padding_side = tok.padding_side, "left"
    try:
        want = tok(
            [p for p in prompts for _ in range(3)],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
    finally:
        tok.padding_side = side
    assert torch.equal(ids, want["input_ids"]) and torch.equal(mask, want["attention_mask"])
    assert ids.dtype == mask.dtype == torch.long and int((mask == 0).sum()) > 0


def test_sample_returns_ordinary_tensors_padded_after_eos(policy):
    """The sampler's loop runs in inference mode; its outputs must still work with autograd."""
    tok = policy.tokenizer
    model = policy.model.float()
    ids, mask = rollout._encode_prompts(tok, ["ba be", "bo"], "cpu", repeat=8)
    out, out_mask, logprobs = TR.sample(
        model,
        ids,
        mask,
        max_new_tokens=10,
        eos_id=tok.eos_token_id,
        pad_id=tok.pad_token_id,
        generator=torch.Generator().manual_seed(0),
    )
    assert not any(t.is_inference() for t in (out, out_mask, logprobs))
    assert bool((out[~out_mask] == tok.pad_token_id).all()) and int((~out_mask).sum()) > 0
    logp = TR.token_logprobs(model, ids, mask, out)  # embedding saves the ids for backward
    logp.sum().backward()
    torch.testing.assert_close(
        logp.detach()[out_mask],
        logprobs.gather(-1, out[..., None])[..., 0][out_mask],
        rtol=0,
        atol=1e-5,
    )


def test_one_train_step_matches_the_public_losses(policy, cache):
    """train_step's reported loss / kl_loss / clip_frac are those of policy_loss + kl_loss on its minibatches."""
    task = tasks.synthetic_task(TINY, n_prompts=8)
    model = policy.model.float()
    reference = policies.tiny_policy(TINY, cache)
    config = TR.TrainConfig(
        kl="k3-loss-is",
        beta=0.3,
        group_size=4,
        prompts_per_step=2,
        max_new_tokens=6,
        updates_per_batch=2,
        lr=1e-2,
        steps=1,
        max_grad_norm=None,
    )
    gen = torch.Generator().manual_seed(5)
    batch = TR.rollout(policy, reference, task, list(task.prompts[:2]), config, generator=gen)
    assert not any(isinstance(v, torch.Tensor) and v.is_inference() for v in vars(batch).values())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.0
    )  # lr 0: the policy stays pi_old for the check
    seed_state = gen.get_state()
    got = TR.train_step(policy, batch, optimizer, config, generator=gen)
    gen.set_state(seed_state)
    order = torch.randperm(
        config.batch_size,
        generator=torch.Generator().manual_seed(int(torch.randint(2**31 - 1, (1,), generator=gen))),
    )
    want = []
    for index in order.chunk(2):
        mb = batch.select(index)
        logp = TR.token_logprobs(model, mb.prompt_ids, mb.prompt_mask, mb.completion_ids)
        pg, clip = TR.policy_loss(logp, mb.logp_old, mb.advantages, mb.mask, config.clip_eps)
        kl = TR.kl_loss(
            config.kl,
            logp,
            mb.logp_ref,
            mb.logp_old,
            mb.mask,
            config.beta,
            clip_eps=config.clip_eps,
        )
        want.append([float((pg + kl).detach()), float(kl.detach()), float(clip)])
    for name, column in zip(("loss", "kl_loss", "clip_frac"), zip(*want)):
        assert got[name] == pytest.approx(sum(column) / 2, rel=1e-5, abs=1e-7), name
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
