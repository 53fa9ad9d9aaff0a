"""The synthetic language of the cpu and smoke scales (:doc:`chapter 8 </book/08_gpt2_training>`):
a word-level Markov chain with an end-of-sentence probability (:class:`SyntheticLanguage`), the
configuration of it and of the tiny GPT-2 pretrained on it (:class:`TinyLMConfig`, the presets
:data:`TINY_PRESETS`), and its word-level tokenizer (:func:`word_tokenizer`).

:mod:`klnotes.gpt2.policies` builds, pretrains and caches the tiny model (``tiny_policy``) and
re-exports these names (the paths the chapters use).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import numpy as np
import torch

from klnotes.gpt2._checks import check_int_fields, check_number_fields

__all__ = [
    "TinyLMConfig",
    "TINY_PRESETS",
    "SyntheticLanguage",
    "synthetic_language",
    "word_tokenizer",
    "PAD",
    "EOS",
]

#: Special tokens of the synthetic language's tokenizer.
PAD, EOS = "<pad>", "<eos>"
# Bump when the way a tiny model is built changes, so that stale caches are rebuilt.
_TINY_FORMAT = 1
_CONSONANTS, _VOWELS = "bdgklmnprstvz", "aeiou"


@dataclass(frozen=True)
class TinyLMConfig:
    """A synthetic language and the tiny GPT-2 pretrained on it.

    (The ``smoke`` and ``cpu`` scales of :doc:`chapters 7 </book/07_gpt2_gradients>` and
    :doc:`8 </book/08_gpt2_training>`.)

    Language: ``n_words`` words (``"ba"``, ``"be"``, ...); the first word is drawn from ``start``, a
    Dirichlet(1) draw; each next word from row ``w`` of a transition matrix whose rows are
    Dirichlet(``concentration``) draws (small values: peaked, grammar-like rows); after each word the
    sentence ends (``<eos>``) with probability ``end_prob``. All drawn from ``seed``.

    Model: GPT-2 with ``n_layer`` blocks, width ``n_embd``, ``n_head`` heads, ``n_positions``
    positions, no dropout; pretrained by Adam (``lr``) for ``pretrain_steps`` steps of ``batch_size``
    sampled sentences of at most ``min(n_positions - 1, 4 / end_prob)`` words (next-token cross-entropy,
    ``<eos>`` included, padding ignored).
    """

    n_words: int = 16
    concentration: float = 0.3
    end_prob: float = 0.1
    n_layer: int = 2
    n_embd: int = 32
    n_head: int = 2
    n_positions: int = 64
    pretrain_steps: int = 120
    batch_size: int = 64
    lr: float = 1e-2
    seed: int = 0

    def __post_init__(self):
        n_max = len(_CONSONANTS) * len(_VOWELS)
        ints = dict(
            n_words=(2, n_max),
            n_layer=(1, 64),
            n_embd=(1, 8192),
            n_head=(1, 256),
            n_positions=(4, 8192),
            pretrain_steps=(0, 10**7),
            batch_size=(1, 10**6),
            seed=(0, 2**32 - 1),
        )
        check_int_fields("TinyLMConfig", self, ints)
        if self.n_embd % self.n_head:
            raise ValueError(
                f"TinyLMConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        floats = dict(concentration=(0, 10**6, False), end_prob=(0, 1, False))
        check_number_fields("TinyLMConfig", self, {**floats, "lr": (0, 10, False)})

    def key(self) -> str:
        """Short hash of the config (and the build format): the cache folder's name."""
        text = json.dumps({"format": _TINY_FORMAT, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


#: Tiny-model presets per scale (``gpu`` uses GPT-2 from the hub instead).
TINY_PRESETS: dict[str, TinyLMConfig] = {
    "smoke": TinyLMConfig(
        n_words=12,
        n_layer=1,
        n_embd=16,
        n_positions=48,
        pretrain_steps=60,
        batch_size=32,
        lr=2e-2,
    ),
    "cpu": TinyLMConfig(),
}


@dataclass(frozen=True)
class SyntheticLanguage:
    """A word-level Markov chain with stopping (see :class:`TinyLMConfig`).

    (:doc:`Chapter 8 </book/08_gpt2_training>`'s synthetic language.)

    Fields: ``words``, the vocabulary (``n_words`` strings); ``start``, ``[n_words]`` float64
    probabilities of the first word; ``transition``, ``[n_words, n_words]`` float64, row ``i`` the
    distribution of the word after word ``i``; ``end_prob``, the probability that the sentence ends
    after any word.
    """

    words: tuple[str, ...]
    start: torch.Tensor
    transition: torch.Tensor
    end_prob: float

    def stationary(self) -> torch.Tensor:
        """``[n_words]`` stationary distribution ``pi = pi T`` of the word chain (float64)."""
        values, vectors = torch.linalg.eig(self.transition.T)
        v = vectors[:, torch.argmin((values - 1).abs())].real
        return v / v.sum()

    def sample_words(
        self, n: int, generator: torch.Generator, *, max_words: int, min_words: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``n`` sentences: ``(words [n, max_words] long, lengths [n] long)``.

        ``words[i, :lengths[i]]`` is sentence ``i`` (word indices); later entries are junk (past the end).
        The sentence ends after each word from word ``min_words`` on with
        probability ``end_prob``, and at ``max_words`` words at the latest.
        """
        if not 1 <= min_words <= max_words:
            raise ValueError(
                f"need 1 <= min_words <= max_words, got min_words={min_words}, max_words={max_words}"
            )
        ends = torch.rand(n, max_words, generator=generator, dtype=torch.float64) < self.end_prob
        ends[:, : min_words - 1] = False
        ends[:, -1] = True
        lengths = ends.to(torch.int8).argmax(dim=1) + 1
        words = torch.zeros(n, max_words, dtype=torch.long)
        words[:, 0] = torch.multinomial(self.start.expand(n, -1), 1, generator=generator)[:, 0]
        for t in range(1, int(lengths.max())):  # words past the longest sentence stay 0
            words[:, t] = torch.multinomial(
                self.transition[words[:, t - 1]], 1, generator=generator
            )[:, 0]
        return words, lengths

    def sample(
        self, n: int, generator: torch.Generator, *, max_words: int, min_words: int = 1
    ) -> list[str]:
        """``n`` sentences as strings of space-separated words (see :meth:`sample_words`)."""
        words, lengths = self.sample_words(n, generator, max_words=max_words, min_words=min_words)
        return [
            " ".join(self.words[w] for w in row[:k].tolist())
            for row, k in zip(words, lengths.tolist())
        ]


def synthetic_language(config: TinyLMConfig = TinyLMConfig()) -> SyntheticLanguage:
    """The :class:`SyntheticLanguage` of ``config`` (deterministic in ``config.seed``).

    (:doc:`Chapter 8 </book/08_gpt2_training>`.)
    """
    words = tuple(c + v for c in _CONSONANTS for v in _VOWELS)[: config.n_words]
    rng = np.random.default_rng(
        config.seed
    )  # numpy: seeded Dirichlet draws, same on every platform
    start = torch.from_numpy(rng.dirichlet(np.ones(config.n_words)))
    transition = torch.from_numpy(
        rng.dirichlet(np.full(config.n_words, config.concentration), size=config.n_words)
    )
    return SyntheticLanguage(
        words=words, start=start, transition=transition, end_prob=config.end_prob
    )


def word_tokenizer(words: tuple[str, ...]):
    """A word-level fast tokenizer over ``words`` (ids ``0`` = :data:`PAD`, ``1`` = :data:`EOS`,
    then
    the words in order; whitespace splits words, an unknown word reads as :data:`PAD`), as
    ``transformers.PreTrainedTokenizerFast``.

    (:doc:`Chapter 8 </book/08_gpt2_training>`'s synthetic language.)
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate((PAD, EOS) + tuple(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=PAD, padding_side="left"
    )
