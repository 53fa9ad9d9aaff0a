"""A principled KL term for TRL's ``GRPOTrainer`` (optional dependency: ``pip install "klnotes[trl]"``).

TRL's GRPO adds ``beta * k3`` per token to the loss (optionally times the differentiable ratio
``pi_theta / pi_old``, ``use_bias_correction_kl``). This module replaces that term by one of the
book's principled implementations, chosen by name:

``"k1_in_reward"``
    the per-token log-ratio ``u_t = log pi_theta(y_t|s_t) - log pi_ref(y_t|s_t)`` subtracted from the
    reward and credited by reward-to-go: coefficient ``c_t = sum_{s >= t} u_s`` on
    ``grad log pi_theta(y_t|s_t)``. On-policy its expected gradient is exactly
    ``grad KL(pi_theta || pi_ref)`` of whole sequences (chapter 5).
``"k2_as_loss"``
    ``(1/2) U^2`` with ``U = sum_t u_t`` the sequence log-ratio, differentiated: coefficient
    ``c_t = U`` on every token. Same expected gradient as ``"k1_in_reward"`` (Theorem 5.1 of
    Liu et al. 2025 at sequence level), with more variance.

``level="token"`` gives the GRPO-style per-token versions (``c_t = u_t`` for both names), which
follow only the per-token ("partial") reverse KL; they are here to compare, not to recommend.

Off-policy correction (Liu et al. 2025, Sec. 5): the coefficient is detached and put through the
PPO machinery, ``loss_t = -min(rho_t A_t, clip(rho_t, 1-eps_low, 1+eps_high) A_t)`` with
``A_t = -beta c_t`` and ``rho_t = exp(log pi_theta - log pi_old)``. With ``num_iterations = 1`` the
ratio equals 1 and this is exactly the on-policy gradient; with ``num_iterations > 1`` it is the
importance-sampled (and, by default, clipped) gradient. The coefficient is recomputed from the
current policy at every step (detached), so without clipping the single-step gradient is unbiased.

The KL term is aggregated per sequence (sum over its tokens) and averaged over sequences, so
``beta`` multiplies the KL divergence of whole sequences, as a reward penalty ``r - beta KL``.

Across processes and accumulation steps (``accelerate``: DDP, DeepSpeed) the meaning is unchanged.
Each process adds, for its micro-batch of ``b`` sequences, ``beta * (1/b) sum_i sum_t loss_{i,t} /
gradient_accumulation_steps``, and the gradients are averaged over the ``P`` processes. TRL's
micro-batches all hold ``b = per_device_train_batch_size`` whole sequences, so the update is that of
``beta`` times the mean over the ``b * P * gradient_accumulation_steps`` sequences of the global batch:
the split changes only the order of float additions (``tests/test_trl_plugin_ddp.py``: two CPU
processes against one, every KL name and level, accumulation 1 and 2, ``num_iterations`` 1 and 2;
gradients and updates agree to a relative 2e-6 or better). It relies on two facts of TRL that a port
elsewhere must keep: micro-batches of equal size (a per-micro-batch mean weighs each sequence by
``1/b``), and sequences never split across processes (the ``sequence`` level's coefficient needs
the whole sequence's log-ratios; TRL's GRPO refuses context/sequence parallelism). The logged ``kl``
is the mean, over all processes' sequences, of the sequence log-ratio ``sum_t u_t``.

Importing this module does not import ``trl``; :class:`PrincipledKLGRPOTrainer` does, on first use.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math
import re
from dataclasses import dataclass, replace

import torch

from klnotes.core import coefficients, surrogates, variants

#: The plug-in's principled KL terms (:func:`kl_variant` gives the variant of each).
KL_NAMES: tuple[str, ...] = ("k1_in_reward", "k2_as_loss")
#: ``"sequence"``: the exact sequence reverse-KL gradient; ``"token"``: each token's own log-ratio.
LEVELS: tuple[str, ...] = ("sequence", "token")

__all__ = [
    "KL_NAMES",
    "LEVELS",
    "PrincipledKL",
    "kl_variant",
    "kl_coefficients",
    "principled_kl_token_loss",
    "principled_kl_loss",
    "PrincipledKLGRPOTrainer",
    "tiny_gpt2",
]


@dataclass(frozen=True)
class PrincipledKL:
    r"""Which principled KL term replaces TRL's, and how it is corrected off-policy.

    ``"k1_in_reward"`` at sequence level has coefficient :math:`c_t = G_t = \sum_{s\ge t} u_s`
    (:eq:`eq-5-reward-to-go`), ``"k2_as_loss"`` :math:`c_t = U` (:eq:`eq-5-log-ratios`); both give
    the sequence reverse-KL gradient :eq:`eq-5-seq-gradient`, through the head of :eq:`eq-9-kl-head`
    (:doc:`chapter 9 </book/09_in_practice>`, "The TRL plug-in").

    Attributes:
        name: ``"k1_in_reward"`` (default) or ``"k2_as_loss"``; see the module docstring.
        level: ``"sequence"`` (default; exact reverse KL of sequences) or ``"token"`` (per-token,
            partial reverse KL; for comparison).
        clip: put the KL head through PPO clipping with the trainer's ``epsilon`` /
            ``epsilon_high`` (default ``True``); ``False`` uses the plain importance ratio.
    """

    name: str = "k1_in_reward"
    level: str = "sequence"
    clip: bool = True

    def __post_init__(self):
        _check(self.name, self.level)
        if not isinstance(self.clip, bool):
            raise TypeError(f"PrincipledKL.clip must be True or False, got {self.clip!r}")

    @property
    def variant(self) -> variants.KLVariant:
        """The :class:`~klnotes.core.variants.KLVariant` of ``name`` at ``level``
        (:func:`kl_variant`)."""
        return kl_variant(self.name, self.level)


def kl_variant(name: str, level: str = "sequence") -> variants.KLVariant:
    """The :class:`~klnotes.core.variants.KLVariant` the plug-in computes for ``name`` at ``level``.

    Its coefficient is :math:`c_t = G_t` (:eq:`eq-5-reward-to-go`) or :math:`c_t = U`
    (:eq:`eq-5-log-ratios`) at sequence level, :math:`c_t = u_t` at token level.

    ``level="sequence"``: ``"k1_in_reward"`` is ``k1 in reward (rtg)`` and ``"k2_as_loss"`` is
    ``k2 as loss (seq)`` (both with the exact sequence reverse-KL gradient,
    :eq:`eq-5-reward-to-go`);
    ``level="token"``: ``k1 in reward`` and ``k2 as loss`` on each token's own log-ratio.

    Raises:
        ValueError: ``name`` not in :data:`KL_NAMES` or ``level`` not in :data:`LEVELS`.
    """
    _check(name, level)
    base = variants.parse(name)
    if level == "token":
        return base
    return replace(base, level="token-rtg" if base.placement == "reward" else "sequence")


def _check(name: str, level: str) -> None:
    if not isinstance(name, str) or name not in KL_NAMES:
        raise ValueError(f"unknown principled KL {name!r}; known: {', '.join(KL_NAMES)}")
    if not isinstance(level, str) or level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; known: {', '.join(LEVELS)}")


def _check_number(
    name: str, value, low: float, high: float = math.inf, *, low_open: bool = False
) -> None:
    """``value`` a finite number in ``[low, high)`` (``(low, high)`` with ``low_open``), else ValueError naming it."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low < value if low_open else low <= value) and value < high
    if not ok:
        raise ValueError(
            f"{name} must be a finite number in {'(' if low_open else '['}{low:g}, {high:g}), got {value!r}"
        )


def _check_tensors(mask: torch.Tensor, **tensors: torch.Tensor) -> None:
    """Each of ``tensors`` a floating ``[batch, time]`` tensor of ``mask``'s shape, else an error naming it."""
    items = {**tensors, "mask": mask}
    for name, x in items.items():
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor [batch, time], got {type(x).__name__}")
        if x.dim() != 2:
            raise ValueError(f"{name} must be 2-D [batch, time], got shape {tuple(x.shape)}")
        if name != "mask" and not x.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor (log-probabilities), got {x.dtype}")
        if name != "mask" and not bool(torch.isfinite(x).all()):
            bad = (~torch.isfinite(x)).nonzero()[0].tolist()
            raise ValueError(
                f"{name} has {int((~torch.isfinite(x)).sum())} non-finite value(s) (first: "
                f"{x[tuple(bad)].item()} at {bad}); log-probabilities must be finite"
            )
    shapes = {name: tuple(x.shape) for name, x in items.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(
            "shapes differ: "
            + ", ".join(f"{n} {s}" for n, s in shapes.items())
            + "; all must be [batch, time]"
        )


def kl_coefficients(
    name: str,
    logp: torch.Tensor,
    logp_ref: torch.Tensor,
    mask: torch.Tensor,
    *,
    level: str = "sequence",
) -> torch.Tensor:
    r"""Detached gradient coefficient ``c_t`` of each token for the principled KL term ``name``.

    .. math:: c_t = G_t = \sum_{s\ge t} u_s, \qquad c_t = U = \sum_s u_s, \qquad c_t = u_t

    for ``"k1_in_reward"``, ``"k2_as_loss"`` (sequence level) and either at token level
    (:eq:`eq-5-reward-to-go`, :eq:`eq-5-log-ratios`); the :math:`c_t` of :eq:`eq-9-kl-head`.

    With ``u_t = (log pi_theta - log pi_ref)_t * mask_t``:
    ``k1_in_reward``: ``c_t = sum_{s>=t} u_s`` (reward-to-go); ``k2_as_loss``: ``c_t = sum_s u_s``;
    either name at ``level="token"``: ``c_t = u_t``.

    Args:
        logp, logp_ref: ``[batch, time]`` log-probabilities of the sampled tokens.
        mask: ``[batch, time]``, 1 for completion tokens, 0 for padding.

    Returns:
        ``[batch, time]`` coefficients, zero on padding, no gradient.
    """
    variant = kl_variant(name, level)
    _check_tensors(mask, logp=logp, logp_ref=logp_ref)
    keep = mask != 0
    u = torch.where(keep, logp.detach() - logp_ref.detach(), 0.0)
    if variant.level == "sequence":
        u = u.sum(-1, keepdim=True).expand_as(u)
    c = coefficients.closed_form(variant.estimator, variant.style, u)
    if variant.level == "token-rtg":
        return surrogates.reward_to_go(c, keep)
    return torch.where(keep, c, 0.0)


def principled_kl_token_loss(
    name: str,
    logp: torch.Tensor,
    logp_ref: torch.Tensor,
    logp_old: torch.Tensor,
    mask: torch.Tensor,
    *,
    level: str = "sequence",
    clip: bool = True,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
) -> torch.Tensor:
    r"""Per-token KL head with coefficient :func:`kl_coefficients` and the PPO ratio (beta = 1).

    .. math:: \ell_t = -\min\big(\rho_t A_t,\ \mathrm{clip}(\rho_t, 1-\epsilon, 1+\epsilon)\,A_t\big),
        \qquad A_t = -\mathrm{sg}(c_t), \qquad \rho_t = \frac{\pi_\theta(y_t\mid s_t)}{\pi_{\mathrm{old}}(y_t\mid s_t)}

    :eq:`eq-9-kl-head` with :math:`\beta = 1` (:doc:`chapter 9 </book/09_in_practice>`, "The TRL
    plug-in").

    ``loss_t = -min(rho_t A_t, clip(rho_t, 1 - epsilon_low, 1 + epsilon_high) A_t)``, ``A_t = -c_t``,
    ``rho_t = exp(logp_t - logp_old_t)``; without clipping ``loss_t = rho_t c_t``. Its gradient is
    ``rho_t c_t grad logp_t`` (where not clipped): the KL coefficient on the score function,
    importance-weighted from ``pi_old`` to ``pi_theta``.

    Args:
        logp: ``[batch, time]`` log pi_theta of the sampled tokens (with gradient).
        logp_ref, logp_old: ``[batch, time]`` reference and behaviour (sampling) log-probabilities.
        mask: ``[batch, time]`` completion mask.

    Returns:
        ``[batch, time]`` per-token losses, zero on padding.
    """
    _check_tensors(mask, logp=logp, logp_ref=logp_ref, logp_old=logp_old)
    if not isinstance(clip, bool):
        raise TypeError(f"clip must be True or False, got {clip!r}")
    _check_number("epsilon_low", epsilon_low, 0.0, 1.0, low_open=True)
    _check_number("epsilon_high", epsilon_high, 0.0, low_open=True)
    mask = mask.to(logp.dtype)
    advantage = -kl_coefficients(name, logp, logp_ref, mask, level=level)
    ratio = torch.exp(logp - logp_old.detach())
    if clip:
        clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
        loss = -torch.min(ratio * advantage, clipped * advantage)
    else:
        loss = -ratio * advantage
    return loss * mask


def principled_kl_loss(
    name: str,
    logp: torch.Tensor,
    logp_ref: torch.Tensor,
    logp_old: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float,
    level: str = "sequence",
    clip: bool = True,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
) -> torch.Tensor:
    r"""Scalar KL loss: ``beta * mean over sequences of sum over tokens`` of
    :func:`principled_kl_token_loss`. On-policy its gradient estimates
    ``beta * grad E_x KL(pi_theta(.|x) || pi_ref(.|x))`` over whole sequences (``level="sequence"``).

    .. math:: \mathcal{L}_{\mathrm{KL}} = \frac{\beta}{B}\sum_{b=1}^{B}\sum_t m_{bt}\,\ell_{bt}

    with :math:`\ell_{bt}` of :eq:`eq-9-kl-head`; on-policy, :math:`\nabla\mathcal{L}_{\mathrm{KL}}`
    estimates :math:`\beta` times :eq:`eq-5-seq-gradient`.

    Shapes as in :func:`principled_kl_token_loss`; returns a scalar tensor.
    """
    _check_number("beta", beta, 0.0)
    per_token = principled_kl_token_loss(
        name,
        logp,
        logp_ref,
        logp_old,
        mask,
        level=level,
        clip=clip,
        epsilon_low=epsilon_low,
        epsilon_high=epsilon_high,
    )
    return beta * per_token.sum(-1).mean()


_TRAINER_CLASS = None
#: The oldest TRL the plug-in supports (pyproject.toml's ``trl`` extra): from 0.22 on, GRPO's
#: ``_compute_loss`` divides its loss by ``current_gradient_accumulation_steps``, as the plug-in divides
#: its KL term; before, TRL left that division to the Trainer, and the KL term would not be scaled as
#: TRL's loss is (with trl 0.20 and transformers 4.53 the plug-in fails: the attribute does not exist).
MIN_TRL = (0, 22)


def check_trl_version(version: str) -> None:
    """Raise ``ImportError`` naming ``version`` if it is older than :data:`MIN_TRL`.

    >>> check_trl_version("0.22.0"); check_trl_version("1.16.0.dev0")  # no error
    """
    parts = tuple(int(x) for x in re.findall(r"\d+", version)[:2])
    if parts < MIN_TRL:
        raise ImportError(
            f"PrincipledKLGRPOTrainer needs trl >= {MIN_TRL[0]}.{MIN_TRL[1]} (its loss scaling for "
            f'gradient accumulation); trl {version} is installed: pip install -U "klnotes[trl]"'
        )


def _trainer_class():
    """Build the ``GRPOTrainer`` subclass on first use, so that ``trl`` is imported only then."""
    global _TRAINER_CLASS
    if _TRAINER_CLASS is not None:
        return _TRAINER_CLASS
    try:
        from trl import GRPOTrainer
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError('PrincipledKLGRPOTrainer needs TRL: pip install "klnotes[trl]"') from err
    check_trl_version(importlib.metadata.version("trl"))

    class PrincipledKLGRPOTrainer(GRPOTrainer):
        """TRL's ``GRPOTrainer`` whose KL term is a principled one (see :mod:`klnotes.trl_plugin`).

        Its KL term is :func:`principled_kl_loss`: the head of :eq:`eq-9-kl-head` with the coefficients
        of :func:`kl_coefficients` (:doc:`chapter 9 </book/09_in_practice>`, "The TRL plug-in").

        Use it exactly like ``GRPOTrainer``, with one more keyword, ``kl``: a
        :class:`PrincipledKL` (or its name, e.g. ``"k1_in_reward"``), or ``None`` to keep TRL's
        own KL term untouched. ``args.beta`` (which must be > 0 for a KL term) is the coefficient
        of the KL divergence of whole sequences. Everything else (generation, rewards, the
        clipped policy loss, ``accelerate`` multi-GPU, gradient accumulation) is TRL's.
        """

        def __init__(self, *args, kl: PrincipledKL | str | None = "k1_in_reward", **kwargs):
            super().__init__(*args, **kwargs)
            if isinstance(kl, str):
                kl = PrincipledKL(name=kl)
            if kl is not None and not isinstance(kl, PrincipledKL):
                raise TypeError(f"kl must be a PrincipledKL, one of {KL_NAMES} or None; got {kl!r}")
            if not (
                isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and self.beta >= 0
            ):
                raise ValueError(f"GRPOConfig.beta must be a finite number >= 0, got {self.beta!r}")
            if kl is not None and self.beta == 0.0:
                raise ValueError(
                    "PrincipledKLGRPOTrainer with a KL term needs GRPOConfig(beta > 0); "
                    "with beta=0 TRL loads no reference model. Pass kl=None for no KL term."
                )
            self.principled_kl = kl

        def _compute_loss(self, model, inputs):
            if self.principled_kl is None:
                return super()._compute_loss(model, inputs)
            captured = []
            original = self._get_per_token_logps_and_entropies

            def capture(*a, **k):
                out = original(*a, **k)
                captured.append(out[0])
                return out

            # Reuse the policy forward pass of TRL's loss (no second forward): record its
            # per-token log-probs, and switch TRL's own KL term off for this call.
            beta = self.beta
            self._get_per_token_logps_and_entropies = capture
            self.beta = 0.0
            try:
                loss = super()._compute_loss(model, inputs)
            finally:
                self.beta = beta
                del self._get_per_token_logps_and_entropies
            logp = captured[0]
            mask = inputs["completion_mask"]
            if "tool_mask" in inputs:
                mask = mask * inputs["tool_mask"]
            old = inputs.get("old_per_token_logps")
            old = logp.detach() if old is None else old
            kl = self.principled_kl
            kl_loss = principled_kl_loss(
                kl.name,
                logp,
                inputs["ref_per_token_logps"],
                old,
                mask,
                beta=beta,
                level=kl.level,
                clip=kl.clip,
                epsilon_low=self.epsilon_low,
                epsilon_high=self.epsilon_high,
            )
            mode = "train" if self.model.training else "eval"
            if mode == "train":
                kl_loss = kl_loss / self.current_gradient_accumulation_steps
            u = (logp.detach() - inputs["ref_per_token_logps"]) * mask
            seq_kl = self.accelerator.gather(u.sum(-1)).mean().item()
            self._metrics[mode]["kl"].append(seq_kl)
            return loss + kl_loss

    PrincipledKLGRPOTrainer.__module__ = __name__
    _TRAINER_CLASS = PrincipledKLGRPOTrainer
    return _TRAINER_CLASS


def __getattr__(name):
    if name == "PrincipledKLGRPOTrainer":
        return _trainer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def completion_logps(model, prompt_ids, completion_ids, completion_mask) -> torch.Tensor:
    """``[batch, completion]`` log pi(completion token | prefix) by a plain forward pass (temperature 1).

    Independent of TRL's own forward, to check TRL and the plug-in against the book's math.
    """
    ids = torch.cat([prompt_ids, completion_ids], 1)
    attention = torch.cat([torch.ones_like(prompt_ids), completion_mask], 1)
    logits = model(input_ids=ids, attention_mask=attention).logits[:, prompt_ids.size(1) - 1 : -1]
    return (
        torch.log_softmax(logits.float(), -1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    )


def synthetic_batch(
    model,
    *,
    seed: int = 0,
    off_policy: bool = False,
    ref_noise: float = 0.7,
    old_noise: float = 0.05,
    batch: int = 4,
    prompt_len: int = 3,
    completion_len: int = 5,
) -> dict:
    """A batch in the format of ``GRPOTrainer._compute_loss`` with zero advantages, so that the loss
    is the KL term alone. Random prompts and completions (two of them padded); reference log-probs =
    the model's own plus ``ref_noise`` Gaussian noise (so ``u = O(1)``); with ``off_policy``, behaviour
    log-probs = the model's plus ``old_noise`` noise (as after an update, ``num_iterations > 1``).
    """
    gen = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    prompt_ids = torch.randint(2, vocab, (batch, prompt_len), generator=gen)
    completion_ids = torch.randint(2, vocab, (batch, completion_len), generator=gen)
    mask = torch.ones(batch, completion_len, dtype=torch.long)
    mask[1 % batch, completion_len - 2 :] = 0
    mask[(batch - 1), completion_len - 1 :] = 0
    with torch.no_grad():
        logp = completion_logps(model, prompt_ids, completion_ids, mask)
    inputs = {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": completion_ids,
        "completion_mask": mask,
        "advantages": torch.zeros(batch),
        "ref_per_token_logps": logp + ref_noise * torch.randn(logp.shape, generator=gen),
        "num_items_in_batch": mask.sum(),
    }
    if off_policy:
        inputs["old_per_token_logps"] = logp + old_noise * torch.randn(logp.shape, generator=gen)
    return inputs


def count_letter_reward(letter: str = "a"):
    """A verifiable reward for demos: the number of times ``letter`` occurs as a word."""

    def reward(completions, **kwargs):
        return [float(c.split().count(letter)) for c in completions]

    reward.__name__ = f"count_{letter}"
    return reward


def tiny_trainer(
    path, *, kl: PrincipledKL | str | None = "k1_in_reward", plugin: bool = True, **config
):
    """A ``PrincipledKLGRPOTrainer`` (or TRL's own ``GRPOTrainer`` with ``plugin=False``) on a tiny
    random GPT-2 saved under ``path``, for CPU demonstrations and tests; nothing is downloaded.

    Prompts are pairs of letters, the reward counts the word ``a``. ``config`` overrides the
    ``GRPOConfig`` defaults used here (``beta=0.1``, 4 completions of at most 6 tokens per step,
    2 completions per prompt, ``max_steps=2``, CPU, no logging or saving).
    """
    import os

    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    model_dir = os.path.join(str(path), "tiny-gpt2")
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        tiny_gpt2(model_dir)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    settings = dict(
        output_dir=os.path.join(str(path), "out"),
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=6,
        max_steps=2,
        beta=0.1,
        use_cpu=True,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        learning_rate=1e-3,
        seed=0,
        disable_tqdm=True,
        bf16=False,
    )
    # Activation (gradient) checkpointing off: a tiny model gains nothing from it. transformers >= 5.25
    # renamed the setting and warns when the old name, which TRL sets, is the only one given.
    fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    settings[
        "activation_checkpointing"
        if "activation_checkpointing" in fields
        else "gradient_checkpointing"
    ] = False
    settings.update(config)
    args = GRPOConfig(**settings)
    data = Dataset.from_dict({"prompt": ["a b", "c d", "e f", "g h"] * 4})
    common = dict(
        model=model_dir,
        reward_funcs=count_letter_reward(),
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
    )
    trainer = _trainer_class()(kl=kl, **common) if plugin else GRPOTrainer(**common)
    if args.disable_tqdm:  # without progress bars, transformers would print every log dict
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    return trainer


def tiny_gpt2(
    path,
    *,
    words: tuple[str, ...] = tuple("abcdefgh"),
    n_embd: int = 16,
    n_layer: int = 1,
    seed: int = 0,
):
    """Save a tiny random GPT-2 and a word-level tokenizer to ``path``, offline; return ``path``.

    The model of :doc:`chapter 9 </book/09_in_practice>`'s plug-in demonstration (built by
    ``tiny_trainer``); no formula.

    For CPU demonstrations and tests of the plug-in: vocabulary ``<pad>``, ``<eos>`` and ``words``
    (whitespace-separated), 32 positions, no dropout. Nothing is downloaded.
    """
    from klnotes.gpt2.policies import seeded_gpt2, word_tokenizer

    tokenizer = word_tokenizer(tuple(words))  # the synthetic language's word-level tokenizer
    vocab = tokenizer.get_vocab()
    model = seeded_gpt2(
        len(vocab),
        n_positions=32,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=2,
        seed=seed,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
