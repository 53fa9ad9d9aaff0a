"""Tasks: prompts and verifiable rewards that need no download.

A :class:`Task` is a tuple of prompts and a reward function ``reward(completions) -> [batch]`` on the
decoded completion texts. Both tasks here reward *words*: the reward of a completion is

    r(y) = min(#{words of y in the target set}, cap) / cap  in [0, 1]        (eq-8-reward)

(words are lower-cased, punctuation stripped). The reference model produces target words rarely, so
raising the reward means moving away from the reference, which is what the KL term resists.

- :func:`positive_words_task` (scale ``gpu``, GPT-2 124M): neutral English openings shipped in
  ``klnotes/data/gpt2_prompts.txt``; target = the positive words of ``klnotes/data/positive_words.txt``.
- :func:`synthetic_task` (scales ``cpu``/``smoke``, the tiny model of :mod:`klnotes.gpt2.policies`):
  prompts = sentence beginnings sampled from the synthetic language; target = one of its rarer words.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from klnotes._scale import SCALES
from klnotes._scale import scale as current_scale
from klnotes.datafiles import read_lines
from klnotes.gpt2 import policies

__all__ = [
    "Task",
    "WordCountReward",
    "read_lines",
    "positive_words_task",
    "synthetic_task",
    "task_for_scale",
    "TASK_FILE",
    "folder_task",
]

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


@dataclass(frozen=True)
class WordCountReward:
    r"""``r(y) = min(count of target words in y, cap) / cap`` (eq-8-reward), a float64 tensor ``[batch]``.

    :math:`r(y) = \min\big(\#\{\text{target words in } y\}, m\big)/m` with :math:`m` = ``cap``
    (:eq:`eq-8-reward`).

    Attributes:
        targets: the target words (lower case).
        cap: number of target words that earns the full reward 1.
    """

    targets: frozenset[str]
    cap: int = 4

    def __post_init__(self):
        if not self.targets or not all(isinstance(w, str) and w for w in self.targets):
            raise ValueError(f"targets must be a non-empty set of words, got {self.targets!r}")
        if isinstance(self.cap, bool) or not isinstance(self.cap, int) or self.cap < 1:
            raise ValueError(f"cap must be a positive int, got {self.cap!r}")

    def count(self, text: str) -> int:
        """Number of target words in ``text`` (lower-cased; words are runs of letters)."""
        return sum(1 for w in _WORD.findall(text.lower()) if w in self.targets)

    def __call__(self, completions: Sequence[str]) -> torch.Tensor:
        if isinstance(completions, str) or not all(isinstance(c, str) for c in completions):
            raise TypeError(
                "completions must be a sequence of decoded strings (use tokenizer.batch_decode)"
            )
        counts = torch.tensor([self.count(c) for c in completions], dtype=torch.float64)
        return counts.clamp_max(self.cap) / self.cap


@dataclass(frozen=True)
class Task:
    """Prompts and a verifiable reward.

    Its reward is the :math:`r(y)` of the objective :eq:`eq-1-objective` (:doc:`chapter 8 </book/08_gpt2_training>`).

    Fields: ``name``, a short name for records and plots; ``prompts``, a non-empty tuple of strings;
    ``reward``, a callable ``reward(completions: Sequence[str]) -> Tensor [batch]`` (float64);
    ``description``, one line saying what is rewarded.
    """

    name: str
    prompts: tuple[str, ...]
    reward: Callable[[Sequence[str]], torch.Tensor]
    description: str = ""

    def __post_init__(self):
        if (
            not isinstance(self.prompts, tuple)
            or not self.prompts
            or not all(isinstance(p, str) and p.strip() for p in self.prompts)
        ):
            raise ValueError(
                f"Task.prompts must be a non-empty tuple of non-empty strings, got {self.prompts!r}"[
                    :300
                ]
            )
        if not callable(self.reward):
            raise TypeError(f"reward must be callable, got {type(self.reward).__name__}")

    def score(self, completions: Sequence[str]) -> torch.Tensor:
        """``reward(completions)`` checked: a finite float tensor ``[len(completions)]``."""
        r = self.reward(completions)
        if (
            not isinstance(r, torch.Tensor)
            or r.shape != (len(completions),)
            or not torch.isfinite(r).all()
        ):
            raise ValueError(
                f"task {self.name!r}: reward must return a finite tensor [batch={len(completions)}]"
            )
        return r


def positive_words_task(cap: int = 4) -> Task:
    """GPT-2's task: continue neutral openings using positive words (eq-8-reward).

    (:doc:`Chapter 8 </book/08_gpt2_training>` at the ``gpu`` scale.)
    """
    return Task(
        name="positive-words",
        prompts=read_lines("gpt2_prompts.txt"),
        reward=WordCountReward(frozenset(read_lines("positive_words.txt")), cap),
        description=f"number of positive words in the completion, capped at {cap}, divided by {cap}",
    )


def synthetic_task(
    config: policies.TinyLMConfig = policies.TinyLMConfig(),
    *,
    n_prompts: int = 64,
    cap: int = 4,
    seed: int = 0,
) -> Task:
    """The tiny model's task: continue sentences of the synthetic language using its target word.

    Its reward is :eq:`eq-8-reward` with one target word (:doc:`chapter 8 </book/08_gpt2_training>`
    at the ``smoke`` and ``cpu`` scales).

    Target: the word at the first quartile of the stationary distribution (ascending), i.e. a word the
    reference says rarely but not never. Prompts: ``n_prompts`` sentence beginnings of 1-3 words
    sampled from the language with ``seed`` (deterministic).
    """
    if isinstance(n_prompts, bool) or not isinstance(n_prompts, int) or n_prompts < 1:
        raise ValueError(f"n_prompts must be an int >= 1, got {n_prompts!r}")
    if not isinstance(config, policies.TinyLMConfig):
        raise TypeError(
            f"config must be a klnotes.gpt2.policies.TinyLMConfig, got {type(config).__name__}"
        )
    language = policies.synthetic_language(config)
    order = torch.argsort(language.stationary())
    target = language.words[int(order[len(order) // 4])]
    gen = torch.Generator().manual_seed(seed)
    prompts = tuple(language.sample(n_prompts, gen, max_words=3, min_words=1))
    return Task(
        name=f"synthetic-word-{target}",
        prompts=prompts,
        reward=WordCountReward(frozenset({target}), cap),
        description=f"number of times the word {target!r} occurs in the completion, capped at {cap}, divided by {cap}",
    )


#: A policy folder holding this JSON file names its own task (``gpu`` scale with ``KLNOTES_POLICY=<folder>``):
#: ``{"task": "synthetic", "language": {TinyLMConfig fields}}`` = :func:`synthetic_task` of that language
#: (a model pretrained on it, e.g. by :mod:`klnotes.gpt2.gpu_results`). Reading it runs no code.
TASK_FILE = "klnotes_task.json"


def folder_task(folder, tokenizer=None) -> Task | None:
    """The task named by ``<folder>/klnotes_task.json`` (:data:`TASK_FILE`), or ``None`` when ``folder`` is not a
    folder or has no such file (a hub name, GPT-2 on disk: the ``gpu`` task applies).

    (:doc:`Chapter 8 </book/08_gpt2_training>`.)

    Raises:
        ValueError: a task file that is not valid JSON, names an unknown task, or whose language's words are
            missing from ``tokenizer`` (names the file).
    """
    path = Path(os.path.expanduser(str(folder))) / TASK_FILE
    if not path.is_file():
        return None
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        if (
            not isinstance(spec, dict)
            or spec.get("task") != "synthetic"
            or not isinstance(spec.get("language"), dict)
        ):
            raise ValueError('expected {"task": "synthetic", "language": {...TinyLMConfig fields}}')
        config = policies.TinyLMConfig(**spec["language"])
    except (ValueError, TypeError) as err:
        raise ValueError(f"task file {str(path)!r} is not valid: {err}") from err
    if tokenizer is not None:
        missing = sorted(
            set(policies.synthetic_language(config).words) - set(tokenizer.get_vocab())
        )
        if missing:
            raise ValueError(
                f"task file {str(path)!r}: the policy's tokenizer lacks the language's words {missing[:5]}"
            )
    return synthetic_task(config)


def task_for_scale(scale: str | None = None, tokenizer=None) -> Task:
    """The task of a scale preset: ``gpu`` = :func:`positive_words_task` (or the task the ``gpu`` policy's folder
    names, :func:`folder_task`); ``cpu``/``smoke`` =
    :func:`synthetic_task` on :data:`klnotes.gpt2.policies.TINY_PRESETS` ``[scale]``.

    (:doc:`Chapter 8 </book/08_gpt2_training>`.)

    If ``tokenizer`` is given, the synthetic task's words are checked to be in its vocabulary (so the
    task is not paired with the wrong model).

    Raises:
        ValueError: unknown scale (lists the allowed ones), or a tokenizer that lacks the task's words.
    """
    scale = current_scale() if scale is None else scale
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; allowed: {', '.join(SCALES)}")
    if scale == "gpu":
        return folder_task(policies.gpu_policy_name(), tokenizer) or positive_words_task()
    config = policies.TINY_PRESETS[scale]
    task = synthetic_task(config)
    if tokenizer is not None:
        vocab = tokenizer.get_vocab()
        missing = sorted(set(policies.synthetic_language(config).words) - set(vocab))
        if missing:
            raise ValueError(
                f"tokenizer lacks the synthetic language's words {missing[:5]} (scale {scale!r}): "
                "pair this task with policies.policy_for_scale(scale)"
            )
    return task
