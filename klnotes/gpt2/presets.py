"""Scale presets of :doc:`chapters 7 </book/07_gpt2_gradients>` and
:doc:`8 </book/08_gpt2_training>`: what ``smoke``, ``cpu``, ``gpu`` and ``full`` mean.

A :class:`Preset` says what ``smoke`` (CI: seconds), ``cpu`` (a laptop: minutes) and ``gpu`` (one
Colab GPU: GPT-2 124M) mean: the policy, the trainer's settings, the arms, the betas and the seeds
of every experiment, and the gradient sweeps of :doc:`chapter 7 </book/07_gpt2_gradients>`.
:func:`preset` returns one by name,
``preset()`` the one of :func:`klnotes.scale`; :meth:`Preset.train_config` gives the
:class:`klnotes.gpt2.trainconfig.TrainConfig` of one run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Iterable

import pandas as pd

from klnotes._scale import SCALES, scale
from klnotes.gpt2._checks import (
    MAX_INT,
    check_betas,
    check_int_fields,
    check_number_fields,
    check_seeds,
    check_updates,
    is_int,
)
from klnotes.gpt2.trainconfig import ARMS, TrainConfig

#: Preset names: the three scales, and ``full``, the complete experiment set of the ``gpu`` scale's model
#: (several seeds, a second beta, the off-policy ablation, 2,048-sample gradient sweeps) for a datacenter
#: GPU through ``scripts/run_experiments.py --preset full``; the ``gpu`` chapters read its stored results.
PRESET_NAMES: tuple[str, ...] = SCALES + ("full",)
#: Environment variable with a JSON object of preset fields to override, e.g. ``{"steps": 2}`` (dry runs,
#: tests of the ``gpu`` code path on a CPU); applied by :func:`preset`.
OVERRIDES_ENV = "KLNOTES_PRESET_OVERRIDES"

__all__ = [
    "PRESET_NAMES",
    "OVERRIDES_ENV",
    "OFF_POLICY_PAIRS",
    "check_arms",
    "Preset",
    "PRESETS",
    "preset",
    "describe",
]

#: Off-policy ablation: each "as loss" arm and its importance-sampling corrected version.
OFF_POLICY_PAIRS: tuple[tuple[str, str], ...] = (
    ("k2-loss", "k2-loss-is"),
    ("k3-loss", "k3-loss-is"),
)


def check_arms(arms: Iterable[str]) -> tuple[str, ...]:
    """Validate arm names against :data:`klnotes.gpt2.trainconfig.ARMS`; return them as a tuple.

    The arms are the KL terms :doc:`chapter 8 </book/08_gpt2_training>` trains with: "as loss"
    (:eq:`eq-3-as-loss`), "in reward"
    (:eq:`eq-3-in-reward`) and the corrected off-policy heads (:eq:`eq-6-correction`).

    Raises:
        ValueError: an unknown arm (the message lists the allowed ones), or no arm at all.
    """
    if isinstance(arms, str):
        arms = (arms,)
    arms = tuple(arms)
    allowed = ARMS
    for arm in arms:
        if arm not in allowed:
            raise ValueError(f"unknown arm {arm!r}; allowed: {', '.join(allowed)}")
    if not arms:
        raise ValueError(f"no arm given; allowed: {', '.join(allowed)}")
    return arms


@dataclass(frozen=True)
class Preset:
    """What one scale means for :doc:`chapters 7 </book/07_gpt2_gradients>` and :doc:`8 </book/08_gpt2_training>`.

    Training (:doc:`chapter 8 </book/08_gpt2_training>`; passed to :class:`klnotes.gpt2.trainconfig.TrainConfig`):

    Attributes:
        name: ``"smoke"``, ``"cpu"`` or ``"gpu"``; also the policy (:func:`klnotes.gpt2.policies.policy_for_scale`)
            and the task (:func:`klnotes.gpt2.tasks.task_for_scale`).
        steps: policy-gradient steps per run.
        group_size: responses per prompt (GRPO group).
        prompts_per_step: prompts per rollout batch.
        max_new_tokens: response length limit.
        lr: Adam learning rate.
        temperature: sampling temperature of rollouts.
        clip_eps: PPO clip range.
        arms: the KL arms of the main comparison.
        betas: KL coefficients; the first is the main one (the paper's 0.5).
        seeds: seeds of the main comparison (bands over seeds).
        ablation_updates: updates per rollout batch in the off-policy ablation.
        ablation_seeds: its seeds.
        ablation_steps: its steps per run (``None``: ``steps``).

    Gradients (:doc:`chapter 7 </book/07_gpt2_gradients>`; :mod:`klnotes.gpt2.gradcompare`):

    Attributes:
        grad_length: response length ``L`` of the comparison.
        grad_alphas: distances along the path from the reference to the moved policy.
        grad_samples: ``None`` = exact enumeration (tiny vocabularies), else Monte Carlo samples per point.
        grad_move_steps: trainer steps without KL that move the policy away from the reference.
        grad_old_lag: how far behind (in ``alpha``) the behaviour policy ``pi_old`` is, off-policy.
    """

    name: str
    steps: int
    group_size: int
    prompts_per_step: int
    max_new_tokens: int
    lr: float
    temperature: float = 1.0
    clip_eps: float = 0.2
    arms: tuple[str, ...] = ("none", "k1-loss", "k2-loss", "k3-loss", "k1-reward")
    betas: tuple[float, ...] = (0.5,)
    seeds: tuple[int, ...] = (0,)
    ablation_updates: tuple[int, ...] = (1, 2, 4)
    ablation_seeds: tuple[int, ...] = (0,)
    ablation_steps: int | None = None
    grad_length: int = 3
    grad_alphas: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
    grad_samples: int | None = None
    grad_move_steps: int = 10
    grad_old_lag: float = 0.25

    def __post_init__(self):
        if self.name not in PRESET_NAMES:
            raise ValueError(
                f"unknown preset name {self.name!r}; allowed: {', '.join(PRESET_NAMES)}"
            )
        positive = ("steps", "group_size", "prompts_per_step", "max_new_tokens")
        positive += ("grad_length", "grad_move_steps")
        check_int_fields("Preset", self, dict.fromkeys(positive, (1, MAX_INT)))
        check_number_fields(
            "Preset", self, dict.fromkeys(("lr", "temperature"), (0.0, math.inf, False))
        )
        check_number_fields("Preset", self, {"clip_eps": (0.0, 1.0, False)})
        check_betas("Preset.betas", self.betas)
        check_seeds("Preset.seeds", self.seeds)
        check_seeds("Preset.ablation_seeds", self.ablation_seeds)
        check_updates("Preset.ablation_updates", self.ablation_updates)
        if self.ablation_steps is not None and not (
            is_int(self.ablation_steps) and self.ablation_steps >= 1
        ):
            raise ValueError(
                f"Preset.ablation_steps must be a positive int or None, got {self.ablation_steps!r}"
            )

    @property
    def scale(self) -> str:
        """The scale whose policy and task this preset uses (``full`` uses the ``gpu`` scale's)."""
        return "gpu" if self.name == "full" else self.name

    @property
    def beta(self) -> float:
        """The main KL coefficient (first of :attr:`betas`)."""
        return self.betas[0]

    def train_config(
        self,
        arm: str,
        *,
        beta: float,
        seed: int,
        updates_per_batch: int = 1,
        steps: int | None = None,
    ):
        r"""The :class:`klnotes.gpt2.trainconfig.TrainConfig` of one run of this preset.

        ``beta`` is the :math:`\beta` of the objective :eq:`eq-1-objective` (:doc:`chapter 8 </book/08_gpt2_training>`).

        Raises:
            ValueError: unknown arm (lists the allowed ones).
        """

        (arm,) = check_arms((arm,))
        return TrainConfig(
            kl=arm,
            beta=float(beta),
            group_size=self.group_size,
            prompts_per_step=self.prompts_per_step,
            max_new_tokens=self.max_new_tokens,
            updates_per_batch=int(updates_per_batch),
            clip_eps=self.clip_eps,
            lr=self.lr,
            steps=int(self.steps if steps is None else steps),
            temperature=self.temperature,
            seed=int(seed),
        )


#: The presets. ``smoke``: CI, each chapter in well under two minutes. ``cpu``: a laptop, minutes,
#: enough steps for the arms' curves to separate, 3 seeds. ``gpu``: GPT-2 124M on one Colab GPU (a T4),
#: sized so that :doc:`chapters 7 </book/07_gpt2_gradients>` and :doc:`8 </book/08_gpt2_training>`
#: each finish in about ten minutes from a cold start (one seed, the
#: paper's beta = 0.5, 512-sample gradient sweeps). Its AdamW learning rate, 5e-5, is the smallest of
#: 1e-5, 5e-5, 2e-4 at which a CPU proxy (``benchmarks/proxy_gpu_preset.py``: a GPT-2-shaped model of 0.8M parameters
#: pretrained on the synthetic language, these settings) moves far enough in 60 steps for the KL arms to
#: separate from ``none`` (at 1e-5 every arm ends within 0.012 nats of the reference); GPT-2, six times
#: wider, moves at least as far per Adam step. One seed: within a T4's ten minutes a second seed would
#: halve the steps, and the verdicts' within-run test needs 2.78 standard errors where two seeds need 12.7.
#: ``full``: the complete set on a datacenter GPU
#: (the paper's beta and a smaller one, 3 seeds, the off-policy ablation, 2,048-sample sweeps), run by
#: ``scripts/run_experiments.py --preset full``; the gpu chapters show its stored results when present.
#: Sizing (FLOPs per step, measured seconds): :func:`klnotes.gpt2.sizing.step_flops`,
#: :func:`klnotes.gpt2.sizing.estimate_seconds`, the README. Fields not listed have :class:`Preset`'s
#: defaults.
PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        name="smoke",
        steps=3,
        group_size=4,
        prompts_per_step=2,
        max_new_tokens=4,
        lr=1e-2,
        ablation_updates=(1, 2),
        ablation_steps=2,
        grad_length=2,
        grad_alphas=(0.5, 1.0),
        grad_move_steps=3,
    ),
    "cpu": Preset(
        name="cpu",
        steps=60,
        group_size=8,
        prompts_per_step=8,
        max_new_tokens=8,
        lr=3e-3,
        seeds=(0, 1, 2),
        ablation_seeds=(0, 1),
        ablation_steps=40,
        grad_alphas=(0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5),
    ),
    "gpu": Preset(
        name="gpu",
        steps=60,
        group_size=8,
        prompts_per_step=8,
        max_new_tokens=24,
        lr=5e-5,
        ablation_steps=60,
        grad_length=8,
        grad_alphas=(0.5, 1.0, 2.0),
        grad_samples=512,
        grad_move_steps=20,
    ),
    "full": Preset(
        name="full",
        steps=200,
        group_size=8,
        prompts_per_step=16,
        max_new_tokens=24,
        lr=1e-5,
        betas=(0.5, 0.05),
        seeds=(0, 1, 2),
        ablation_seeds=(0, 1),
        ablation_steps=150,
        grad_length=8,
        grad_samples=2048,
        grad_move_steps=50,
    ),
}


def _overrides() -> dict:

    text = os.environ.get(OVERRIDES_ENV, "").strip()
    if not text:
        return {}
    try:
        values = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{OVERRIDES_ENV} must be a JSON object of Preset fields, got {text!r}: {err}"
        ) from err
    fields = {f.name for f in dataclasses.fields(Preset)} - {"name"}
    if not isinstance(values, dict) or set(values) - fields:
        bad = sorted(set(values) - fields) if isinstance(values, dict) else values
        raise ValueError(
            f"{OVERRIDES_ENV}: unknown Preset fields {bad!r}; allowed: {', '.join(sorted(fields))}"
        )
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def preset(name: str | Preset | None = None) -> Preset:
    """The preset called ``name`` (``None``: the one of :func:`klnotes.scale`); a :class:`Preset` passes through.

    :doc:`Chapters 7 </book/07_gpt2_gradients>` and :doc:`8 </book/08_gpt2_training>` size every experiment from it.

    A JSON object in ``KLNOTES_PRESET_OVERRIDES`` replaces fields of a named preset, e.g.
    ``{"steps": 2, "seeds": [0]}``: a dry run of the ``gpu`` code path that measures seconds per step,
    or a test. Runs made with overrides are stored like any other: point ``KLNOTES_RESULTS`` elsewhere.

    Raises:
        ValueError: unknown name (the message lists the allowed ones); bad overrides.
    """
    if isinstance(name, Preset):
        return name
    if name is None:
        name = scale()
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; allowed: {', '.join(PRESETS)}")
    overrides = _overrides()
    return dataclasses.replace(PRESETS[name], **overrides) if overrides else PRESETS[name]


def describe(p: Preset | str | None = None) -> pd.DataFrame:
    """The preset's settings as a two-column table (for the chapters).

    (The settings table of :doc:`chapters 7 </book/07_gpt2_gradients>` and
    :doc:`8 </book/08_gpt2_training>`.)
    """
    p = preset(p)
    return pd.DataFrame(
        [(f.name, getattr(p, f.name)) for f in dataclasses.fields(p)], columns=["setting", "value"]
    )
