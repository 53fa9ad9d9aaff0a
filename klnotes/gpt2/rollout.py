r"""Rollouts of the trainer (:doc:`chapter 8 </book/08_gpt2_training>`): sampling completions with a
KV cache, their log-probabilities,
and the annotated batch the updates train on.

:func:`rollout` samples ``group_size`` completions of each prompt from ``pi_old`` (:func:`sample`),
scores them with the task's reward, and with one no-grad forward pass of the reference computes
``log pi_ref`` and the exact per-position KL over the whole vocabulary; the result is a
:class:`Batch` whose :meth:`Batch.metrics` are the rollout's logged metrics. :func:`token_logprobs`
gives :math:`\log\pi_\theta(y_t\mid s_t)` of given completions (:eq:`eq-5-log-ratios`), the
quantity every loss of :mod:`klnotes.gpt2.losses` is a function of.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from dataclasses import dataclass
from typing import Sequence

import torch

from klnotes.gpt2 import devices
from klnotes.gpt2.losses import group_advantages
from klnotes.gpt2.policies import Policy
from klnotes.gpt2.tasks import Task
from klnotes.gpt2.trainconfig import ROLLOUT_METRICS, TrainConfig

__all__ = [
    "cache_keyword",
    "completion_logits",
    "token_logprobs",
    "logprobs_of",
    "sample",
    "Batch",
    "rollout",
]


@functools.lru_cache(maxsize=None)
def _forward_keywords(model_class) -> frozenset[str]:
    return frozenset(inspect.signature(model_class.forward).parameters)


def cache_keyword(model) -> str:
    """The name of ``model.forward``'s KV-cache argument: ``"cache"`` (``transformers`` >= 5) or
    ``"past_key_values"`` (earlier versions).

    (:doc:`Chapter 8 </book/08_gpt2_training>`'s sampler.)
    """
    return "cache" if "cache" in _forward_keywords(type(model)) else "past_key_values"


def _keep_last(model, n: int) -> dict:
    """Keyword computing the LM head on the last ``n`` positions only, where the model supports it."""
    return {"logits_to_keep": n} if "logits_to_keep" in _forward_keywords(type(model)) else {}


def _positions(attention: torch.Tensor) -> torch.Tensor:
    return (attention.cumsum(dim=1) - 1).clamp_min(0)


def completion_logits(
    model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor
) -> torch.Tensor:
    r"""``[batch, time, vocab]`` logits predicting each completion token, from one forward pass.

    They are the :math:`z_t` of :math:`\pi_\theta(\cdot\mid s_t) = \mathrm{softmax}(z_t/\tau)`
    (:eq:`eq-5-log-ratios`).

    The input is ``prompt_ids [batch, P]`` (left-padded, ``prompt_mask`` 1 on real tokens) followed by
    ``completion_ids [batch, time]``; position ids count real tokens only, as during :func:`sample`.
    """
    ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention = torch.cat([prompt_mask, torch.ones_like(completion_ids)], dim=1)
    width = completion_ids.size(1)
    out = model(
        input_ids=ids,
        attention_mask=attention,
        position_ids=_positions(attention),
        use_cache=False,
        **_keep_last(model, width + 1),
    )
    return out.logits[:, -(width + 1) : -1]


def token_logprobs(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    r""":math:`\log\pi_\theta(y_t\mid s_t) = \log\mathrm{softmax}(z_t/\tau)_{y_t}` of the
    completion tokens,
    ``[batch, time]`` (:eq:`eq-5-log-ratios`), differentiable; float32 at least (float64 for a
    float64 model)."""
    return logprobs_of(
        completion_logits(model, prompt_ids, prompt_mask, completion_ids),
        completion_ids,
        temperature,
    )


def logprobs_of(
    logits: torch.Tensor, completion_ids: torch.Tensor, temperature: float
) -> torch.Tensor:
    r"""``[batch, time]`` log-probabilities of ``completion_ids`` from ``[batch, time, vocab]`` logits,
    float32 at least.

    :math:`\log\pi_\theta(y_t\mid s_t) = z_{t,y_t}/\tau - \log\sum_v e^{z_{t,v}/\tau}`
    (:eq:`eq-5-log-ratios`).
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if temperature != 1.0:
        logits = logits / temperature
    return logits.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(
        logits, dim=-1
    )


@torch.no_grad()
def sample(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    generator: torch.Generator,
    temperature: float = 1.0,
    min_new_tokens: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Sample completions with a KV cache.

    Each token is drawn as :math:`y_t \sim \mathrm{softmax}(z_t/\tau)` from the one ``generator``
    (:doc:`chapter 8 </book/08_gpt2_training>`'s rollout, step 1).

    Args:
        prompt_ids, prompt_mask: ``[batch, P]`` left-padded prompts.
        generator: the only source of randomness (on the model's device).

    Returns:
        ``(completion_ids [batch, T], mask [batch, T] bool, logprobs [batch, T, vocab] float32)`` with
        ``T <= max_new_tokens`` (sampling stops when every completion has produced EOS): token ``t`` of
        a completion is followed by padding once EOS was sampled; ``mask`` is 1 up to and including EOS;
        ``logprobs`` are ``log softmax(logits / tau)`` of ``pi_old`` at each position (EOS not
        suppressed, even where ``min_new_tokens`` kept it from being sampled).
    """
    batch, prompt_width = prompt_ids.shape
    keyword = cache_keyword(model)
    # The loop runs in inference mode (no autograd bookkeeping on its ~10 small ops per token and on
    # the model's); the results are stacked outside it, so callers get ordinary tensors. On a GPU the
    # model runs under autocast; log-probabilities are float32.
    with torch.inference_mode(), devices.autocast(prompt_ids.device):
        # Attention masks and positions of every step, made once; step t uses views of them.
        attention_all = torch.cat([prompt_mask, prompt_mask.new_ones(batch, max_new_tokens)], dim=1)
        prompt_positions = _positions(prompt_mask)
        positions = prompt_positions[:, -1:] + torch.arange(
            1, max_new_tokens + 1, device=prompt_ids.device
        )
        out = model(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            position_ids=prompt_positions,
            use_cache=True,
            **_keep_last(model, 1),
        )
        cache, logits = out[keyword], out.logits[:, -1]
        done = torch.zeros(batch, dtype=torch.bool, device=prompt_ids.device)
        tokens, dones, logprobs = [], [], []
        for t in range(max_new_tokens):
            logits = logits.float()
            lp = torch.log_softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)
            weights = lp.exp()
            if t < min_new_tokens:
                weights.select(1, eos_id).zero_()
            token = torch.multinomial(weights, 1, generator=generator)[:, 0].masked_fill_(
                done, pad_id
            )
            tokens.append(token)
            dones.append(done)  # done before this token: the token is padding
            logprobs.append(lp)
            done = done | (token == eos_id)
            if t + 1 == max_new_tokens or (
                (t + 1) % 8 == 0 and bool(done.all())
            ):  # one host sync per 8 tokens
                break
            out = model(
                input_ids=token[:, None],
                attention_mask=attention_all[:, : prompt_width + t + 1],
                position_ids=positions[:, t : t + 1],
                use_cache=True,
                **{keyword: cache},
            )
            cache, logits = out[keyword], out.logits[:, -1]
        del cache, out
    ids, mask, lps = torch.stack(tokens, 1), ~torch.stack(dones, 1), torch.stack(logprobs, 1)
    # Trim trailing all-padding columns (completions that all ended before the last step taken).
    width = int(mask.any(dim=0).nonzero().max()) + 1
    if width == ids.size(1):
        return ids, mask, lps
    return ids[:, :width], mask[:, :width], lps[:, :width]


@dataclass(frozen=True)
class Batch:
    r"""A rollout: ``B = prompts_per_step * group_size`` completions, grouped consecutively by prompt.

    Per position :math:`\mathrm{KL}_t = \sum_v \pi_{\mathrm{old}}(v\mid s_t)\log
    \frac{\pi_{\mathrm{old}}(v\mid s_t)}{\pi_{\mathrm{ref}}(v\mid s_t)}` (:eq:`eq-1-kl`); summed over
    :math:`t` it is an unbiased estimate of the sequence KL :eq:`eq-5-seq-rkl` by the chain rule
    (:doc:`chapter 8 </book/08_gpt2_training>`).

    Fields (``T`` = longest completion):

    - ``prompt_ids``, ``prompt_mask``: ``[B, P]`` left-padded prompts (mask long 0/1);
    - ``completion_ids``: ``[B, T]``, padding after EOS; ``mask``: ``[B, T]`` bool, 1 up to and including EOS;
    - ``logp_old``, ``logp_ref``: ``[B, T]`` float32 log-probabilities of the sampled tokens under
      ``pi_old`` (the sampler) and ``pi_ref``, 0 on padding;
    - ``kl_exact``: ``[B, T]`` exact ``KL(pi_old(.|s_t) || pi_ref(.|s_t))`` summed over the vocabulary,
      0 on padding; ``entropy``: ``[B, T]`` entropy of ``pi_old(.|s_t)``, 0 on padding;
    - ``rewards``, ``advantages``: ``[B]`` float32; ``texts``: the decoded completions.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    mask: torch.Tensor
    logp_old: torch.Tensor
    logp_ref: torch.Tensor
    kl_exact: torch.Tensor
    entropy: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    texts: tuple[str, ...]

    def select(self, index: torch.Tensor) -> "Batch":
        """The rows ``index`` (a minibatch)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        cpu_index = index.tolist()
        return Batch(
            **{
                k: (tuple(v[i] for i in cpu_index) if k == "texts" else v[index.to(v.device)])
                for k, v in fields.items()
            }
        )

    def metrics(self) -> dict[str, float]:
        """The rollout's metrics (:data:`klnotes.gpt2.trainconfig.ROLLOUT_METRICS`), as Python floats."""
        m = self.mask.float()
        n_tokens = m.sum().clamp_min(1.0)
        u = (self.logp_old - self.logp_ref) * m
        values = torch.stack(
            [
                self.rewards.float().mean(),
                (self.kl_exact * m).sum() / n_tokens,
                (self.kl_exact * m).sum(dim=1).mean(),
                u.sum(dim=1).mean(),
                u.sum() / n_tokens,
                (self.entropy * m).sum() / n_tokens,
                m.sum(dim=1).mean(),
                ((u.abs() > 1.0) & self.mask).float().sum() / n_tokens,
            ]
        ).tolist()  # one host sync
        return dict(zip(ROLLOUT_METRICS, values))


def _encode_prompts(
    tokenizer, prompts: Sequence[str], device, repeat: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` ``[len(prompts) * repeat, P]`` left-padded to the longest prompt, each prompt repeated
    ``repeat`` times consecutively (what ``tokenizer(..., padding=True)`` gives with left padding for the
    repeated list, from one tokenizer call on the distinct prompts and one tensor copy)."""
    distinct = list(dict.fromkeys(prompts))
    known = dict(zip(distinct, tokenizer(distinct, add_special_tokens=False)["input_ids"]))
    rows = [known[p] for p in prompts for _ in range(repeat)]
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    return ids.to(device), mask.to(device)


def rollout(
    policy: Policy,
    reference: Policy,
    task: Task,
    prompts: Sequence[str],
    config: TrainConfig,
    *,
    generator: torch.Generator,
) -> Batch:
    """Sample ``config.group_size`` completions of each prompt from ``policy``, score and annotate them.

    The advantages are GRPO's (:eq:`eq-1-grpo`, :func:`klnotes.gpt2.losses.group_advantages`); the
    rewards the task's (:eq:`eq-8-reward`); :doc:`chapter 8 </book/08_gpt2_training>`, step 1.

    One no-grad forward pass of ``reference`` over all completions gives ``logp_ref`` and, against the
    policy's distributions kept from sampling, the exact per-position KL. Returns a :class:`Batch`.
    """
    tokenizer, model = policy.tokenizer, policy.model
    device = policy.device
    prompt_ids, prompt_mask = _encode_prompts(tokenizer, prompts, device, repeat=config.group_size)
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    ids, mask, logprobs = sample(
        model,
        prompt_ids,
        prompt_mask,
        max_new_tokens=config.max_new_tokens,
        eos_id=eos_id,
        pad_id=pad_id,
        generator=generator,
        temperature=config.temperature,
        min_new_tokens=config.min_new_tokens,
    )
    texts = tuple(
        tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)
    )  # pad_id after EOS
    # the reference's logits (autocast on a GPU); what follows, outside, gives ordinary float32 tensors
    with torch.inference_mode(), devices.autocast(device):
        logits = completion_logits(reference.model, prompt_ids, prompt_mask, ids)
    with torch.no_grad():
        logits = logits.float()
        ref_lp = torch.log_softmax(
            logits if config.temperature == 1.0 else logits / config.temperature, dim=-1
        )
        p = logprobs.exp()
        kl_exact = (p * (logprobs - ref_lp)).sum(
            -1
        )  # summed difference: no cancellation at small KL
        entropy = (p * logprobs).sum(-1).neg_()
        index = ids.unsqueeze(-1)
        per_token = torch.stack(
            [
                logprobs.gather(-1, index).squeeze(-1),
                ref_lp.gather(-1, index).squeeze(-1),
                kl_exact,
                entropy,
            ]
        )
        logp_old, logp_ref, kl_exact, entropy = per_token.masked_fill_(~mask, 0.0).unbind(
            0
        )  # 0 on padding
        del p, ref_lp, logprobs, logits
    rewards = task.score(texts).to(device=device, dtype=torch.float32)
    advantages = group_advantages(rewards, config.group_size, scale=config.scale_rewards)
    return Batch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=ids,
        mask=mask,
        logp_old=logp_old,
        logp_ref=logp_ref,
        kl_exact=kl_exact,
        entropy=entropy,
        rewards=rewards,
        advantages=advantages,
        texts=texts,
    )
