"""Framework releases: the KL defaults of each release range (klnotes.frameworks.versions), verl's
in-reward KL switch before v0.4.0, and TRL's process count read from the launch line."""

import io
import json

import pytest

from klnotes import cli
from klnotes.frameworks import schema, versions

#: Every TRL release after v1.9.0 whose wheel was read (versions.py cites each one's sha256).
TRL_AFTER_1_9 = (
    "1.9.1",
    "1.9.2",
    "1.10.0",
    "1.11.0",
    "1.12.0",
    "1.13.0",
    "1.14.0",
    "1.14.1",
    "1.14.2",
    "1.15.0",
    "1.16.0",
)


def run(*argv):
    buf = io.StringIO()
    status = cli.main(["audit", *argv], out=buf)
    return status, buf.getvalue()


def run_json(*argv):
    status, text = run(*argv, "--json")
    rep = json.loads(text)
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(rep, schema.JSON_SCHEMA)
    return status, rep


def setting(rep, key):
    return next(s for s in rep["settings"] if s["key"] == key)


# ---- TRL defaults per release ---------------------------------------------------------------


@pytest.mark.parametrize("release", ("1.9.0", *TRL_AFTER_1_9))
def test_every_trl_release_read_lies_in_a_range_and_cites_its_source(release):
    r = versions.release_range("trl", release)
    assert r is not None, release
    _, source = versions.defaults_for("trl", release)
    assert "between" not in source and "newer than" not in source
    # a release read from PyPI names its wheel and digest; v1.9.0 its commit
    assert f"trl-{release}-py3-none-any.whl sha256" in source or "(35def3ee)" in source


@pytest.mark.parametrize(
    "release, flipped", [(r, versions.parse_version(r) >= (1, 10, 0)) for r in TRL_AFTER_1_9]
)
def test_use_bias_correction_kl_defaults_to_true_from_trl_1_10_0(release, flipped):
    code, rep = run_json("trl", "--beta", "0.04", "--release", release)
    s = setting(rep, "use_bias_correction_kl")
    assert s["value"] is flipped and s["origin"] == f"default (trl {release})"


def test_the_same_trl_config_gets_different_verdicts_on_both_sides_of_the_flip():
    """``beta: 0.04`` alone: k3 as loss (per-token forward KL) up to 1.9.2; k3 times the
    differentiable ratio (per-token reverse KL) from 1.10.0."""
    _, old = run_json("trl", "--beta", "0.04", "--release", "1.9.2")
    _, new = run_json("trl", "--beta", "0.04", "--release", "1.10.0")
    assert old["objective"] == "per-token forward KL"
    assert new["objective"] == "per-token reverse KL"
    assert old["audit_flags"]["use_bias_correction_kl"] is False
    assert new["audit_flags"]["use_bias_correction_kl"] is True
    assert "1.9.2" in old["defaults_from"] and "6672ba32" in new["defaults_from"]


def test_the_newest_trl_defaults_match_the_installed_trl():
    trl = pytest.importorskip("trl")
    from dataclasses import fields

    if versions.parse_version(trl.__version__) < (1, 10, 0):
        pytest.skip(f"installed trl {trl.__version__} predates the flip")
    defaults = {f.name: f.default for f in fields(trl.GRPOConfig)}
    assert defaults["use_bias_correction_kl"] is True and defaults["beta"] == 0.0
    assert defaults["loss_type"] == "dapo" and defaults["num_iterations"] == 1


def test_trl_ppo_exists_up_to_1_12_0_only():
    code, rep = run_json("trl", "--trainer", "ppo", "--kl_coef", "0.05", "--release", "1.13.0")
    assert code == 2 and "no trainer=ppo" in rep["verdict"]
    code, rep = run_json(
        "trl", "--trainer", "ppo", "--kl_coef", "0.05", "--lam", "1.0", "--release", "1.12.0"
    )
    assert code == 0 and rep["objective"] == "sequence reverse KL"


def test_trl_ppo_steps_per_rollout_batch_follow_its_epochs_and_mini_batches():
    base = ("trl", "--trainer", "ppo", "--kl_coef", "0.05", "--lam", "1.0", "--release", "1.12.0")
    _, rep = run_json(*base)
    assert rep["off_policy"]["steps"] == 4  # num_ppo_epochs 4 by default: off-policy
    _, rep = run_json(*base, "--num_ppo_epochs", "1", "--num_mini_batches", "2")
    assert rep["off_policy"]["steps"] == 2
    _, rep = run_json(*base, "--num_ppo_epochs", "1")
    assert rep["off_policy"]["steps"] == 1 and rep["off_policy"]["verdict"].startswith("on-policy")


# ---- verl: the in-reward KL switch of v0.4.0 --------------------------------------------------


def test_verl_before_0_4_puts_the_kl_in_the_reward_unless_use_kl_loss():
    """``kl_coef`` given, nothing else: before v0.4.0 the KL is in the reward (k1, reward-to-go);
    from v0.4.0 ``algorithm.use_kl_in_reward`` defaults to False: no KL term."""
    args = ("verl", "algorithm.kl_ctrl.kl_coef=0.001")
    _, old = run_json(*args, "--release", "0.3.0")
    _, new = run_json(*args, "--release", "0.4.0")
    assert old["placement"] == "in reward" and old["objective"] == "sequence reverse KL"
    assert setting(old, "algorithm.use_kl_in_reward")["value"] is True
    assert "072fc9fe" in " ".join(old["notes"]) and "072fc9fe" in old["defaults_from"]
    assert new["status"] == "no KL term" and new["placement"] is None
    _, old_loss = run_json(*args, "actor_rollout_ref.actor.use_kl_loss=True", "--release", "0.3.0")
    assert old_loss["placement"] == "as loss"  # use_kl_loss switches the reward KL off


def test_verl_before_0_4_rejects_what_it_does_not_have():
    code, rep = run_json("verl", "algorithm.use_kl_in_reward=True", "--release", "0.3.0")
    assert rep["status"] == "rejected by the framework" and "072fc9fe" in rep["verdict"]
    code, rep = run_json("verl", "+algorithm.use_kl_in_reward=True", "--release", "0.3.0")
    assert rep["status"] == "audited" and any("ignores it" in n for n in rep["notes"])
    code, rep = run_json("verl", "algorithm.kl_penalty=k3", "--release", "0.3.0")
    assert rep["status"] == "rejected by the framework" and "low_var_kl" in rep["verdict"]
    code, rep = run_json(
        "verl", "algorithm.use_kl_in_reward=True", "algorithm.kl_penalty=k3", "--release", "0.4.0"
    )
    assert rep["status"] == "audited"
    code, rep = run_json("verl", "--release", "0.1.0")
    assert code == 2 and "older than the releases read" in rep["error"]


# ---- TRL: the number of processes -------------------------------------------------------------


@pytest.mark.parametrize(
    "launch, count",
    [
        ("accelerate launch --config_file zero3.yaml --num_processes 8 train_grpo.py", 8),
        ("accelerate launch --multi_gpu --num-processes=4 -m trl.scripts.grpo", 4),
        ("torchrun --nproc_per_node 4 --nnodes 2 train_grpo.py", 8),
        ("deepspeed --num_gpus 2 train_grpo.py", 2),
    ],
)
def test_trl_process_count_is_read_from_the_launch_line(tmp_path, launch, count):
    script = tmp_path / "run.sh"
    script.write_text(
        f"#!/bin/bash\n{launch} \\\n  --beta 0.04 --generation_batch_size 64 "
        "--per_device_train_batch_size 4\n"
    )
    code, rep = run_json("trl", "--script", str(script))
    s = setting(rep, "num_processes")
    assert code == 0 and rep["problems"] == [] and s["value"] == count and s["origin"] != "assumed"
    assert rep["off_policy"]["values"]["num_processes"] == count
    assert rep["off_policy"]["steps"] == 64 // (4 * count)


def test_trl_process_count_on_the_command_line():
    _, rep = run_json(
        "trl", "--beta", "0.04", "--nproc_per_node", "2", "--generation_batch_size", "32"
    )
    assert setting(rep, "num_processes")["value"] == 2 and rep["off_policy"]["steps"] == 2


@pytest.mark.parametrize(
    "extra, why", [((), "no --num_processes"), (("--multi_gpu",), "--multi_gpu")]
)
def test_an_unread_trl_process_count_is_assumed_loudly(extra, why):
    args = ("trl", "--beta", "0.04", "--generation_batch_size", "64", *extra)
    _, rep = run_json(*args)
    s = setting(rep, "num_processes")
    assert s["value"] == 1 and s["origin"] == "assumed" and why in s["written_as"]
    assert any(n.startswith("ASSUMED: 1 training process") for n in rep["notes"])
    assert rep["off_policy"]["steps"] == 8  # 64 / (8 x 1)
    _, text = run(*args)
    assert "WARNING: num_processes = 1 is ASSUMED, not read" in text
