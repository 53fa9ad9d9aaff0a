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
    """The audit with ``--json`` (before an OpenRLHF command line's ``--``)."""
    argv = list(argv)
    at = argv.index("--") if "--" in argv else len(argv)
    status, text = run(*argv[:at], "--json", *argv[at:])
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


# ---- TRL RLOO and PPO before 1.9.0 ------------------------------------------------------------


def test_trl_rloo_before_0_22_is_the_on_policy_trainer_with_its_own_names():
    """``kl_coef`` alone: 0.14.0 to 0.21.0 read it as the coefficient with num_ppo_epochs 4 (4 steps
    per rollout batch); 0.22.0 to 0.24.0 map it to beta with 1 step; 0.25.0 rejects it."""
    args = ("trl", "--trainer", "rloo", "--kl_coef", "0.1")
    code, old = run_json(*args, "--release", "0.21.0")
    assert code == 0 and setting(old, "beta")["value"] == 0.1
    assert setting(old, "beta")["written_as"] == "--kl_coef"
    assert (
        old["off_policy"]["steps"] == 4
        and "num_ppo_epochs x num_mini_batches" in (old["off_policy"]["formula"])
    )
    assert "46d09bd2" in old["defaults_from"] and old["objective"] == "sequence reverse KL"
    code, mid = run_json(*args, "--release", "0.22.0")
    assert code == 0 and setting(mid, "beta")["value"] == 0.1
    assert mid["off_policy"]["steps"] == 1 and any(
        "spells beta as kl_coef" in n for n in mid["notes"]
    )
    code, new = run_json(*args, "--release", "0.25.0")
    assert code == 2 and any(p.startswith("trl 0.25.0 has no kl_coef") for p in new["problems"])


def test_trl_rloo_settings_absent_at_a_release_exit_2_naming_release_and_flag():
    code, rep = run_json("trl", "--trainer", "rloo", "--beta", "0.1", "--release", "0.21.0")
    assert code == 2 and rep["problems"][0].startswith("trl 0.21.0 has no beta")
    code, rep = run_json("trl", "--trainer", "rloo", "--beta", "0.1", "--release", "0.22.0")
    assert code == 0
    for flag, release in (("num_ppo_epochs", "0.25.0"), ("num_iterations", "0.16.0")):
        code, rep = run_json(
            "trl", "--trainer", "rloo", "--kl_coef" if release < "0.2" else "--beta", "0.1",
            f"--{flag}", "2", "--release", release,
        )  # fmt: skip
        assert code == 2 and any(
            p.startswith(f"trl {release} has no {flag}") for p in rep["problems"]
        )


def test_trl_rloo_whitening_is_read_under_each_releases_name():
    base = ("trl", "--trainer", "rloo")
    _, old = run_json(
        *base, "--kl_coef", "0.1", "--normalize_advantage", "true", "--release", "0.21.0"
    )
    _, new = run_json(
        *base, "--beta", "0.1", "--normalize_advantages", "true", "--release", "1.9.0"
    )
    _, plain = run_json(*base, "--beta", "0.1", "--release", "1.9.0")
    assert setting(old, "normalize_advantages")["value"] is True
    flags = [r["audit_flags"]["normalize_advantages"] for r in (old, new, plain)]
    assert flags == [True, True, False] and old["advantage_estimator"] == new["advantage_estimator"]
    code, rep = run_json(
        *base, "--beta", "0.1", "--normalize_advantage", "true", "--release", "1.9.0"
    )
    assert code == 2 and "normalize_advantage" in rep["problems"][0]


def test_trl_ppo_kl_estimator_exists_from_0_17_0():
    args = ("trl", "--trainer", "ppo", "--kl_coef", "0.2", "--lam", "1.0", "--kl_estimator", "k3")
    code, old = run_json(*args, "--release", "0.16.1")
    assert code == 2 and old["problems"][0].startswith("trl 0.16.1 has no kl_estimator")
    code, new = run_json(*args, "--release", "0.17.0")
    assert code == 0 and setting(new, "beta")["value"] == 0.2  # kl_coef is read, not the default
    assert new["audit_flags"]["kl_estimator"] == "k3"


def test_trl_ppo_steps_per_rollout_batch_before_and_after_2531():
    """Before v0.17.0 a mini-batch holds gradient_accumulation_steps micro-batches (one optimizer step
    each); from v0.17.0 the micro-batches of all mini-batches share the accumulation."""
    args = ("trl", "--trainer", "ppo", "--kl_coef", "0.05", "--lam", "1.0", "--num_ppo_epochs", "1")
    more = ("--num_mini_batches", "2", "--gradient_accumulation_steps", "4")
    _, old = run_json(*args, *more, "--release", "0.16.1")
    _, new = run_json(*args, *more, "--release", "0.17.0")
    assert old["off_policy"]["steps"] == 2 and "e90117b3" in old["off_policy"]["formula"]
    assert new["off_policy"]["steps"] == 1


@pytest.mark.parametrize("table", [t for t in versions.RELEASES if t.startswith("trl:")])
def test_every_trl_trainer_range_cites_a_commit_or_a_wheel(table):
    import re

    firsts = [versions.parse_version(r.first) for r in versions.RELEASES[table]]
    assert firsts == sorted(firsts) and versions.RELEASES[table][0].first == "0.14.0"
    for r in versions.RELEASES[table]:
        assert re.search(r"\([0-9a-f]{8}\)|see the trl table", r.source), r.source


# ---- OpenRLHF releases ------------------------------------------------------------------------


def orl(release, *argv):
    return run_json("openrlhf", "--release", release, "--", *argv)


@pytest.mark.parametrize(
    "release, lambd", [("0.5.6", 0.95), ("0.5.9", 1.0), ("0.6.0", 0.95), ("0.6.4", 1.0)]
)
def test_openrlhf_lambd_default_per_release(release, lambd):
    _, rep = orl(release, "--init_kl_coef", "0.01")
    s = setting(rep, "--algo.advantage.lambd")
    assert s["value"] == lambd and s["origin"] == f"default (OpenRLHF v{release})"


def test_openrlhf_k3_switch_before_0_6_0_post1():
    code, old = orl("0.6.0", "--init_kl_coef", "0.01", "--use_kl_loss", "--use_kl_estimator_k3")
    code_new, new = orl("0.9.1", "--init_kl_coef", "0.01", "--use_kl_loss", "--kl_estimator", "k3")
    assert code == code_new == 0 and old["objective"] == new["objective"]
    assert setting(old, "--algo.kl.estimator")["value"] == "k3"
    assert setting(old, "--algo.kl.estimator")["written_as"] == "--use_kl_estimator_k3"
    _, rep = orl("0.5.0", "--init_kl_coef", "0.01")
    assert "not a flag of OpenRLHF 0.5.0" in setting(rep, "--algo.kl.use_loss")["origin"]
    code, rep = orl("0.6.0", "--init_kl_coef", "0.01", "--kl_estimator", "k3")
    assert code == 2 and rep["problems"][0].startswith("OpenRLHF 0.6.0 rejects --algo.kl.estimator")
    code, rep = orl("0.6.0.post1", "--init_kl_coef", "0.01", "--use_kl_estimator_k3")
    assert code == 2 and "0.6.0.post1 rejects --use_kl_estimator_k3" in rep["problems"][0]
    assert rep["version"]["release"] == "0.6.0.post1"


@pytest.mark.parametrize(
    "flags, before, since",
    [
        (("--use_kl_loss",), "0.5.9", "0.6.0"),
        (("--advantage_estimator", "group_norm"), "0.5.9", "0.6.0"),
        (("--advantage_estimator", "rloo"), "0.5.2", "0.5.3"),
        (("--advantage_estimator", "dr_grpo"), "0.6.3.post1", "0.6.3.post2"),
        (("--advantage_estimator", "reinforce"), "0.5.0", "0.5.1"),
    ],
)
def test_openrlhf_flags_and_estimators_absent_before_they_were_added(flags, before, since):
    code, rep = orl(before, "--init_kl_coef", "0.01", *flags)
    assert code == 2 and rep["problems"][0].startswith(f"OpenRLHF {before} rejects")
    code, rep = orl(since, "--init_kl_coef", "0.01", *flags)
    assert code == 0 and rep["problems"] == []


def test_openrlhf_flag_spelling_follows_the_release():
    code, rep = orl("0.9.1", "--algo.kl.init_coef", "0.01")
    assert code == 2 and "0.9.1 rejects the current flag spelling" in rep["problems"][0]
    code, rep = orl("0.11.0", "--init_kl_coef", "0.01")
    assert code == 2 and "0.11.0 rejects the old flag spelling" in rep["problems"][0]
    code, rep = orl("0.10.1", "--init_kl_coef", "0.01")
    assert code == 0 and "33f9d72f" in rep["defaults_from"]
    # not named with --release: the newest is assumed and the mismatch is a loud warning
    code, rep = run_json("openrlhf", "--", "--init_kl_coef", "0.01")
    assert rep["version"]["release"] == "0.11.0" and code == 0
    assert any(n.startswith("WARNING: OpenRLHF 0.11.0 rejects the old") for n in rep["notes"])


def test_every_openrlhf_range_cites_a_commit_and_lines():
    import re

    rows = versions.RELEASES["openrlhf"]
    assert [r.first for r in rows][0] == "0.5.0" and rows[-1].last == ""
    for r in rows:
        assert re.search(r"\([0-9a-f]{8}\):\d+", r.source), r.source
    for release in ("0.9.1", "0.11.0"):
        assert versions.release_range("openrlhf", release) is not None


# ---- COVERS is derived from the table ---------------------------------------------------------


def test_covers_states_the_ranges_of_the_table_and_is_not_typed_twice():
    import re
    from pathlib import Path

    from klnotes.frameworks import sources

    for table, rows in versions.RELEASES.items():
        fw = table.split(":")[0]
        for r in rows:
            assert r.first in versions.COVERS[fw], (table, r.first)
    assert "v0.2.0 to v0.3.0" in versions.COVERS["verl"]
    text = Path(sources.__file__).read_text()
    assert not re.search(r"v?\d+\.\d+\.\d+ to v?\d+\.\d+", text)


def test_trl_settings_a_release_or_trainer_lacks_are_said_to_be_unread():
    _, rep = run_json("trl", "--trainer", "rloo", "--kl_coef", "0.1", "--release", "0.21.0")
    assert setting(rep, "num_iterations")["origin"].endswith("not in trl 0.21.0: not read")
    assert setting(rep, "normalize_advantages")["origin"] == "default (trl 0.21.0)"  # as _advantage
    assert setting(rep, "loss_type")["origin"].endswith("not read by the rloo trainer")
    assert any("sequence's ratio" in n for n in rep["notes"])
    _, rep = run_json("trl", "--beta", "0.04", "--release", "0.21.0")  # GRPO reads them all
    assert not any("not read" in s["origin"] for s in rep["settings"])


def test_openrlhf_before_0_8_6_says_its_kl_value_is_not_clamped():
    args = ("--init_kl_coef", "0.01", "--use_kl_loss", "--kl_estimator", "k3")
    _, old = orl("0.8.5", *args)
    _, new = orl("0.8.6", *args)
    assert any("no [-10, 10] clamp" in n and "d90b3d1f" in n for n in old["notes"])
    assert not any("clamp" in n for n in new["notes"]) and "d90b3d1f" in new["defaults_from"]


@pytest.mark.parametrize("release", ["0.15.0", "0.19.0", "1.12.0"])
def test_trl_ppo_has_no_beta_at_any_release(release):
    """PPOConfig weighs its KL with kl_coef; TRL rejects --beta for it, and so does the audit
    (it once read --beta 0.1 as PPO's KL weight and audited with exit 0)."""
    buf = io.StringIO()
    argv = ["audit", "trl", "--trainer", "ppo", "--release", release, "--lam", "1.0"]
    assert cli.main([*argv, "--beta", "0.1"], out=buf) == 2
    assert "has no beta" in buf.getvalue() and "kl_coef" in buf.getvalue()
    assert cli.main([*argv, "--kl_coef", "0.1"], out=io.StringIO()) == 0
