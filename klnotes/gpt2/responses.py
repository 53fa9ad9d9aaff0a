r"""Responses of a causal language model to one prompt, for
:doc:`chapter 7 </book/07_gpt2_gradients>`'s gradient comparison: all
:math:`V^L` responses of a fixed length (exact enumeration), or samples of them, and their per-token
log-probabilities :math:`\log\pi(y_t\mid x, y_{<t})` (:eq:`eq-5-log-ratios`), ``[N, L]``.

Responses have a fixed length ``L`` over the model's whole vocabulary (no early stop), so that a
sequence's probability is the product of its ``L`` token probabilities and the expectations of
:mod:`klnotes.gpt2.gradients` are exact sums over ``V^L`` responses or Monte Carlo means.
"""

from __future__ import annotations

import torch

from klnotes.gpt2 import devices
from klnotes.gpt2.rollout import cache_keyword

__all__ = [
    "enumerate_responses",
    "check_prompt",
    "full_logits",
    "model_device",
    "token_logprobs",
    "sample_responses",
]


def enumerate_responses(
    vocab_size: int, length: int, *, max_sequences: int = 2**16
) -> torch.Tensor:
    """All ``vocab_size ** length`` responses, ``[V^L, L]`` (int64), in lexicographic order.

    They are the :math:`V^L` terms of the exact sums :eq:`eq-7-expected` (:doc:`chapter 7 </book/07_gpt2_gradients>`).

    Raises:
        ValueError: non-positive sizes, or more than ``max_sequences`` responses (exact enumeration
            would be too slow; use :func:`klnotes.gpt2.gradients.sampled_gradients`).
    """
    if int(vocab_size) < 1 or int(length) < 1:
        raise ValueError(f"vocab_size and length must be >= 1, got {vocab_size} and {length}")
    count = int(vocab_size) ** int(length)
    if count > max_sequences:
        raise ValueError(
            f"vocab_size**length = {vocab_size}**{length} = {count} responses exceeds max_sequences={max_sequences}; "
            "shorten the response, or estimate by sampling (sampled_gradients)"
        )
    grids = torch.meshgrid(*[torch.arange(vocab_size)] * length, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=1)


def check_prompt(prompt: torch.Tensor) -> torch.Tensor:
    """``prompt`` as int64 token ids ``[P]``.

    (:doc:`Chapter 7 </book/07_gpt2_gradients>`.)

    Raises:
        ValueError: not a non-empty 1-D integer tensor (names the shape received).
    """
    if (
        not isinstance(prompt, torch.Tensor)
        or prompt.dim() != 1
        or prompt.numel() == 0
        or prompt.is_floating_point()
    ):
        shape = tuple(prompt.shape) if isinstance(prompt, torch.Tensor) else type(prompt).__name__
        raise ValueError(f"prompt must be a non-empty 1-D tensor of token ids [P], got {shape}")
    return prompt.long()


def full_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """``[N, T, V]`` logits of ``model`` on unpadded token ids ``ids [N, T]`` (every position attends);
    a model returning a tensor instead of an output object is accepted.

    (:doc:`Chapter 7 </book/07_gpt2_gradients>`.)
    """
    """``[N, T, V]`` logits of ``model`` on unpadded ids ``[N, T]`` (every position attends)."""
    out = model(
        input_ids=ids, attention_mask=torch.ones_like(ids)
    )  # no padding: every position attends
    return out.logits if hasattr(out, "logits") else out


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s parameters (of its first one).

    (:doc:`Chapter 7 </book/07_gpt2_gradients>`.)
    """
    """The device of ``model``'s first parameter."""
    return next(model.parameters()).device


def token_logprobs(
    model: torch.nn.Module, prompt: torch.Tensor, responses: torch.Tensor, *, chunk: int = 1024
) -> torch.Tensor:
    r"""``log pi(y_t | x, y_<t)`` of every response token, ``[N, L]``, differentiable if grad is enabled.

    :math:`\log\pi(y_t\mid x, y_{<t}) = \log\mathrm{softmax}(z_t)_{y_t}` (:eq:`eq-5-log-ratios`), the
    log-probabilities every estimator of :doc:`chapter 7 </book/07_gpt2_gradients>` is a function of.

    Args:
        model: a causal LM (``model(input_ids=ids).logits`` is ``[N, T, V]``, as in ``transformers``).
        prompt: ``[P]`` token ids, ``P >= 1``. responses: ``[N, L]`` token ids.
        chunk: sequences per forward pass.
    """
    prompt = check_prompt(prompt)
    if responses.dim() != 2:
        raise ValueError(f"responses must be [N, L] token ids, got shape {tuple(responses.shape)}")
    device = model_device(model)
    p = prompt.numel()
    out = []
    for start in range(0, responses.shape[0], chunk):
        r = responses[start : start + chunk].to(device)
        ids = torch.cat([prompt.to(device).expand(r.shape[0], p), r], dim=1)
        logits = full_logits(model, ids)[:, p - 1 : -1]
        if logits.dtype not in (torch.float32, torch.float64):
            logits = logits.float()
        out.append(torch.log_softmax(logits, dim=-1).gather(-1, r.unsqueeze(-1)).squeeze(-1))
    return torch.cat(out, dim=0)


@torch.no_grad()
def sample_responses(
    model: torch.nn.Module,
    prompt: torch.Tensor,
    length: int,
    n: int,
    *,
    generator: torch.Generator | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    r"""``n`` responses of exactly ``length`` tokens sampled from ``model`` (temperature 1), ``[n, length]`` on the CPU.

    :math:`y_i \sim \pi`, the samples of the Monte Carlo estimates of :eq:`eq-7-expected`
    (:doc:`chapter 7 </book/07_gpt2_gradients>`).

    Sampling runs on the model's device with a KV cache where the model has one (``transformers`` causal
    LMs), under autocast on a GPU, drawing with a generator on that device (seeded from ``generator`` when
    it lives elsewhere); only the finished responses are copied to the host. On the CPU the probabilities
    are float64 and ``generator`` is used directly (the same draws as before the cache was added).
    """
    prompt = check_prompt(prompt)
    device = model_device(model)
    gen = generator
    if generator is not None and generator.device != device:
        seed = int(torch.randint(2**62, (1,), generator=generator))
        gen = torch.Generator(device=device).manual_seed(seed)
    cached = "use_cache" in getattr(getattr(model, "config", None), "to_dict", lambda: {})()
    if cached:
        keyword = cache_keyword(model)
    out = []
    for start in range(0, n, chunk):
        b = min(chunk, n - start)
        ids = prompt.to(device).expand(b, prompt.numel()).clone()
        tokens, cache = [], None
        with devices.autocast(device):
            for _ in range(length):
                if cached:
                    step_ids = ids if cache is None else tokens[-1]
                    width = prompt.numel() + len(tokens)
                    o = model(
                        input_ids=step_ids,
                        attention_mask=torch.ones(b, width, dtype=torch.long, device=device),
                        use_cache=True,
                        **({} if cache is None else {keyword: cache}),
                    )
                    cache, logits = o[keyword], o.logits[:, -1]
                else:
                    logits = full_logits(model, torch.cat([ids, *tokens], dim=1))[:, -1]
                probs = torch.softmax(
                    logits.double() if device.type == "cpu" else logits.float(), dim=-1
                )
                tokens.append(torch.multinomial(probs, 1, generator=gen))
        out.append(torch.cat(tokens, dim=1).cpu())
        del cache
    return torch.cat(out, dim=0)
