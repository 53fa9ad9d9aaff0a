"""Policies: a causal language model and its tokenizer, from the hub, a local folder, or built here.

Three ways to get a :class:`Policy`, one loading path:

- :func:`load_policy` loads ``name_or_path`` with ``from_pretrained``: a hub name (``"gpt2"``, from the
  local Hugging Face cache when ``HF_HUB_OFFLINE`` is set) or a folder written by ``save_pretrained``.
- :func:`tiny_policy` builds a small GPT-2 (:class:`TinyLMConfig`) for a *synthetic language* that
  the package defines (:class:`SyntheticLanguage`: a word-level Markov chain with an end-of-sentence
  probability), pretrains it for a few seconds on sentences sampled from that chain, so that it has a
  real reference behaviour, and caches it on disk under a hash of its config. A second call loads
  the cached folder through :func:`load_policy`.
- :func:`policy_for_scale` picks one per scale preset: ``gpu`` = pretrained GPT-2 (124M) from the
  hub, or the hub name or local folder in ``KLNOTES_POLICY``; ``cpu`` and ``smoke`` = :func:`tiny_policy`
  with the presets :data:`TINY_PRESETS`.
- :func:`gpt2_standin` saves a randomly initialised, GPT-2-shaped model (GPT-2's 50,257-token BPE
  tokenizer from files a package ships, fewer and narrower layers): ``KLNOTES_POLICY`` pointed at it
  runs the ``gpu`` scale's code path offline on a CPU (tests, dry runs that size a GPU run).

Returned models are in ``eval()`` mode (no dropout: sampling and training are then deterministic
functions of the seed), on ``device``, with ``tokenizer.pad_token`` set and left padding (prompts
are left-padded for generation).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from klnotes._scale import SCALES
from klnotes._scale import scale as current_scale
from klnotes.datafiles import read_lines
from klnotes.gpt2._checks import check_int_fields, check_number_fields

__all__ = [
    "Policy",
    "load_policy",
    "frozen",
    "TinyLMConfig",
    "TINY_PRESETS",
    "SyntheticLanguage",
    "synthetic_language",
    "tiny_policy",
    "tiny_cache_path",
    "default_cache_dir",
    "policy_for_scale",
    "gpu_policy_name",
    "gpt2_tokenizer_files",
    "gpt2_standin",
    "word_tokenizer",
    "seeded_gpt2",
    "untrained_gpt2",
    "POLICY_ENV",
    "PAD",
    "EOS",
]

#: Special tokens of the synthetic language's tokenizer.
PAD, EOS = "<pad>", "<eos>"
_CACHE_ENV = "KLNOTES_CACHE"
#: Environment variable naming the ``gpu`` scale's policy: a hub name or a local folder (default ``"gpt2"``).
POLICY_ENV = "KLNOTES_POLICY"
# Bump when the way a tiny model is built changes, so that stale caches are rebuilt.
_TINY_FORMAT = 1
_CONSONANTS, _VOWELS = "bdgklmnprstvz", "aeiou"


@dataclass(frozen=True, eq=False)
class Policy:
    r"""A causal LM and its tokenizer.

    The :math:`\pi_\theta` (or, frozen, the :math:`\pi_{\mathrm{ref}}`) of the objective
    :eq:`eq-1-objective` (:doc:`chapters 7 </book/07_gpt2_gradients>` and :doc:`8 </book/08_gpt2_training>`).

    Attributes:
        model: a ``transformers`` causal LM (``PreTrainedModel``), in ``eval()`` mode.
        tokenizer: its tokenizer, with ``pad_token`` set and ``padding_side="left"``.
        source: where it came from (hub name or folder), for messages and records.
    """

    model: Any
    tokenizer: Any
    source: str = ""

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith((".", "/", "~"))
        or os.sep in name
        and name.count("/") != 1
        or os.path.exists(os.path.expanduser(name))
    )


@contextlib.contextmanager
def _quiet():
    """Silence ``transformers``' loading/saving progress bars for the duration."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def load_policy(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Policy:
    """Load a causal LM and its tokenizer with ``from_pretrained``; return a :class:`Policy`.

    (:doc:`Chapters 7 </book/07_gpt2_gradients>` and :doc:`8 </book/08_gpt2_training>`.)

    Args:
        name_or_path: a hub name (``"gpt2"``, ``"org/name"``) or a local folder written by
            ``save_pretrained`` (paths starting with ``.``, ``/`` or ``~`` are always folders).
        device: where to put the model (default: CPU, as ``from_pretrained`` loads it).
        dtype: parameter dtype (default: the checkpoint's, float32 for GPT-2).

    When ``HF_HUB_OFFLINE`` is set, hub names are looked up in the local cache only.

    Raises:
        TypeError: ``name_or_path`` not a string or path.
        FileNotFoundError: a local folder that does not exist, or has no ``config.json``.
        TypeError: ``dtype`` not a ``torch.dtype``.
        OSError: a policy that cannot be loaded (a hub name offline and not cached, or unknown).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not isinstance(name_or_path, (str, os.PathLike)) or str(name_or_path).strip() == "":
        raise TypeError(f"name_or_path must be a hub name or a folder, got {name_or_path!r}")
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype (e.g. torch.float32), got {dtype!r}")
    name = os.fspath(name_or_path)
    kwargs: dict[str, Any] = {}
    if isinstance(name_or_path, os.PathLike) or _looks_like_path(name):
        folder = Path(name).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"policy folder {str(folder)!r} does not exist")
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"policy folder {str(folder)!r} has no config.json; expected a folder written by save_pretrained"
            )
        name = str(folder)
    elif _offline():
        kwargs["local_files_only"] = True
    try:
        with _quiet():
            tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except OSError as err:
        hint = (
            " (HF_HUB_OFFLINE is set: only the local cache is searched)"
            if "local_files_only" in kwargs
            else ""
        )
        raise OSError(f"cannot load policy {name!r}{hint}: {err}") from err
    _check_causal(model, name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if (
        dtype is not None
    ):  # a cast after loading: the keyword of from_pretrained differs across versions
        model.to(dtype)
    if device is not None:
        model.to(device)
    model.eval()
    return Policy(model=model, tokenizer=tokenizer, source=name)


def _check_causal(model, name: str) -> None:
    """Reject models that are not decoder-only causal LMs (e.g. a BERT folder, which ``AutoModelForCausalLM``
    loads as ``BertLMHeadModel`` but which attends both ways and has no KV cache): the logits at position 0
    must not depend on the token at position 1, and a forward pass must return a cache."""
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"policy {name!r} is an encoder-decoder model ({type(model).__name__}); klnotes needs a "
            "decoder-only causal LM such as GPT-2"
        )
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    if vocab < 2:
        raise ValueError(
            f"policy {name!r} has vocab_size={vocab}; a causal LM needs 2 tokens or more"
        )
    was_training = model.training
    model.eval()
    # Two probes, causality first and without a cache, so the reason given does not depend on which check a
    # given transformers release happens to run first: a bidirectional model is named as such.
    device = next(model.parameters()).device
    ids = torch.tensor([[0, 1], [0, vocab - 1]], device=device)
    try:
        with torch.no_grad():
            plain = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
            causal = torch.allclose(plain.logits[0, 0], plain.logits[1, 0], rtol=1e-4, atol=1e-5)
            out = (
                model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
                if causal
                else None
            )
    except Exception as err:  # noqa: BLE001 - any failure here means: not usable as a causal LM
        raise ValueError(
            f"policy {name!r} ({type(model).__name__}) fails a two-token forward pass with a cache "
            f"({type(err).__name__}: {err}); klnotes needs a decoder-only causal LM such as GPT-2"
        ) from None
    finally:
        model.train(was_training)
    cache = (
        None
        if out is None
        else next(
            (out[k] for k in ("cache", "past_key_values") if k in out and out[k] is not None), None
        )
    )
    if not causal or cache is None:
        why = (
            "its first position sees later tokens (bidirectional attention)"
            if not causal
            else "it returns no KV cache"
        )
        raise ValueError(
            f"policy {name!r} ({type(model).__name__}) is not a decoder-only causal LM: {why}. "
            "Load a model such as GPT-2 (for BERT-like models, is_decoder=False)"
        )


def frozen(policy: Policy) -> Policy:
    r"""Turn off gradients of ``policy``'s parameters (for a reference model); return it.

    The reference :math:`\pi_{\mathrm{ref}}` of :eq:`eq-1-objective`
    (:doc:`chapters 7 </book/07_gpt2_gradients>` and :doc:`8 </book/08_gpt2_training>`).
    """
    if not isinstance(policy, Policy):
        raise TypeError(
            f"policy must be a klnotes.gpt2.policies.Policy, got {type(policy).__name__}"
        )
    policy.model.requires_grad_(False)
    policy.model.eval()
    return policy


# --- the synthetic language ---------------------------------------------------------------------


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


def seeded_gpt2(
    vocab_size: int,
    *,
    n_positions: int,
    n_embd: int,
    n_layer: int,
    n_head: int,
    seed: int,
    **token_ids: int,
):
    """A randomly initialised ``GPT2LMHeadModel`` of this shape without dropout, its weights drawn
    from ``seed`` (the global random state is left as it was); ``token_ids``: ``bos_token_id``,
    ``eos_token_id``, ``pad_token_id`` of its config.

    (:doc:`Chapters 7 </book/07_gpt2_gradients>` and :doc:`8 </book/08_gpt2_training>`; the tiny
    models of :mod:`klnotes.trl_plugin`.)
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        **token_ids,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return GPT2LMHeadModel(config)


def untrained_gpt2(config: TinyLMConfig, language: SyntheticLanguage):
    """A randomly initialised GPT-2 of ``config``'s shape (seeded by ``config.seed``) over ``language``'s
    words, and its word-level tokenizer: ``(model, tokenizer)``.

    (:doc:`Chapter 8 </book/08_gpt2_training>`.)
    """
    tokenizer = word_tokenizer(language.words)
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    model = seeded_gpt2(
        len(language.words) + 2,
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        seed=config.seed,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    return model, tokenizer


def _pretrain(config: TinyLMConfig, language: SyntheticLanguage):
    """Build and pretrain the tiny GPT-2 on sentences of ``language``; return (model, tokenizer)."""
    model, tokenizer = untrained_gpt2(config, language)
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    gen = torch.Generator().manual_seed(config.seed + 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    model.train()
    max_words = min(config.n_positions - 1, 4 * round(1 / config.end_prob))
    rows = torch.arange(config.batch_size)
    for _ in range(config.pretrain_steps):
        words, lengths = language.sample_words(config.batch_size, gen, max_words=max_words)
        width = int(lengths.max()) + 1
        ids = (
            words[:, :width] + 2
        )  # word index -> token id (after <pad>, <eos>); pad to this batch only
        ids = torch.cat([ids, torch.zeros(config.batch_size, 1, dtype=torch.long)], dim=1)[
            :, :width
        ]
        ids[rows, lengths] = eos_id
        position = torch.arange(width).expand_as(ids)
        ids = ids.masked_fill(position > lengths[:, None], pad_id)
        labels = ids.masked_fill(ids == pad_id, -100)
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    return model, tokenizer


def default_cache_dir() -> Path:
    """``$KLNOTES_CACHE`` if set, else ``~/.cache/klnotes``.

    (:doc:`Chapters 7 </book/07_gpt2_gradients>` and :doc:`8 </book/08_gpt2_training>`.)
    """
    value = os.environ.get(_CACHE_ENV, "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "klnotes"


def tiny_cache_path(
    config: TinyLMConfig = TinyLMConfig(), cache_dir: str | os.PathLike | None = None
) -> Path:
    """Folder where :func:`tiny_policy` keeps the model of ``config``: ``<cache>/tiny-lm-<hash>``.

    (:doc:`Chapters 7 </book/07_gpt2_gradients>` and :doc:`8 </book/08_gpt2_training>`.)
    """
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return base / f"tiny-lm-{config.key()}"


def tiny_policy(
    config: TinyLMConfig = TinyLMConfig(),
    cache_dir: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
) -> Policy:
    """The tiny GPT-2 of ``config``, pretrained on its synthetic language; cached on disk.

    (:doc:`Chapters 7 </book/07_gpt2_gradients>` and :doc:`8 </book/08_gpt2_training>` at the
    ``smoke`` and ``cpu`` scales.)

    If :func:`tiny_cache_path` holds a saved model it is loaded with :func:`load_policy` (cache hit);
    otherwise the model is pretrained (seconds on a CPU at the presets' sizes), saved there with
    ``save_pretrained`` (atomically: written to a temporary folder, then renamed) and loaded back, so
    that a hit and a miss return the same weights.

    A cached folder that cannot be loaded (damaged files) is removed and rebuilt, with a warning.

    Raises:
        TypeError: ``config`` not a :class:`TinyLMConfig`. ValueError: pretraining diverged (nothing is
            cached). OSError: a cache that cannot be removed or, rebuilt, cannot be loaded (names the folder).
    """
    if not isinstance(config, TinyLMConfig):
        raise TypeError(f"config must be a TinyLMConfig, got {type(config).__name__}")
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(f"cache_dir must be a folder path or None, got {cache_dir!r}")
    path = tiny_cache_path(config, cache_dir)
    if (path / "config.json").is_file():
        try:
            return load_policy(path, device=device)
        except Exception as err:  # noqa: BLE001 - a damaged cache (truncated weights, bad json): rebuild it
            import warnings

            warnings.warn(
                f"the tiny-model cache {str(path)!r} is unreadable ({type(err).__name__}: "
                f"{str(err)[:160]}); rebuilding it",
                RuntimeWarning,
                stacklevel=2,
            )
            broken = path.with_name(f"{path.name}.broken-{os.getpid()}")
            try:
                os.replace(path, broken)
                shutil.rmtree(broken, ignore_errors=True)
            except OSError as move_err:
                raise OSError(
                    f"the tiny-model cache {str(path)!r} is unreadable ({err}) and cannot be removed "
                    f"({move_err}); delete that folder by hand, or set KLNOTES_CACHE to another folder"
                ) from err
    if not (path / "config.json").is_file():
        model, tokenizer = _pretrain(config, synthetic_language(config))
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise ValueError(
                f"pretraining the tiny model diverged (non-finite weights) with {config!r}; lower "
                "TinyLMConfig.lr. Nothing was cached"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp-", dir=path.parent))
        try:
            with _quiet():
                model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "klnotes_tiny_lm.json").write_text(
                json.dumps(dataclasses.asdict(config), indent=1)
            )
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
            try:
                os.replace(tmp, path)
            except OSError:  # another process saved it first: use theirs
                if not (path / "config.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    try:
        return load_policy(path, device=device)
    except Exception as err:  # noqa: BLE001
        raise OSError(
            f"the tiny-model cache {str(path)!r} was just built but cannot be loaded ({type(err).__name__}: "
            f"{err}); delete that folder, or set KLNOTES_CACHE to a writable folder on another disk"
        ) from err


def gpu_policy_name() -> str:
    """The ``gpu`` scale's policy: ``$KLNOTES_POLICY`` if set (a hub name or a local folder written by
    ``save_pretrained``, e.g. GPT-2 on disk for an offline machine, or :func:`gpt2_standin`), else ``"gpt2"``.

    (:doc:`Chapters 7 </book/07_gpt2_gradients>` and :doc:`8 </book/08_gpt2_training>` at the ``gpu`` scale.)
    """
    value = os.environ.get(POLICY_ENV, "").strip()
    return value if value else "gpt2"


def policy_for_scale(
    scale: str | None = None,
    *,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Policy:
    """The policy of a scale preset: ``gpu`` = GPT-2 124M (``load_policy(gpu_policy_name())``: ``"gpt2"``
    unless ``KLNOTES_POLICY`` names another hub model or a local folder), ``cpu`` / ``smoke`` =
    :func:`tiny_policy` with :data:`TINY_PRESETS`. ``scale=None`` uses :func:`klnotes.scale`.

    (:doc:`Chapters 7 </book/07_gpt2_gradients>` and :doc:`8 </book/08_gpt2_training>`.)

    Raises:
        ValueError: unknown scale (lists the allowed ones).
    """
    scale = current_scale() if scale is None else scale
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; allowed: {', '.join(SCALES)}")
    if scale == "gpu":
        return load_policy(gpu_policy_name(), device=device)
    return tiny_policy(TINY_PRESETS[scale], cache_dir, device=device)


# --- a GPT-2-shaped stand-in, built offline ------------------------------------------------------


def gpt2_tokenizer_files() -> tuple[Path, Path]:
    """``(vocab.json, merges.txt)`` of GPT-2's byte-level BPE tokenizer, shipped with klnotes.

    (:doc:`Chapters 7 </book/07_gpt2_gradients>` and :doc:`8 </book/08_gpt2_training>` at the ``gpu`` scale.)

    The files are ``klnotes/data/gpt2_vocab.json`` and ``gpt2_merges.txt`` (OpenAI's GPT-2 release,
    MIT-licensed, see ``klnotes/data/GPT2_TOKENIZER_LICENSE``: 50,257 tokens and 50,000 merges), so
    that the stand-in needs neither a download nor a package that ships them. Nothing is downloaded.

    Raises:
        FileNotFoundError: the files are missing from the installation (the message names them).
    """
    folder = Path(__file__).resolve().parents[1] / "data"
    vocab, merges = folder / "gpt2_vocab.json", folder / "gpt2_merges.txt"
    missing = [str(f) for f in (vocab, merges) if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"GPT-2's tokenizer files are missing from the klnotes installation: {missing}; "
            "reinstall klnotes (they are its package data)"
        )
    return vocab, merges


def gpt2_standin(
    path: str | os.PathLike,
    *,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 2,
    n_positions: int = 128,
    seed: int = 0,
    pretrain_steps: int = 10,
) -> Path:
    """Save a randomly initialised GPT-2-shaped causal LM with GPT-2's real tokenizer in ``path``; return it.

    (Tests of :doc:`chapters 7 </book/07_gpt2_gradients>` and :doc:`8 </book/08_gpt2_training>`'s ``gpu`` code path.)

    The model is ``GPT2LMHeadModel`` with GPT-2's vocabulary (50,257 tokens, ``<|endoftext|>`` = 50256)
    and its byte-level BPE tokenizer (:func:`gpt2_tokenizer_files`), but ``n_layer`` blocks of width
    ``n_embd`` instead of 12 of 768, so that the ``gpu`` scale's code path (``KLNOTES_POLICY=path``)
    runs on a CPU in seconds. Its weights are random, then trained for ``pretrain_steps`` Adam steps on
    texts made of the ``gpu`` task's prompts followed by a mix of its positive words and the prompts'
    words, so that it earns some reward on that task (a random 50,257-token model never says a positive
    word, and the task's advantages would all be zero). It tests code and sizing, not findings.

    Raises:
        FileNotFoundError: GPT-2's tokenizer files are not installed.
        ValueError: ``n_embd`` not divisible by ``n_head``.
    """
    from transformers import GPT2TokenizerFast

    if n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
    vocab, merges = gpt2_tokenizer_files()
    path = Path(path).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(
        vocab, path / "vocab.json"
    )  # the files' standard names, read by from_pretrained
    shutil.copyfile(merges, path / "merges.txt")
    tokenizer = GPT2TokenizerFast.from_pretrained(path)
    if len(tokenizer) != 50257:
        raise ValueError(
            f"GPT-2's tokenizer has 50257 tokens; the installed files give {len(tokenizer)}"
        )
    model = seeded_gpt2(
        len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        seed=seed,
    )
    if pretrain_steps:
        _pretrain_standin(model, tokenizer, pretrain_steps, seed)
    with _quiet():
        model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _pretrain_standin(
    model, tokenizer, steps: int, seed: int, batch_size: int = 8, n_words: int = 6
) -> None:
    """A few Adam steps of next-token cross-entropy on "prompt + words" texts of the ``gpu`` task (see
    :func:`gpt2_standin`): half the words positive, half taken from the prompts."""
    prompts, positive = read_lines("gpt2_prompts.txt"), read_lines("positive_words.txt")
    neutral = sorted({w for p in prompts for w in p.split()})
    rng = random.Random(seed)
    tokenizer.pad_token = tokenizer.eos_token
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        texts = [
            rng.choice(prompts)
            + " "
            + " ".join(
                rng.choice(positive if rng.random() < 0.5 else neutral) for _ in range(n_words)
            )
            for _ in range(batch_size)
        ]
        enc = tokenizer(texts, return_tensors="pt", padding=True)
        labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
        loss = model(**enc, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
