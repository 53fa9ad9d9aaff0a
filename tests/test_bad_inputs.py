"""Bad inputs to the public API: each raises an error that names the argument and the bad value (and,
where there is a short list, what is allowed), never a raw error from torch, pandas or Python.

One row per case: ``(case id, call, exception type, regex the message must match)``. The regexes name
the argument and the value given.
"""

import dataclasses
import errno
import math
import os
import re
from pathlib import Path

import _tiny as shared
import pandas as pd
import pytest
import torch

from klnotes import plotting
from klnotes import trl_plugin as TP
from klnotes.analysis import exact, montecarlo, objective, sequences, weighted
from klnotes.core import coefficients, estimators, surrogates
from klnotes.gpt2 import experiments, policies, tasks
from klnotes.gpt2 import trainer as TR

NAN, INF = float("nan"), float("inf")
X = torch.zeros(2, 3)  # [batch, time] log-probabilities
MASK = torch.ones(2, 3, dtype=torch.bool)
SMOKE = experiments.PRESETS["smoke"]


def _config(**changes):
    return lambda: TR.TrainConfig(**changes)


def _tiny(**changes):
    return lambda: policies.TinyLMConfig(**changes)


def _file(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


CASES = [
    # --- trainer.TrainConfig: every field, NaN and infinite scalars included ---------------------------
    (
        "kl unknown",
        _config(kl="k4-loss"),
        ValueError,
        r"TrainConfig.kl='k4-loss' is not a known arm; allowed: none",
    ),
    (
        "beta nan",
        _config(beta=NAN),
        ValueError,
        r"TrainConfig.beta must be a number in \[0.0, inf\), got nan",
    ),
    ("beta inf", _config(beta=INF), ValueError, r"TrainConfig.beta must be a number .*got inf"),
    ("beta negative", _config(beta=-0.1), ValueError, r"TrainConfig.beta .*got -0.1"),
    (
        "lr inf",
        _config(lr=INF),
        ValueError,
        r"TrainConfig.lr must be a number in \(0.0, inf\), got inf",
    ),
    ("lr nan", _config(lr=NAN), ValueError, r"TrainConfig.lr .*got nan"),
    ("lr zero", _config(lr=0.0), ValueError, r"TrainConfig.lr .*got 0.0"),
    (
        "temperature tiny",
        _config(temperature=1e-45),
        ValueError,
        r"TrainConfig.temperature must be a number in "
        r"\[0.01, inf\), got 1e-45",
    ),
    ("temperature nan", _config(temperature=NAN), ValueError, r"TrainConfig.temperature .*got nan"),
    (
        "clip_eps 1.5",
        _config(clip_eps=1.5),
        ValueError,
        r"TrainConfig.clip_eps must be a number in \(0.0, 1.0\), got 1.5",
    ),
    (
        "group_size 1",
        _config(group_size=1),
        ValueError,
        r"TrainConfig.group_size must be an int >= 2 .*got 1",
    ),
    (
        "seed 2**70",
        _config(seed=2**70),
        ValueError,
        r"TrainConfig.seed must be an int >= 0 \(and <= 9223372036854775807\)"
        r", got 1180591620717411303424",
    ),
    ("seed negative", _config(seed=-1), ValueError, r"TrainConfig.seed .*got -1"),
    (
        "steps float",
        _config(steps=2.5),
        ValueError,
        r"TrainConfig.steps must be an int >= 0 .*got 2.5",
    ),
    ("steps bool", _config(steps=True), ValueError, r"TrainConfig.steps .*got True"),
    (
        "max_grad_norm nan",
        _config(max_grad_norm=NAN),
        ValueError,
        r"TrainConfig.max_grad_norm must be a number > 0 "
        r"or None, got nan",
    ),
    ("max_grad_norm 0", _config(max_grad_norm=0), ValueError, r"TrainConfig.max_grad_norm .*got 0"),
    (
        "reduction unknown",
        _config(reduction="mean"),
        ValueError,
        r"TrainConfig.reduction='mean'; allowed: token-mean",
    ),
    (
        "updates_per_batch 3",
        _config(updates_per_batch=3),
        ValueError,
        r"TrainConfig.updates_per_batch=3 must divide "
        r"the batch size .* = 32",
    ),
    (
        "scale_rewards str",
        _config(scale_rewards="yes"),
        ValueError,
        r"TrainConfig.scale_rewards must be True or False, "
        r"got 'yes'",
    ),
    (
        "prompts_per_step 0",
        _config(prompts_per_step=0),
        ValueError,
        r"TrainConfig.prompts_per_step .*got 0",
    ),
    (
        "max_new_tokens 0",
        _config(max_new_tokens=0),
        ValueError,
        r"TrainConfig.max_new_tokens .*got 0",
    ),
    (
        "min_new_tokens > max",
        _config(max_new_tokens=4, min_new_tokens=5),
        ValueError,
        r"TrainConfig.min_new_tokens=5 exceeds max_new_tokens=4",
    ),
    (
        "checkpoint_every negative",
        _config(checkpoint_every=-1),
        ValueError,
        r"TrainConfig.checkpoint_every .*got -1",
    ),
    # --- trainer functions ------------------------------------------------------------------------------
    (
        "kl_loss arm",
        lambda: TR.kl_loss("k9", X, X, X, MASK, 0.1),
        ValueError,
        r"unknown KL arm 'k9'; allowed: none",
    ),
    (
        "kl_loss reduction",
        lambda: TR.kl_loss("k2-loss", X, X, X, MASK, 0.1, reduction="sum"),
        ValueError,
        r"unknown reduction 'sum'; allowed: token-mean",
    ),
    (
        "kl_loss shapes",
        lambda: TR.kl_loss("k2-loss", X, torch.zeros(2, 4), X, MASK, 0.1),
        ValueError,
        r"logp and logp_ref must have exactly the same shape .*\(2, 3\) and \(2, 4\)",
    ),
    (
        "kl_loss beta nan",
        lambda: TR.kl_loss("k2-loss", X, X, X, MASK, NAN),
        ValueError,
        r"beta must be a finite "
        r"number >= 0, got nan",
    ),
    (
        "kl_loss empty",
        lambda: TR.kl_loss(
            "k2-loss",
            torch.zeros(0, 3),
            torch.zeros(0, 3),
            torch.zeros(0, 3),
            torch.ones(0, 3, dtype=torch.bool),
            0.1,
        ),
        ValueError,
        r"logp is empty \(shape \(0, 3\)\) or not \[batch, time\]",
    ),
    (
        "kl_loss mask shape",
        lambda: TR.kl_loss("k2-loss", X, X, X, torch.ones(2, 4), 0.1),
        ValueError,
        r"mask shape \(2, 4\) must equal the values' shape \(2, 3\)",
    ),
    (
        "policy_loss clip nan",
        lambda: TR.policy_loss(X, X, torch.zeros(2), MASK, NAN),
        ValueError,
        r"clip_eps must be in \(0, 1\), got nan",
    ),
    (
        "policy_loss advantages",
        lambda: TR.policy_loss(X, X, torch.zeros(3), MASK, 0.2),
        ValueError,
        r"advantages must be \[batch=2\], got shape \(3,\)",
    ),
    (
        "group_advantages 2-D",
        lambda: TR.group_advantages(torch.zeros(2, 2), 2),
        ValueError,
        r"rewards must be a non-empty \[batch\] .*got shape \(2, 2\)",
    ),
    (
        "group_advantages group 1",
        lambda: TR.group_advantages(torch.zeros(4), 1),
        ValueError,
        r"group_size must be an int >= 2 .*got 1",
    ),
    (
        "group_advantages empty",
        lambda: TR.group_advantages(torch.zeros(0), 2),
        ValueError,
        r"rewards must be .*non-empty.*got shape \(0,\)",
    ),
    (
        "group_advantages nan",
        lambda: TR.group_advantages(torch.tensor([0.0, NAN]), 2),
        ValueError,
        r"rewards must be finite, got nan at index 1",
    ),
    (
        "train config dict",
        lambda: TR.train(None, None, None, {"kl": "none"}),
        TypeError,
        r"config must be a TrainConfig, got dict",
    ),
    (
        "train policy str",
        lambda: TR.train("gpt2", None, None),
        TypeError,
        r"policy must be a klnotes.gpt2.policies.Policy, got str",
    ),
    (
        "load_metrics not a run",
        lambda: TR.load_metrics("/nonexistent-run"),
        FileNotFoundError,
        r"no metrics.csv in '/nonexistent-run'",
    ),
    # --- estimators, surrogates, coefficients, objective, exact, Monte Carlo ------------------------------
    ("estimator name", lambda: estimators.get("k9"), ValueError, r"'k9'.*k1, k2, k3"),
    (
        "estimator list",
        lambda: estimators.k1([0.0], X),
        TypeError,
        r"logp must be a torch.Tensor .*got list",
    ),
    (
        "estimator int dtype",
        lambda: estimators.k2(torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long)),
        TypeError,
        r"logp must have a floating dtype .*got torch.int64",
    ),
    (
        "estimator nan",
        lambda: estimators.k3(torch.tensor([0.0, NAN]), torch.zeros(2)),
        ValueError,
        r"logp has 1 non-finite value\(s\) \(NaN\)",
    ),
    (
        "reduce reduction",
        lambda: surrogates.reduce(X, MASK, "total"),
        ValueError,
        r"unknown reduction 'total'; allowed",
    ),
    (
        "mask not 0/1",
        lambda: surrogates.reduce(X, torch.full((2, 3), 2.0)),
        ValueError,
        r"mask must contain only 0 and 1",
    ),
    (
        "ppo eps",
        lambda: surrogates.ppo_clip_loss(X, X, 1.5),
        ValueError,
        r"clip eps must be in \(0, 1\), got 1.5",
    ),
    (
        "implementation label",
        lambda: coefficients.parse_implementation("k5 in reward"),
        ValueError,
        r"unknown implementation 'k5 in reward'; allowed",
    ),
    (
        "coefficient style",
        lambda: coefficients.closed_form("k1", "sideways", X),
        ValueError,
        r"unknown style 'sideways'; allowed",
    ),
    (
        "objective beta nan",
        lambda: objective.optimal_policy_logprobs(torch.zeros(3), torch.zeros(3), NAN),
        ValueError,
        r"beta must be a finite number > 0, got nan",
    ),
    (
        "objective shapes",
        lambda: objective.kl_divergence(torch.zeros(3), torch.zeros(4)),
        ValueError,
        r"logp and logq must have the same shape, got \(3,\) and \(4,\)",
    ),
    (
        "exact direction",
        lambda: exact.categorical_kl(torch.zeros(3), torch.zeros(3), direction="sideways"),
        ValueError,
        r"'sideways'",
    ),
    (
        "montecarlo samples n",
        lambda: montecarlo.sample_categorical(torch.full((3,), 1 / 3).log(), 0),
        ValueError,
        r"n \(the number of samples\) must be an int >= 2, got 0",
    ),
    (
        "montecarlo empty samples",
        lambda: montecarlo.mean_ci(torch.zeros(0)),
        ValueError,
        r"samples needs at least 2 samples for a variance, got n = 0",
    ),
    # --- policies -------------------------------------------------------------------------------------
    (
        "TinyLMConfig lr inf",
        _tiny(lr=INF),
        ValueError,
        r"TinyLMConfig.lr must be a number in \(0, 10\), got inf",
    ),
    (
        "TinyLMConfig end_prob nan",
        _tiny(end_prob=NAN),
        ValueError,
        r"TinyLMConfig.end_prob .*got nan",
    ),
    (
        "TinyLMConfig concentration inf",
        _tiny(concentration=INF),
        ValueError,
        r"TinyLMConfig.concentration .*got inf",
    ),
    (
        "TinyLMConfig n_words 1",
        _tiny(n_words=1),
        ValueError,
        r"TinyLMConfig.n_words must be an int >= 2 \(and <= 65\), got 1",
    ),
    (
        "TinyLMConfig seed 2**40",
        _tiny(seed=2**40),
        ValueError,
        r"TinyLMConfig.seed .*got 1099511627776",
    ),
    (
        "TinyLMConfig heads",
        _tiny(n_embd=30, n_head=4),
        ValueError,
        r"n_embd \(30\) must be divisible by n_head \(4\)",
    ),
    (
        "tiny_policy config",
        lambda: policies.tiny_policy("small"),
        TypeError,
        r"config must be a TinyLMConfig, got str",
    ),
    (
        "load_policy empty",
        lambda: policies.load_policy(""),
        TypeError,
        r"name_or_path must be a hub name or a folder, "
        r"got ''",
    ),
    ("load_policy int", lambda: policies.load_policy(3), TypeError, r"name_or_path .*got 3"),
    (
        "load_policy missing folder",
        lambda: policies.load_policy("/nonexistent/model"),
        FileNotFoundError,
        r"policy folder '/nonexistent/model' does not exist",
    ),
    (
        "load_policy dtype",
        lambda: policies.load_policy("gpt2", dtype="float32"),
        TypeError,
        r"dtype must be a torch.dtype .*got 'float32'",
    ),
    (
        "policy_for_scale",
        lambda: policies.policy_for_scale("huge"),
        ValueError,
        r"unknown scale 'huge'; allowed: smoke",
    ),
    (
        "frozen str",
        lambda: policies.frozen("gpt2"),
        TypeError,
        r"policy must be a klnotes.gpt2.policies.Policy, got str",
    ),
    # --- tasks ------------------------------------------------------------------------------------------
    (
        "Task prompts empty",
        lambda: tasks.Task("t", (), lambda c: torch.zeros(len(c))),
        ValueError,
        r"Task.prompts must be a non-empty tuple of non-empty strings, got \(\)",
    ),
    (
        "Task prompt blank",
        lambda: tasks.Task("t", ("a", " "), lambda c: torch.zeros(len(c))),
        ValueError,
        r"Task.prompts .*got \('a', ' '\)",
    ),
    (
        "Task prompts list",
        lambda: tasks.Task("t", ["a"], lambda c: torch.zeros(len(c))),
        ValueError,
        r"Task.prompts .*got \['a'\]",
    ),
    (
        "Task reward",
        lambda: tasks.Task("t", ("a",), 3),
        TypeError,
        r"reward must be callable, got int",
    ),
    (
        "WordCountReward empty",
        lambda: tasks.WordCountReward(frozenset()),
        ValueError,
        r"targets must be a non-empty set of words, got frozenset\(\)",
    ),
    (
        "WordCountReward cap",
        lambda: tasks.WordCountReward(frozenset({"a"}), cap=0),
        ValueError,
        r"cap must be a positive int, got 0",
    ),
    (
        "synthetic_task n_prompts",
        lambda: tasks.synthetic_task(n_prompts=0),
        ValueError,
        r"n_prompts must be an int >= 1, got 0",
    ),
    (
        "task_for_scale",
        lambda: tasks.task_for_scale("huge"),
        ValueError,
        r"unknown scale 'huge'; allowed",
    ),
    # --- experiments ------------------------------------------------------------------------------------
    (
        "preset name",
        lambda: experiments.preset("huge"),
        ValueError,
        r"unknown preset 'huge'; allowed: smoke, cpu, gpu",
    ),
    ("arms empty", lambda: experiments.check_arms([]), ValueError, r"no arm given; allowed: none"),
    (
        "arm unknown",
        lambda: experiments.check_arms(["k2-loss", "k9"]),
        ValueError,
        r"unknown arm 'k9'; allowed",
    ),
    (
        "Preset lr nan",
        lambda: dataclasses.replace(SMOKE, lr=NAN),
        ValueError,
        r"Preset.lr must be a number in \(0.0, inf\), got nan",
    ),
    (
        "Preset betas nan",
        lambda: dataclasses.replace(SMOKE, betas=(NAN,)),
        ValueError,
        r"Preset.betas .*got \(nan,\)",
    ),
    (
        "Preset seeds empty",
        lambda: dataclasses.replace(SMOKE, seeds=()),
        ValueError,
        r"Preset.seeds must be a non-empty list of ints .*got \(\)",
    ),
    (
        "Preset ablation_updates",
        lambda: dataclasses.replace(SMOKE, ablation_updates=(0,)),
        ValueError,
        r"Preset.ablation_updates must be a non-empty list of ints >= 1, got \(0,\)",
    ),
    (
        "RunSpec beta nan",
        lambda: experiments.RunSpec("arms", "none", NAN, 0),
        ValueError,
        r"RunSpec.beta must be a finite number >= 0, got nan",
    ),
    (
        "RunSpec seed 2**70",
        lambda: experiments.RunSpec("arms", "none", 0.5, 2**70),
        ValueError,
        r"RunSpec.seed must be an int in \[0, 9223372036854775807\], got 1180591620717411303424",
    ),
    (
        "RunSpec experiment",
        lambda: experiments.RunSpec("../x", "none", 0.5, 0),
        ValueError,
        r"RunSpec.experiment must be a name .*got '../x'",
    ),
    (
        "RunSpec arm",
        lambda: experiments.RunSpec("arms", "k9", 0.5, 0),
        ValueError,
        r"unknown arm 'k9'",
    ),
    (
        "RunSpec updates 0",
        lambda: experiments.RunSpec("arms", "none", 0.5, 0, 0),
        ValueError,
        r"RunSpec.updates_per_batch must be an int >= 1, got 0",
    ),
    (
        "run spec str",
        lambda: experiments.run("smoke", "arms/none"),
        TypeError,
        r"spec must be a RunSpec, got str",
    ),
    (
        "run steps 0",
        lambda: experiments.run("smoke", experiments.RunSpec("arms", "none", 0.5, 0), steps=0),
        ValueError,
        r"steps must be a positive int or None, got 0",
    ),
    (
        "run_arms seeds empty",
        lambda: experiments.run_arms("smoke", seeds=[]),
        ValueError,
        r"seeds must be a non-empty list of ints .*got \(\)",
    ),
    (
        "run_arms seeds 2**70",
        lambda: experiments.run_arms("smoke", seeds=[0, 2**70]),
        ValueError,
        r"seeds must be .*\(bad: 1180591620717411303424\)",
    ),
    (
        "run_arms betas nan",
        lambda: experiments.run_arms("smoke", betas=[NAN]),
        ValueError,
        r"betas must be a non-empty list of finite numbers >= 0, got \(nan,\)",
    ),
    (
        "ablation updates 0",
        lambda: experiments.run_off_policy_ablation("smoke", updates=[0]),
        ValueError,
        r"updates must be a non-empty list of ints >= 1, got \(0,\)",
    ),
    (
        "ablation beta inf",
        lambda: experiments.run_off_policy_ablation("smoke", beta=INF),
        ValueError,
        r"beta must be a finite number >= 0 or None, got inf",
    ),
    (
        "store key",
        lambda: experiments.ResultsStore("/tmp").path("../etc/passwd"),
        ValueError,
        r"bad results key '../etc/passwd'",
    ),
    (
        "store root",
        lambda: experiments.ResultsStore(3),
        TypeError,
        r"ResultsStore root must be a folder path, got 3",
    ),
    (
        "store save frame",
        lambda: experiments.ResultsStore("/tmp").save("x", [1, 2]),
        TypeError,
        r"frame must be a pandas DataFrame, got list",
    ),
    (
        "store load missing",
        lambda: experiments.ResultsStore("/nonexistent").load("arms/x"),
        FileNotFoundError,
        r"no results for 'arms/x': /nonexistent/arms/x.csv does not exist",
    ),
    (
        "final_metrics last 0",
        lambda: experiments.final_metrics(pd.DataFrame({"step": [0], "r": [1.0]}), last=0),
        ValueError,
        r"last must be an int >= 1 .*got 0",
    ),
    (
        "final_metrics empty",
        lambda: experiments.final_metrics(pd.DataFrame()),
        ValueError,
        r"empty results frame",
    ),
    (
        "plot_metric unknown",
        lambda: plotting.plot_metric(pd.DataFrame({"step": [0]}), "rewrd"),
        KeyError,
        r"no metric 'rewrd'",
    ),
    # --- TRL plug-in ------------------------------------------------------------------------------------
    (
        "PrincipledKL clip str",
        lambda: TP.PrincipledKL(clip="yes"),
        TypeError,
        r"PrincipledKL.clip must be True or False, got 'yes'",
    ),
    (
        "PrincipledKL name",
        lambda: TP.PrincipledKL(name="k3_as_loss"),
        ValueError,
        r"unknown principled KL 'k3_as_loss'; known: k1_in_reward, k2_as_loss",
    ),
    (
        "PrincipledKL level",
        lambda: TP.PrincipledKL(level="batch"),
        ValueError,
        r"unknown level 'batch'; known",
    ),
    (
        "TRL loss beta negative",
        lambda: TP.principled_kl_loss("k1_in_reward", X, X, X, MASK, beta=-1.0),
        ValueError,
        r"beta must be a finite number in \[0, inf\), got -1.0",
    ),
    (
        "TRL loss beta nan",
        lambda: TP.principled_kl_loss("k1_in_reward", X, X, X, MASK, beta=NAN),
        ValueError,
        r"beta must be a finite number in \[0, inf\), got nan",
    ),
    (
        "TRL loss shapes",
        lambda: TP.principled_kl_loss("k1_in_reward", X, torch.zeros(2, 4), X, MASK, beta=0.1),
        ValueError,
        r"shapes differ: logp \(2, 3\), logp_ref \(2, 4\), logp_old \(2, 3\), mask \(2, 3\)",
    ),
    (
        "TRL loss 1-D",
        lambda: TP.kl_coefficients("k2_as_loss", torch.zeros(3), torch.zeros(3), torch.ones(3)),
        ValueError,
        r"logp must be 2-D \[batch, time\], got shape \(3,\)",
    ),
    (
        "TRL loss clip str",
        lambda: TP.principled_kl_token_loss("k1_in_reward", X, X, X, MASK, clip="yes"),
        TypeError,
        r"clip must be True or False, got 'yes'",
    ),
    (
        "TRL loss epsilon 0",
        lambda: TP.principled_kl_token_loss("k1_in_reward", X, X, X, MASK, epsilon_low=0.0),
        ValueError,
        r"epsilon_low must be a finite number in \(0, 1\), got 0.0",
    ),
    (
        "TRL loss logp int",
        lambda: TP.principled_kl_loss("k1_in_reward", X.long(), X, X, MASK, beta=0.1),
        TypeError,
        r"logp must be a floating tensor .*got torch.int64",
    ),
    # --- issue 22, point 5: NaN, infinite or negative arguments that gave NaN, inf or negative results ---
    (
        "random_categorical scale nan",
        lambda: exact.random_categorical(4, scale=NAN),
        ValueError,
        r"scale must be a finite number >= 0, got nan",
    ),
    (
        "random_categorical scale negative",
        lambda: exact.random_categorical(4, scale=-1.0),
        ValueError,
        r"scale must be a finite number >= 0, got -1.0",
    ),
    (
        "random_categorical seed negative",
        lambda: exact.random_categorical(4, seed=-1),
        ValueError,
        r"seed must be an int in \[0, 2\*\*63\), got -1",
    ),
    (
        "random_categorical contexts 0",
        lambda: exact.random_categorical(4, contexts=0),
        ValueError,
        r"contexts must be an int >= 1 or None, got 0",
    ),
    (
        "perturb distance nan",
        lambda: exact.perturb(torch.zeros(4), NAN),
        ValueError,
        r"distance must be a finite number >= 0, got nan",
    ),
    (
        "perturb distance negative",
        lambda: exact.perturb(torch.zeros(4), -0.5),
        ValueError,
        r"distance must be a finite number >= 0, got -0.5",
    ),
    (
        "expected_k2_gradient nan",
        lambda: weighted.expected_k2_gradient(torch.tensor([0.0, NAN]), torch.zeros(2)),
        ValueError,
        r"logits has 1 non-finite value\(s\) of 2 \(first at \[\(1,\)\]\); logits must be finite",
    ),
    (
        "expected_k2_gradient ref inf",
        lambda: weighted.expected_k2_gradient(torch.zeros(2), torch.tensor([0.0, INF])),
        ValueError,
        r"ref_logits has 1 non-finite value\(s\) of 2 \(first at \[\(1,\)\]\); ref_logits must be finite",
    ),
    (
        "regularized_objective reward nan",
        lambda: objective.regularized_objective(
            torch.zeros(3), torch.zeros(3), torch.tensor([0.0, NAN, 0.0]), 0.1
        ),
        ValueError,
        r"reward has 1 non-finite entries",
    ),
    (
        "OffPolicyVariant beta nan",
        lambda: sequences.OffPolicyVariant("k2 as loss", beta=NAN),
        ValueError,
        r"OffPolicyVariant.beta must be a finite number >= 0, got nan",
    ),
    (
        "OffPolicyVariant beta negative",
        lambda: sequences.OffPolicyVariant("k2 as loss", beta=-1.0),
        ValueError,
        r"OffPolicyVariant.beta must be a finite number >= 0, got -1.0",
    ),
    (
        "TRL loss logp -inf",
        lambda: TP.principled_kl_loss("k1_in_reward", _with(X, -INF), X, X, MASK, beta=0.1),
        ValueError,
        r"logp has 1 non-finite value\(s\) \(first: -inf at \[0, 1\]\)",
    ),
    (
        "TRL loss logp_ref inf",
        lambda: TP.principled_kl_loss("k2_as_loss", X, _with(X, INF), X, MASK, beta=0.1),
        ValueError,
        r"logp_ref has 1 non-finite value\(s\)",
    ),
    (
        "estimate_seconds n_params negative",
        lambda: experiments.estimate_seconds("smoke", -5),
        ValueError,
        r"n_params must be an int >= 1, got -5",
    ),
    (
        "estimate_seconds runs nan",
        lambda: experiments.estimate_seconds("smoke", 10, runs=NAN),
        ValueError,
        r"runs must be an int >= 1, got nan",
    ),
    (
        "estimate_seconds steps negative",
        lambda: experiments.estimate_seconds("smoke", 10, steps=-2),
        ValueError,
        r"steps must be an int >= 1 or None, got -2",
    ),
    (
        "store key line break",
        lambda: experiments.ResultsStore("/tmp").path("abc\n"),
        ValueError,
        r"bad results key 'abc\\n'",
    ),
    (
        "store key trailing slash",
        lambda: experiments.ResultsStore("/tmp").path("a/"),
        ValueError,
        r"bad results key 'a/'",
    ),
    (
        "store key lock folder",
        lambda: experiments.ResultsStore("/tmp").path(".locks/x"),
        ValueError,
        r"bad results key '.locks/x'",
    ),
    (
        "store key dot",
        lambda: experiments.ResultsStore("/tmp").path("."),
        ValueError,
        r"bad results key '\.'",
    ),
]


def _with(x: torch.Tensor, value: float) -> torch.Tensor:
    """A copy of ``x`` with ``value`` at ``[0, 1]``."""
    y = x.clone()
    y[0, 1] = value
    return y


def test_the_table_is_large_and_names_are_unique():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("call, error, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_an_error_naming_the_argument_and_value(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_bad_files_are_named(tmp_path):
    """Damaged inputs read from disk: the error names the file."""
    (tmp_path / "run").mkdir()
    bad = _file(tmp_path / "run", TR.METRICS_FILE, "step,reward\n0,1\n")
    with pytest.raises(ValueError, match=rf"'{bad}' lacks the columns \['kl_token_exact'"):
        TR.load_metrics(tmp_path / "run")
    store = experiments.ResultsStore(tmp_path / "store")
    (tmp_path / "store" / "arms").mkdir(parents=True)
    cut = _file(tmp_path / "store" / "arms", "x.csv", "a,b\n1,2")
    with pytest.raises(
        ValueError, match=rf"'{cut}' ends in the middle of a line \(cut short\); delete it"
    ):
        store.load("arms/x")
    folder = _file(tmp_path, "not-a-folder", "")
    with pytest.raises(FileNotFoundError, match=rf"policy folder '{tmp_path}' has no config.json"):
        policies.load_policy(tmp_path)
    with pytest.raises(
        NotADirectoryError, match=rf"ResultsStore root '{folder}' exists and is not a folder"
    ):
        experiments.ResultsStore(folder)


def test_a_bert_folder_is_rejected_at_load(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    BertForMaskedLM(
        BertConfig(
            vocab_size=6,
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=8,
        )
    ).save_pretrained(tmp_path)
    policies.word_tokenizer(("ba", "be", "bi", "bo")).save_pretrained(tmp_path)
    # The behaviour, not one transformers release's first failing probe: rejected, the folder named, and the
    # reason (bidirectional attention, no KV cache, or a failing cached forward pass) stated.
    with pytest.raises(
        ValueError,
        match=rf"policy '{re.escape(str(tmp_path))}' \(Bert\w+\) "
        r"(is not a decoder-only causal LM: (its first position sees later tokens|"
        r"it returns no KV cache)|fails a two-token forward pass)",
    ):
        policies.load_policy(tmp_path)


def test_no_case_left_the_inputs_changed():
    assert torch.equal(X, torch.zeros(2, 3)) and bool(MASK.all()) and not math.isnan(SMOKE.lr)


@pytest.mark.parametrize(
    "settings, error, message",
    [
        (dict(beta=-0.1), ValueError, r"GRPOConfig.beta must be a finite number >= 0, got -0.1"),
        (dict(beta=NAN), ValueError, r"GRPOConfig.beta must be a finite number >= 0, got nan"),
        (
            dict(kl="k3_as_loss"),
            ValueError,
            r"unknown principled KL 'k3_as_loss'; known: k1_in_reward, k2_as_loss",
        ),
        (dict(kl=3), TypeError, r"kl must be a PrincipledKL, one of .* or None; got 3"),
    ],
    ids=["beta negative", "beta nan", "kl unknown", "kl int"],
)
def test_the_trl_trainer_rejects_bad_constructor_arguments(
    tmp_path_factory, settings, error, message
):
    pytest.importorskip("trl")
    with pytest.raises(error, match=message):
        TP.tiny_trainer(tmp_path_factory.getbasetemp() / "trl", **settings)


def test_an_unreadable_tiny_model_cache_is_rebuilt(tmp_path):
    config = shared.SMALL
    first = policies.tiny_policy(config, tmp_path)
    weights = {k: v.clone() for k, v in first.model.state_dict().items()}
    path = policies.tiny_cache_path(config, tmp_path) / "model.safetensors"
    path.unlink()  # a new file (the loaded model may still map the old one)
    path.write_bytes(b"\x00" * 100)
    with pytest.warns(
        RuntimeWarning,
        match=rf"the tiny-model cache '{path.parent}' is unreadable \(.*\); rebuilding it",
    ):
        again = policies.tiny_policy(config, tmp_path)
    for name, value in again.model.state_dict().items():
        assert torch.equal(value, weights[name]), name


# --- issue 22, points 4-5: files, folders and the environment -------------------------------------------
# One row per case: (case id, setup, exception type or None, regex). ``setup(ctx)`` prepares the case in
# ``ctx`` (tmp_path, monkeypatch, a finished training run) and returns the call. ``None``: the call must
# succeed and return True (the behaviour is checked inside it).

_RUN_TINY = shared.SMALL
_RUN_CONFIG = dataclasses.replace(
    shared.CONFIG, kl="k2-loss", group_size=2, max_new_tokens=3, steps=1, checkpoint_every=1
)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    cache = tmp_path_factory.mktemp("tiny-cache")
    policy = policies.tiny_policy(_RUN_TINY, cache)
    reference = policies.frozen(policies.tiny_policy(_RUN_TINY, cache))
    return (
        policy,
        {k: v.clone() for k, v in policy.model.state_dict().items()},
        reference,
        tasks.synthetic_task(_RUN_TINY, n_prompts=4),
    )


class _Context:
    def __init__(self, tmp_path, monkeypatch, tiny_models):
        self.tmp, self.monkeypatch, self._models = tmp_path, monkeypatch, tiny_models

    def train(self, run_dir, **changes):
        policy, initial, reference, task = self._models
        policy.model.load_state_dict(initial)
        return TR.train(
            policy,
            reference,
            task,
            dataclasses.replace(_RUN_CONFIG, **changes),
            run_dir=run_dir,
            progress=False,
        )

    def finished_run(self):
        """A run folder with a checkpoint after its one step; its checkpoint's path."""
        self.train(self.tmp / "run")
        return self.tmp / "run" / TR.CHECKPOINT

    def resume(self):
        return self.train(self.tmp / "run", steps=2)

    def edited_checkpoint(self, edit, *, sign: bool = True):
        """A finished run whose checkpoint's state went through ``edit`` (then re-signed: only the entry-level
        checks can catch it); the call resumes it."""
        from klnotes.gpt2 import checkpoint

        path = self.finished_run()
        state = torch.load(path, weights_only=True)
        edit(state)
        if sign:
            state["checksum"] = checkpoint.digest(state)
        torch.save(state, path)
        return self.resume

    def failing_writes(self, folder, err=errno.EROFS):
        """Make every lock file and folder creation under ``folder`` fail as on a read-only mount (root
        ignores permission bits, so a chmod would not do)."""
        real_open, real_mkdir = os.open, Path.mkdir
        inside = lambda p: str(Path(p).absolute()).startswith(str(folder))  # noqa: E731

        def open_(path, flags, *args, **kwargs):
            if flags & os.O_CREAT and inside(path):
                raise OSError(err, os.strerror(err), str(path))
            return real_open(path, flags, *args, **kwargs)

        def mkdir(self_, *args, **kwargs):
            if inside(self_) and not self_.is_dir():
                raise OSError(err, os.strerror(err), str(self_))
            return real_mkdir(self_, *args, **kwargs)

        self.monkeypatch.setattr(os, "open", open_)
        self.monkeypatch.setattr(Path, "mkdir", mkdir)


def _flip_a_weight_bit(ctx):
    """One bit flipped in the stored bytes of a weight tensor (the file itself, as a disk or copy would)."""
    path = ctx.finished_run()
    state = torch.load(path, weights_only=True)
    name, tensor = max(state["model"].items(), key=lambda kv: kv[1].numel())
    raw, data = tensor.contiguous().numpy().tobytes(), bytearray(path.read_bytes())
    at = data.find(raw)
    assert at >= 0, "the tensor's bytes are not stored contiguously"
    data[at + len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    return ctx.resume


def _umask_honoured(ctx):
    from klnotes.gpt2 import _runio

    old = os.umask(0o027)
    try:
        path = _runio.atomic_write(ctx.tmp / "x.csv", lambda f: f.write(b"a\n"))
        return lambda: (path.stat().st_mode & 0o777) == 0o640
    finally:
        os.umask(old)


def _stored_smoke_run(ctx):
    """A valid stored run of the smoke preset (trained for real, once) and its spec."""
    spec = experiments.RunSpec("arms", "none", 0.5, 0)
    ctx.monkeypatch.setenv("KLNOTES_RUNS", str(ctx.tmp / "runs"))
    experiments.run("smoke", spec, store=ctx.tmp / "store", progress=False)
    return spec


def _read_only_store_is_readable(ctx):
    spec = _stored_smoke_run(ctx)
    ctx.failing_writes(ctx.tmp / "store")
    return lambda: len(experiments.run("smoke", spec, store=ctx.tmp / "store", progress=False)) > 0


def _read_only_store_needing_training(ctx):
    ctx.monkeypatch.setenv("KLNOTES_RESULTS", str(ctx.tmp / "mount"))
    ctx.failing_writes(ctx.tmp / "mount")
    return lambda: experiments.run(
        "smoke", experiments.RunSpec("arms", "none", 0.5, 0), progress=False
    )


def _env_file(ctx, variable):
    ctx.monkeypatch.setenv(variable, str(_file(ctx.tmp, "a-file", "")))
    return lambda: experiments.run(
        "smoke", experiments.RunSpec("arms", "none", 0.5, 0), store=ctx.tmp / "s", progress=False
    )


def _runs_read_only(ctx):
    ctx.monkeypatch.setenv("KLNOTES_RUNS", str(ctx.tmp / "mount"))
    ctx.failing_writes(ctx.tmp / "mount")
    return lambda: experiments.run(
        "smoke", experiments.RunSpec("arms", "none", 0.5, 0), store=ctx.tmp / "s", progress=False
    )


def _stored_rows_edited(ctx, edit):
    """A stored smoke run whose rows were replaced by ``edit(rows)``; the call asks for it again and says whether it
    was trained again (True) rather than served."""
    spec = _stored_smoke_run(ctx)
    store = experiments.ResultsStore(ctx.tmp / "store")
    frame = store.load(spec.key)
    store.save(spec.key, edit(frame))
    before = store.path(spec.key).stat().st_mtime_ns

    def call():
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", RuntimeWarning
            )  # "not valid; training again" where it says so
            again = experiments.run("smoke", spec, store=ctx.tmp / "store", progress=False)
        return store.path(spec.key).stat().st_mtime_ns != before and "config_id" in again.columns

    return call


def _preset_changed(ctx):
    """The issue's case: a stored run as the committed results were (no config_id), then a changed preset."""
    spec = _stored_smoke_run(ctx)
    store = experiments.ResultsStore(ctx.tmp / "store")
    store.save(spec.key, store.load(spec.key).drop(columns="config_id"))
    ctx.monkeypatch.setenv("KLNOTES_PRESET_OVERRIDES", '{"lr": 0.5}')
    before = store.path(spec.key).stat().st_mtime_ns

    def call():
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", RuntimeWarning
            )  # "not valid (no config_id ...); training again"
            experiments.run("smoke", spec, store=ctx.tmp / "store", progress=False)
        return store.path(spec.key).stat().st_mtime_ns != before

    return call


_CKPT = r"checkpoint '.*/run/checkpoint\.pt'"
FILE_CASES = [
    (
        "checkpoint bit flip",
        _flip_a_weight_bit,
        ValueError,
        _CKPT + r" does not match its checksum",
    ),
    (
        "checkpoint non-finite weights",
        lambda ctx: ctx.edited_checkpoint(
            lambda s: next(iter(s["model"].values())).view(-1)[0].fill_(NAN)
        ),
        ValueError,
        _CKPT
        + r" holds non-finite weights \(\d+ tensor\(s\), first '.*'\): a diverged run; delete",
    ),
    (
        "checkpoint wrong-shaped tensor",
        lambda ctx: ctx.edited_checkpoint(
            lambda s: s["model"].update({next(iter(s["model"])): torch.zeros(3, 3)})
        ),
        ValueError,
        _CKPT + r": its 'model' entry does not fit this run \(\w+Error: .+\); delete",
    ),
    (
        "checkpoint empty optimizer state",
        lambda ctx: ctx.edited_checkpoint(lambda s: s["optimizer"].update(state={})),
        ValueError,
        _CKPT
        + r": its 'optimizer' entry does not fit this run \(ValueError: the optimizer state is empty",
    ),
    (
        "checkpoint garbage generator state",
        lambda ctx: ctx.edited_checkpoint(
            lambda s: s.update(generator=torch.arange(7, dtype=torch.uint8))
        ),
        ValueError,
        _CKPT + r": its 'generator' entry does not fit this run \(\w+Error: .+\); delete",
    ),
    ("atomic write honours the umask", _umask_honoured, None, ""),
    ("read-only store with valid results is readable", _read_only_store_is_readable, None, ""),
    (
        "read-only KLNOTES_RESULTS when training is needed",
        _read_only_store_needing_training,
        OSError,
        r"results folder '.*/mount/smoke' is not writable \(Read-only file system\) \(set by KLNOTES_RESULTS=",
    ),
    (
        "KLNOTES_RESULTS is a file",
        lambda ctx: (
            lambda: (
                ctx.monkeypatch.setenv("KLNOTES_RESULTS", str(_file(ctx.tmp, "a-file", ""))),
                experiments.default_results_dir("cpu"),
            )
        ),
        NotADirectoryError,
        r"KLNOTES_RESULTS='.*/a-file' is not a folder \(it is a file\)",
    ),
    (
        "KLNOTES_RUNS is a file",
        lambda ctx: _env_file(ctx, "KLNOTES_RUNS"),
        NotADirectoryError,
        r"KLNOTES_RUNS='.*/a-file' is not a folder \(it is a file\)",
    ),
    (
        "KLNOTES_RUNS read-only",
        _runs_read_only,
        OSError,
        r"cannot create the folder '.*/mount/smoke/.*' \(Read-only file system\) \(set by KLNOTES_RUNS=",
    ),
    (
        "stored run without config_id",
        lambda ctx: _stored_rows_edited(ctx, lambda f: f.drop(columns="config_id")),
        None,
        "",
    ),
    (
        "stored run with another config_id on one row",
        lambda ctx: _stored_rows_edited(
            ctx, lambda f: f.assign(config_id=[*f["config_id"][:-1], "0123456789ab"])
        ),
        None,
        "",
    ),
    (
        "stored run with another policy on one row",
        lambda ctx: _stored_rows_edited(
            ctx, lambda f: f.assign(policy=[*f["policy"][:-1], "tiny-lm-other"])
        ),
        None,
        "",
    ),
    ("preset changed by KLNOTES_PRESET_OVERRIDES", _preset_changed, None, ""),
]


def test_the_file_table_names_are_unique():
    assert len({c[0] for c in FILE_CASES}) == len(FILE_CASES) >= 15


@pytest.mark.parametrize(
    "setup, error, message", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES]
)
def test_bad_files_folders_and_environment(
    tmp_path, monkeypatch, tiny_models, setup, error, message
):
    for variable in ("KLNOTES_RESULTS", "KLNOTES_RUNS", "KLNOTES_PRESET_OVERRIDES"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("KLNOTES_CACHE", str(tmp_path / "cache"))
    call = setup(_Context(tmp_path, monkeypatch, tiny_models))
    if error is None:
        assert call() is True
    else:
        with pytest.raises(error, match=message):
            call()
