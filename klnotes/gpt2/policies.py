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
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from klnotes._scale import SCALES
from klnotes._scale import scale as current_scale
from klnotes.datafiles import read_lines
from klnotes.gpt2.language import (
    EOS,
    PAD,
    TINY_PRESETS,
    SyntheticLanguage,
    TinyLMConfig,
    synthetic_language,
    word_tokenizer,
)

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

_CACHE_ENV = "KLNOTES_CACHE"
#: Environment variable naming the ``gpu`` scale's policy: a hub name or a local folder (default ``"gpt2"``).
POLICY_ENV = "KLNOTES_POLICY"


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
