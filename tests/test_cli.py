"""klnotes.cli (``klnotes audit``): real configs from verl, OpenRLHF and TRL (tests/fixtures, see its README),
every row of the chapter-9 table reached from the command line with frameworks.audit's verdict, and
clear answers for unknown, rejected and absent settings."""
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from klnotes import cli
from klnotes import frameworks as F

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).parent.parent


def run(*argv):
    """(exit status, printed text) of ``klnotes audit ...``."""
    buf = io.StringIO()
    status = cli.main(["audit", *argv], out=buf)
    return status, buf.getvalue()


def run_json(framework, *argv):
    status, text = run(framework, "--json", *argv)
    return status, json.loads(text)


def same_as_the_audit(rep):
    """The CLI's verdict equals frameworks.audit for the flags it read."""
    a = F.audit(rep["framework"], **rep["audit_flags"])
    if a.option.token_loss is None:
        assert rep["kl_term"] is None
        return a
    term = rep["kl_term"]
    assert (term["placement"], term["coefficient"], term["on_policy"], term["off_policy"]) == (
        a.option.placement, a.coefficient, a.on_policy, a.off_policy)
    assert term["clamp_effect"] == a.clamp_effect and term["off_policy_error"] == a.off_policy_error
    return a


# --- real configurations -----------------------------------------------------------------------

FIXTURE_CASES = [
    # argv, placement (None: no KL term), coefficient, on-policy objective, recommendation status, command
    (["verl", "verl/ppo_trainer.yaml"], None, None, None, "change", "algorithm.use_kl_in_reward=True"),
    (["verl", "verl/_generated_ppo_trainer.yaml"], None, None, None, "change", "algorithm.use_kl_in_reward=True"),
    (["verl", "--script", "verl/run_qwen3_4b_fsdp.sh"], "as loss", "1 - e^{-u}", "per-token forward KL", "change",
     "algorithm.use_kl_in_reward=True actor_rollout_ref.actor.use_kl_loss=False algorithm.norm_adv_by_std_in_grpo=False"),
    (["openrlhf", "--script", "openrlhf/train_ppo_ray_hybrid_engine.sh"], "in reward", "u", "sequence reverse KL",
     "already", None),
    (["openrlhf", "--script", "openrlhf/train_reinforce_baseline_hybrid_engine.sh"], "as loss", "u",
     "per-token reverse KL", "change", "--algo.kl.estimator k1 (remove --algo.kl.use_loss)"),
    (["openrlhf", "--script", "openrlhf/train_grpo_ray_hybrid_engine_v0.9.1.sh"], "as loss", "1 - e^{-u}",
     "per-token forward KL", "change", "--kl_estimator k1 (remove --use_kl_loss)"),
    (["trl", "trl/grpo_config_deepseek_r1.py"], "as loss", "u", "per-token reverse KL", "cannot", None),
    (["trl", "trl/grpo_config_deepseek_v3_2.py"], "as loss", "u", "per-token reverse KL", "cannot", None),
]


def _fixture_argv(argv):
    return [str(FIXTURES / a) if "/" in a else a for a in argv]


@pytest.mark.parametrize("argv, placement, coefficient, objective, status, command", FIXTURE_CASES,
                         ids=[c[0][-1] for c in FIXTURE_CASES])
def test_fixture_verdicts(argv, placement, coefficient, objective, status, command):
    code, rep = run_json(*_fixture_argv(argv))
    assert code == 0 and rep["problems"] == []
    same_as_the_audit(rep)
    if placement is None:
        assert rep["verdict"].startswith("no KL term")
    else:
        term = rep["kl_term"]
        assert (term["placement"], term["coefficient"], term["on_policy"]) == (placement, coefficient, objective)
    rec = rep["recommendation"]
    assert rec["status"] == status
    if command:
        assert rec["command"] == command and rec["after"]["on_policy"] == "sequence reverse KL"
    if status == "cannot":
        assert "PrincipledKLGRPOTrainer" in rec["text"]


def test_the_fixtures_are_listed_with_source_commit_and_licence():
    readme = (FIXTURES / "README.md").read_text()
    for path in FIXTURES.rglob("*"):
        if path.is_file() and path.name not in ("README.md", "LICENSE"):
            assert f"`{path.relative_to(FIXTURES)}`" in readme, path
    for project in ("verl", "openrlhf", "trl"):
        assert "Apache License" in (FIXTURES / project / "LICENSE").read_text()
    assert readme.count("github.com/") >= 8


def test_verl_defaults_come_from_the_version_and_settings_read_are_marked():
    _, rep = run_json("verl", str(FIXTURES / "verl/ppo_trainer.yaml"))
    origin = {s["key"]: s["origin"] for s in rep["settings"]}
    assert origin["algorithm.use_kl_in_reward"].endswith("ppo_trainer.yaml")  # in the file
    assert origin["actor_rollout_ref.actor.use_kl_loss"] == "default (verl v0.9.0)"  # in actor.yaml, not the file
    assert rep["defaults_from"].startswith("verl v0.9.0") and "v0.9.0" in rep["covers"]


def test_verl_overrides_apply_on_top_of_the_config_file():
    code, rep = run_json("verl", str(FIXTURES / "verl/_generated_ppo_trainer.yaml"), "algorithm.use_kl_in_reward=True",
                         "algorithm.kl_penalty=low_var_kl")
    assert code == 0 and rep["kl_term"]["on_policy"] == "none of these"
    assert rep["recommendation"]["command"] == "algorithm.kl_penalty=kl"
    same_as_the_audit(rep)


def test_launch_scripts_resolve_shell_defaults_and_skip_comments():
    args = F.args_from_script((FIXTURES / "verl/run_qwen3_4b_fsdp.sh").read_text(), "verl")
    assert "actor_rollout_ref.actor.kl_loss_coef=0.001" in args  # ${KL_LOSS_COEF:-0.001}
    assert all("." in a.split("=")[0] for a in args)
    args = F.args_from_script((FIXTURES / "openrlhf/train_grpo_ray_hybrid_engine_v0.9.1.sh").read_text(),
                                "openrlhf")
    assert args.count("--kl_estimator") == 1  # the commented "#   --kl_estimator k2" is not read


# --- every row of the chapter-9 table, from the command line ------------------------------------


def _argv_for(framework, flags, spelling="current"):
    keys = {k.kwarg: k for k in F.KEYS[framework] if k.kwarg}
    out = []
    for kwarg, value in flags.items():
        if kwarg == "trainer":
            out += ["--trainer", value]
            continue
        key = keys[kwarg]
        if framework in ("verl", "klnotes"):
            out.append(f"{key.name}={value}")
        elif framework == "openrlhf":
            name = key.alias if spelling == "old" else key.name
            out += [name] if key.kind == "flag" and value else ([] if key.kind == "flag" else [name, str(value)])
        else:
            out += [f"--{key.name}", str(value)]
    return [framework, "--", *out] if framework == "openrlhf" else [framework, *out]


ROWS = [(fw, flags) for fw in F.FRAMEWORKS for flags in F.FRAMEWORKS[fw].space]


@pytest.mark.parametrize("framework, flags", ROWS, ids=[f"{fw}-{i}" for i, (fw, _) in enumerate(ROWS)])
def test_every_table_row_is_reachable_with_the_same_verdict(framework, flags):
    argv = _argv_for(framework, flags)
    argv.insert(1, "--assume-defaults")  # the default row is built from defaults on purpose
    code, rep = run_json(*argv)
    assert code == 0 and rep["problems"] == []
    assert rep["audit_flags"] == {**F.flag_space(framework), **flags}
    a = same_as_the_audit(rep)
    if a.option.placement == "not implemented":
        assert rep["verdict"].startswith("rejected by the framework") and "NotImplementedError" in rep["verdict"]
    rec = rep["recommendation"]
    if rec["status"] == "change":  # the recommended change does what it says
        after = dict(rep["audit_flags"])
        for change in rec["changes"]:
            after[next(k.kwarg for k in F.KEYS[framework] if k.name == change["key"])] = change["to"]
        assert F.audit(framework, **after).on_policy == "sequence reverse KL"
    assert (rec["status"] == "already") == (a.on_policy == "sequence reverse KL")


@pytest.mark.parametrize("flags", F.FRAMEWORKS["openrlhf"].space)
def test_openrlhf_old_spelling_gives_the_same_verdict(flags):
    _, new = run_json(*_argv_for("openrlhf", flags))
    _, old = run_json(*_argv_for("openrlhf", flags, "old"))
    assert old["audit_flags"] == new["audit_flags"] and old["verdict"] == new["verdict"]
    if any(k != "use_kl_loss" or v for k, v in flags.items()):
        assert any("older flag spelling" in n for n in old["notes"])


# --- unknown, rejected and absent settings -------------------------------------------------------


@pytest.mark.parametrize("argv, closest", [
    (["verl", "actor_rollout_ref.actor.use_kl_loss=True", "actor_rollout_ref.actor.kl_loss_type=low_var"],
     "closest: 'low_var_kl'"),
    (["verl", "algorithm.use_kl_in_rewards=True"], "closest known: 'algorithm.use_kl_in_reward'"),
    (["verl", "algorithm.use_kl_loss=True"], "closest known: 'actor_rollout_ref.actor.use_kl_loss'"),
    (["openrlhf", "--", "--algo.kl.estimator", "k4"], "closest: 'k3'"),
    (["openrlhf", "--", "--algo.kl.init_cof", "0.1"], "closest known: '--algo.kl.init_coef'"),
    (["openrlhf", "--", "--init_kl_cof", "0.1"], "closest known: '--init_kl_coef'"),
    (["trl", "--bta", "0.04"], "closest known: 'beta'"),
    (["trl", "--loss_type", "dapo2"], "closest: 'dapo'"),
    (["vrel"], "closest: 'verl'"),
])
def test_unknown_keys_and_values_name_the_closest_known_one(argv, closest):
    code, text = run(*argv)
    assert code == 2 and closest in text


def test_settings_the_framework_rejects_are_reported_as_such():
    code, rep = run_json("verl", "algorithm.use_kl_in_reward=True", "algorithm.kl_penalty=full")
    assert code == 0 and rep["verdict"].startswith("rejected by the framework: verl rejects algorithm.kl_penalty=full")
    assert rep["recommendation"]["command"] == "algorithm.kl_penalty=kl"
    code, rep = run_json("openrlhf", "--", "--algo.kl.use_loss", "--kl_estimator", "k3")
    assert rep["verdict"].startswith("rejected by the framework") and "mixes the old flag spelling" in rep["verdict"]
    _, rep = run_json("verl", "actor_rollout_ref.actor.use_kl_loss=True", "actor_rollout_ref.actor.kl_loss_type=k3+")
    assert any("v0.8.0" in n for n in rep["notes"])


@pytest.mark.parametrize("argv, why", [
    (["verl"], "both False"),
    (["verl", "actor_rollout_ref.actor.use_kl_loss=True", "actor_rollout_ref.actor.kl_loss_coef=0"], "weight 0"),
    (["openrlhf", "--", "--algo.kl.init_coef", "0"], "<= 0 turns the KL term off"),
    (["trl"], "beta=0"),
])
def test_no_kl_term_says_why(argv, why):
    code, rep = run_json(argv[0], "--assume-defaults", *argv[1:])
    assert code == 0 and rep["kl_term"] is None
    assert rep["verdict"].startswith("no KL term") and why in rep["verdict"]


@pytest.mark.parametrize("estimator, objective", [
    ("rloo", "sequence reverse KL"), ("remax", "sequence reverse KL"), ("reinforce_plus_plus", "sequence reverse KL"),
    ("reinforce_plus_plus_baseline", "sequence reverse KL"), ("gpg", "sequence reverse KL"), ("opo", "sequence reverse KL"),
    ("grpo_vectorized", "none of these"), ("grpo_passk", "none of these"), ("gdpo", "nothing"),
])
def test_every_verl_estimator_with_the_kl_in_the_reward_gets_its_verdict(estimator, objective):
    _, rep = run_json("verl", "algorithm.use_kl_in_reward=True", f"algorithm.adv_estimator={estimator}")
    assert rep["kl_term"]["on_policy"] == objective and rep["kl_term"]["advantage_estimator"]
    _, rep = run_json("verl", f"algorithm.adv_estimator={estimator}")  # no KL in the reward: irrelevant
    assert rep["verdict"].startswith("no KL term")


def test_estimators_the_audit_does_not_model_are_not_given_a_verdict():
    _, rep = run_json("verl", "algorithm.use_kl_in_reward=True", "algorithm.adv_estimator=optimal_token_baseline")
    assert rep["verdict"].startswith("not modelled") and rep["kl_term"] is None
    assert "sum_pi_squared" in rep["verdict"]


def test_trl_reads_yaml_json_and_flags_the_same(tmp_path):
    (tmp_path / "c.yaml").write_text("beta: 0.04\nuse_bias_correction_kl: false\nnum_iterations: 2\n")
    (tmp_path / "c.json").write_text(json.dumps({"beta": 0.04, "use_bias_correction_kl": False, "num_iterations": 2}))
    reps = [run_json("trl", str(tmp_path / "c.yaml"))[1], run_json("trl", str(tmp_path / "c.json"))[1],
            run_json("trl", "--beta", "0.04", "--use_bias_correction_kl", "false", "--num_iterations", "2")[1]]
    assert all(r["verdict"] == reps[0]["verdict"] for r in reps)
    assert reps[0]["kl_term"]["on_policy"] == "per-token forward KL"
    assert reps[0]["off_policy"]["steps"] == 2 and "num_iterations" in reps[0]["off_policy"]["formula"]


def test_text_output_states_each_part_of_the_audit():
    code, text = run("openrlhf", "--", "--algo.kl.use_loss", "--algo.kl.estimator", "k3")
    assert code == 0
    for part in ("where:", "per-token value:", "coefficient c(u):", "on-policy:", "off-policy:", "recommendation",
                 "default (OpenRLHF v0.11.0)", "covers:"):
        assert part in text, part


def test_plot_saves_a_png(tmp_path):
    out = tmp_path / "c.png"
    code, _ = run("verl", "actor_rollout_ref.actor.use_kl_loss=True", "--plot", str(out))
    assert code == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_console_entry_point_and_python_dash_m():
    pyproject = (ROOT / "pyproject.toml").read_text()  # tomllib is Python >= 3.11 only
    assert '[project.scripts]\nklnotes = "klnotes.cli:console_main"' in pyproject
    done = subprocess.run([sys.executable, "-m", "klnotes", "audit", "verl", str(FIXTURES / "verl/ppo_trainer.yaml"),
                           "--json"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["verdict"].startswith("no KL term")


def test_verl_user_override_file_nested_or_dotted(tmp_path):
    nested = tmp_path / "override.yaml"
    nested.write_text("algorithm:\n  use_kl_in_reward: true\n  kl_penalty: low_var_kl+\n"
                      "actor_rollout_ref:\n  actor:\n    use_kl_loss: false\n")
    dotted = tmp_path / "dotted.yaml"
    dotted.write_text("algorithm.use_kl_in_reward: true\nalgorithm.kl_penalty: low_var_kl+\n")
    reps = [run_json("verl", str(nested))[1], run_json("verl", str(dotted))[1]]
    assert reps[0]["verdict"] == reps[1]["verdict"] and reps[0]["kl_term"]["on_policy"] == "none of these"
    same_as_the_audit(reps[0])
    assert any("v0.8.0" in n for n in reps[0]["notes"])
    _, rep = run_json("verl", str(nested), "algorithm.kl_ctrl.kl_coef=0")
    assert rep["verdict"].startswith("no KL term") and "weight 0" in rep["verdict"]
