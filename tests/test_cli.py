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
        a.option.placement,
        a.coefficient,
        a.on_policy,
        a.off_policy,
    )
    assert term["clamp_effect"] == a.clamp_effect and term["off_policy_error"] == a.off_policy_error
    return a


# --- real configurations -----------------------------------------------------------------------

FIXTURE_CASES = [
    # argv, placement (None: no KL term), coefficient, on-policy objective, recommendation status, command
    (
        ["verl", "verl/ppo_trainer.yaml"],
        None,
        None,
        None,
        "change",
        "algorithm.use_kl_in_reward=True",
    ),
    (
        ["verl", "verl/_generated_ppo_trainer.yaml"],
        None,
        None,
        None,
        "change",
        "algorithm.use_kl_in_reward=True",
    ),
    (
        ["verl", "--script", "verl/run_qwen3_4b_fsdp.sh"],
        "as loss",
        "1 - e^{-u}",
        "per-token forward KL",
        "change",
        "algorithm.use_kl_in_reward=True actor_rollout_ref.actor.use_kl_loss=False "
        "algorithm.norm_adv_by_std_in_grpo=False",
    ),
    (
        ["openrlhf", "--script", "openrlhf/train_ppo_ray_hybrid_engine.sh"],
        "in reward",
        "u",
        "sequence reverse KL",
        "already",
        None,
    ),
    (
        ["openrlhf", "--script", "openrlhf/train_reinforce_baseline_hybrid_engine.sh"],
        "as loss",
        "u",
        "per-token reverse KL",
        "change",
        "--algo.kl.estimator k1 (remove --algo.kl.use_loss)",
    ),
    (
        ["openrlhf", "--script", "openrlhf/train_grpo_ray_hybrid_engine_v0.9.1.sh"],
        "as loss",
        "1 - e^{-u}",
        "per-token forward KL",
        "change",
        "--kl_estimator k1 (remove --use_kl_loss)",
    ),
    (
        ["trl", "trl/grpo_config_deepseek_r1.py"],
        "as loss",
        "u",
        "per-token reverse KL",
        "cannot",
        None,
    ),
    (
        ["trl", "trl/grpo_config_deepseek_v3_2.py"],
        "as loss",
        "u",
        "per-token reverse KL",
        "cannot",
        None,
    ),
]


def _fixture_argv(argv):
    return [str(FIXTURES / a) if "/" in a else a for a in argv]


@pytest.mark.parametrize(
    "argv, placement, coefficient, objective, status, command",
    FIXTURE_CASES,
    ids=[c[0][-1] for c in FIXTURE_CASES],
)
def test_fixture_verdicts(argv, placement, coefficient, objective, status, command):
    code, rep = run_json(*_fixture_argv(argv))
    assert code == 0 and rep["problems"] == []
    same_as_the_audit(rep)
    if placement is None:
        assert rep["verdict"].startswith("no KL term")
    else:
        term = rep["kl_term"]
        assert (term["placement"], term["coefficient"], term["on_policy"]) == (
            placement,
            coefficient,
            objective,
        )
    rec = rep["recommendation"]
    assert rec["status"] == status
    if command:
        assert rec["command"] == command and rec["after"]["on_policy"] == "sequence reverse KL"
    if status == "cannot":
        assert "PrincipledKLGRPOTrainer" in rec["text"]


def test_the_fixtures_are_listed_with_source_commit_and_licence():
    readme = (FIXTURES / "README.md").read_text()
    for path in FIXTURES.rglob("*"):
        if (
            path.is_file()
            and path.name not in ("README.md", "LICENSE")
            and path.parts[-3] != "corpus"
        ):
            if path.name != "expected.csv":
                assert f"`{path.relative_to(FIXTURES)}`" in readme, path
    corpus = (
        FIXTURES / "corpus" / "README.md"
    ).read_text()  # the corpus lists its files in its own README
    for path in (FIXTURES / "corpus").glob("*/*"):
        if path.name != "LICENSE":
            assert f"`{path.relative_to(FIXTURES / 'corpus')}`" in corpus, path
            assert "Apache License" in (path.parent / "LICENSE").read_text()
    for project in ("verl", "openrlhf", "trl"):
        assert "Apache License" in (FIXTURES / project / "LICENSE").read_text()
    assert readme.count("github.com/") >= 8


def test_verl_defaults_come_from_the_version_and_settings_read_are_marked():
    _, rep = run_json("verl", str(FIXTURES / "verl/ppo_trainer.yaml"))
    origin = {s["key"]: s["origin"] for s in rep["settings"]}
    assert origin["algorithm.use_kl_in_reward"].endswith("ppo_trainer.yaml")  # in the file
    assert (
        origin["actor_rollout_ref.actor.use_kl_loss"] == "default (verl v0.9.0)"
    )  # in actor.yaml, not the file
    assert rep["defaults_from"].startswith("verl v0.9.0") and "v0.9.0" in rep["covers"]


def test_verl_overrides_apply_on_top_of_the_config_file():
    code, rep = run_json(
        "verl",
        str(FIXTURES / "verl/_generated_ppo_trainer.yaml"),
        "algorithm.use_kl_in_reward=True",
        "algorithm.kl_penalty=low_var_kl",
    )
    assert code == 0 and rep["kl_term"]["on_policy"] == "none of these"
    assert rep["recommendation"]["command"] == "algorithm.kl_penalty=kl"
    same_as_the_audit(rep)


def test_launch_scripts_resolve_shell_defaults_and_skip_comments():
    args = F.args_from_script((FIXTURES / "verl/run_qwen3_4b_fsdp.sh").read_text(), "verl")
    assert "actor_rollout_ref.actor.kl_loss_coef=0.001" in args  # ${KL_LOSS_COEF:-0.001}
    assert all("." in a.split("=")[0] for a in args)
    args = F.args_from_script(
        (FIXTURES / "openrlhf/train_grpo_ray_hybrid_engine_v0.9.1.sh").read_text(), "openrlhf"
    )
    assert args.count("--kl_estimator") == 1  # the commented "#   --kl_estimator k2" is not read


# --- every row of the chapter-9 table, from the command line ------------------------------------


def _argv_for(framework, flags, spelling="current"):
    keys = {k.kwarg: k for k in F.KEYS[framework] if k.kwarg}
    out = []
    for kwarg, value in flags.items():
        if kwarg == "trainer":
            out += ["--trainer", value]
            if value == "ppo":  # PPOTrainer is not in trl 1.13.0 and later
                out += ["--release", "1.12.0"]
            continue
        key = keys[kwarg]
        if framework in ("verl", "klnotes"):
            out.append(f"{key.name}={value}")
        elif framework == "openrlhf":
            name = key.alias if spelling == "old" else key.name
            out += (
                [name]
                if key.kind == "flag" and value
                else ([] if key.kind == "flag" else [name, str(value)])
            )
        elif kwarg == "beta" and flags.get("trainer") == "ppo":  # PPOConfig's KL weight
            out += ["--kl_coef", str(value)]
        else:
            out += [f"--{key.name}", str(value)]
    return [framework, "--", *out] if framework == "openrlhf" else [framework, *out]


ROWS = [(fw, flags) for fw in F.FRAMEWORKS for flags in F.FRAMEWORKS[fw].space]


@pytest.mark.parametrize(
    "framework, flags", ROWS, ids=[f"{fw}-{i}" for i, (fw, _) in enumerate(ROWS)]
)
def test_every_table_row_is_reachable_with_the_same_verdict(framework, flags):
    argv = _argv_for(framework, flags)
    argv.insert(1, "--assume-defaults")  # the default row is built from defaults on purpose
    code, rep = run_json(*argv)
    assert code == 0 and rep["problems"] == []
    assert rep["audit_flags"] == {**F.flag_space(framework), **flags}
    a = same_as_the_audit(rep)
    if a.option.placement == "not implemented":
        assert (
            rep["verdict"].startswith("rejected by the framework")
            and "NotImplementedError" in rep["verdict"]
        )
    rec = rep["recommendation"]
    if rec["status"] == "change":  # the recommended change does what it says
        after = dict(rep["audit_flags"])
        for change in rec["changes"]:
            after[next(k.kwarg for k in F.KEYS[framework] if k.name == change["key"])] = change[
                "to"
            ]
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


@pytest.mark.parametrize(
    "argv, closest",
    [
        (
            [
                "verl",
                "actor_rollout_ref.actor.use_kl_loss=True",
                "actor_rollout_ref.actor.kl_loss_type=low_var",
            ],
            "closest: 'low_var_kl'",
        ),
        (
            ["verl", "algorithm.use_kl_in_rewards=True"],
            "closest known: 'algorithm.use_kl_in_reward'",
        ),
        (
            ["verl", "algorithm.use_kl_loss=True"],
            "closest known: 'actor_rollout_ref.actor.use_kl_loss'",
        ),
        (["openrlhf", "--", "--algo.kl.estimator", "k4"], "closest: 'k3'"),
        (["openrlhf", "--", "--algo.kl.init_cof", "0.1"], "closest known: '--algo.kl.init_coef'"),
        (["openrlhf", "--", "--init_kl_cof", "0.1"], "closest known: '--init_kl_coef'"),
        (["trl", "--bta", "0.04"], "closest known: 'beta'"),
        (["trl", "--loss_type", "dapo2"], "closest: 'dapo'"),
        (["vrel"], "closest: 'verl'"),
    ],
)
def test_unknown_keys_and_values_name_the_closest_known_one(argv, closest):
    code, text = run(*argv)
    assert code == 2 and closest in text


def test_settings_the_framework_rejects_are_reported_as_such():
    code, rep = run_json("verl", "algorithm.use_kl_in_reward=True", "algorithm.kl_penalty=full")
    assert code == 0 and rep["verdict"].startswith(
        "rejected by the framework: verl rejects algorithm.kl_penalty=full"
    )
    assert rep["recommendation"]["command"] == "algorithm.kl_penalty=kl"
    code, rep = run_json("openrlhf", "--", "--algo.kl.use_loss", "--kl_estimator", "k3")
    assert (
        rep["verdict"].startswith("rejected by the framework")
        and "mixes the old flag spelling" in rep["verdict"]
    )
    _, rep = run_json(
        "verl",
        "actor_rollout_ref.actor.use_kl_loss=True",
        "actor_rollout_ref.actor.kl_loss_type=k3+",
    )
    assert any("v0.8.0" in n for n in rep["notes"])


@pytest.mark.parametrize(
    "argv, why",
    [
        (["verl"], "both False"),
        (
            [
                "verl",
                "actor_rollout_ref.actor.use_kl_loss=True",
                "actor_rollout_ref.actor.kl_loss_coef=0",
            ],
            "weight 0",
        ),
        (["openrlhf", "--", "--algo.kl.init_coef", "0"], "<= 0 turns the KL term off"),
        (["trl"], "beta=0"),
    ],
)
def test_no_kl_term_says_why(argv, why):
    code, rep = run_json(argv[0], "--assume-defaults", *argv[1:])
    assert code == 0 and rep["kl_term"] is None
    assert rep["verdict"].startswith("no KL term") and why in rep["verdict"]


@pytest.mark.parametrize(
    "estimator, objective",
    [
        ("rloo", "sequence reverse KL"),
        ("remax", "sequence reverse KL"),
        ("reinforce_plus_plus", "sequence reverse KL"),
        ("reinforce_plus_plus_baseline", "sequence reverse KL"),
        ("gpg", "sequence reverse KL"),
        ("grpo_vectorized", "none of these"),
        ("grpo_passk", "none of these"),
        ("gdpo", "nothing"),
    ],
)
def test_every_verl_estimator_with_the_kl_in_the_reward_gets_its_verdict(estimator, objective):
    _, rep = run_json(
        "verl", "algorithm.use_kl_in_reward=True", f"algorithm.adv_estimator={estimator}"
    )
    assert rep["kl_term"]["on_policy"] == objective and rep["kl_term"]["advantage_estimator"]
    _, rep = run_json(
        "verl", f"algorithm.adv_estimator={estimator}"
    )  # no KL in the reward: irrelevant
    assert rep["verdict"].startswith("no KL term")


@pytest.mark.parametrize(
    "estimator, why",
    [
        ("optimal_token_baseline", "sum_pi_squared"),
        ("tir_optimal_token_baseline", "multi-turn"),
        ("opo", "length-weighted"),
    ],
)
def test_estimators_the_audit_does_not_model_are_not_given_a_verdict(estimator, why):
    code, rep = run_json(
        "verl", "algorithm.use_kl_in_reward=True", f"algorithm.adv_estimator={estimator}"
    )
    assert code == 3 and rep["status"] == "not modelled" and rep["kl_term"] is None
    assert rep["verdict"].startswith("not modelled") and why in rep["verdict"]
    assert rep["objective"] is None and rep["exit_code"] == 3
    status, text = run(
        "verl", "algorithm.use_kl_in_reward=True", f"algorithm.adv_estimator={estimator}"
    )
    assert status == 3 and "exit status 3" in text and "not modelled" in text
    code, rep = run_json(
        "verl", "algorithm.kl_ctrl.kl_coef=0.001", f"algorithm.adv_estimator={estimator}"
    )
    assert code == 0 and rep["status"] == "no KL term"  # no KL in the reward: nothing to model


def test_trl_ppo_gae_with_lam_below_one_is_not_modelled_with_exit_3():
    base = ("trl", "--trainer", "ppo", "--kl_coef", "0.05", "--release", "1.12.0")
    code, rep = run_json(*base)  # lam 0.95, PPOConfig's default
    assert code == 3 and rep["status"] == "not modelled" and "lam < 1" in rep["verdict"]
    code, rep = run_json(*base, "--lam", "1.0")
    assert code == 0 and rep["objective"] == "sequence reverse KL"


def test_trl_reads_yaml_json_and_flags_the_same(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "beta: 0.04\nuse_bias_correction_kl: false\nnum_iterations: 2\n"
    )
    (tmp_path / "c.json").write_text(
        json.dumps({"beta": 0.04, "use_bias_correction_kl": False, "num_iterations": 2})
    )
    reps = [
        run_json("trl", str(tmp_path / "c.yaml"))[1],
        run_json("trl", str(tmp_path / "c.json"))[1],
        run_json(
            "trl", "--beta", "0.04", "--use_bias_correction_kl", "false", "--num_iterations", "2"
        )[1],
    ]
    assert all(r["verdict"] == reps[0]["verdict"] for r in reps)
    assert reps[0]["kl_term"]["on_policy"] == "per-token forward KL"
    assert (
        reps[0]["off_policy"]["steps"] == 2 and "num_iterations" in reps[0]["off_policy"]["formula"]
    )


def test_text_output_states_each_part_of_the_audit():
    code, text = run("openrlhf", "--", "--algo.kl.use_loss", "--algo.kl.estimator", "k3")
    assert code == 0
    for part in (
        "where:",
        "per-token value:",
        "coefficient c(u):",
        "on-policy:",
        "off-policy:",
        "recommendation",
        "default (OpenRLHF v0.11.0)",
        "covers:",
    ):
        assert part in text, part


def test_plot_saves_a_png(tmp_path):
    out = tmp_path / "c.png"
    code, _ = run("verl", "actor_rollout_ref.actor.use_kl_loss=True", "--plot", str(out))
    assert code == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_console_entry_point_and_python_dash_m():
    pyproject = (ROOT / "pyproject.toml").read_text()  # tomllib is Python >= 3.11 only
    assert '[project.scripts]\nklnotes = "klnotes.cli:console_main"' in pyproject
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "klnotes",
            "audit",
            "verl",
            str(FIXTURES / "verl/ppo_trainer.yaml"),
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["verdict"].startswith("no KL term")


def test_verl_user_override_file_nested_or_dotted(tmp_path):
    nested = tmp_path / "override.yaml"
    nested.write_text(
        "algorithm:\n  use_kl_in_reward: true\n  kl_penalty: low_var_kl+\n"
        "actor_rollout_ref:\n  actor:\n    use_kl_loss: false\n"
    )
    dotted = tmp_path / "dotted.yaml"
    dotted.write_text("algorithm.use_kl_in_reward: true\nalgorithm.kl_penalty: low_var_kl+\n")
    reps = [run_json("verl", str(nested))[1], run_json("verl", str(dotted))[1]]
    assert (
        reps[0]["verdict"] == reps[1]["verdict"]
        and reps[0]["kl_term"]["on_policy"] == "none of these"
    )
    same_as_the_audit(reps[0])
    assert any("v0.8.0" in n for n in reps[0]["notes"])
    _, rep = run_json("verl", str(nested), "algorithm.kl_ctrl.kl_coef=0")
    assert rep["verdict"].startswith("no KL term") and "weight 0" in rep["verdict"]


# --- never silently wrong: hostile files, bad values, wrappers, exit codes, schema -------------

import time  # noqa: E402

from klnotes.frameworks import schema  # noqa: E402


def _fails_fast(tmp_path, content, match, name="c.yaml", framework="verl", binary=False):
    path = tmp_path / name
    if binary:
        path.write_bytes(content)
    else:
        path.write_text(content)
    start = time.perf_counter()
    code, rep = run_json(framework, str(path))
    assert time.perf_counter() - start < 2.0
    assert code == 2 and rep["status"] == "error" and match in rep["error"], rep
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(rep, schema.JSON_SCHEMA)


def test_yaml_alias_bomb_fails_fast(tmp_path):
    lines = ["a0: &a0 {x: 1, y: 1}"] + [
        f"a{i}: &a{i} {{{', '.join(f'k{j}: *a{i - 1}' for j in range(9))}}}" for i in range(1, 10)
    ]
    _fails_fast(tmp_path, "\n".join(lines) + "\n", "more than 20,000 settings")


def test_recursive_yaml_alias_fails_fast(tmp_path):
    _fails_fast(tmp_path, "a: &a\n  b: *a\n", "contains itself")


def test_fifty_megabyte_file_fails_fast(tmp_path):
    path = tmp_path / "big.yaml"
    with open(path, "wb") as fh:
        fh.truncate(50_000_000)
    code, rep = run_json("verl", str(path))
    assert code == 2 and "50,000,000 bytes" in rep["error"]


def test_dev_zero_fails_fast():
    code, rep = run_json("verl", "/dev/zero")
    assert code == 2 and "not a regular file" in rep["error"]


def test_non_utf8_fails_fast(tmp_path):
    _fails_fast(tmp_path, b"algorithm:\n  kl_penalty: \xff\xfe\n", "not UTF-8", binary=True)


def test_deep_nesting_fails_fast(tmp_path):
    _fails_fast(tmp_path, "a: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested")


def test_huge_expression_fails_fast(tmp_path):
    _fails_fast(
        tmp_path,
        "GRPOConfig(beta=" + "+".join(["1"] * 200_000) + ")\n",
        "too deeply",
        name="c.py",
        framework="trl",
    )


@pytest.mark.parametrize("value", ["nan", "inf", "-0.01"])
def test_bad_coefficients_are_errors_naming_setting_value_and_allowed(value):
    code, rep = run_json(
        "verl", "algorithm.use_kl_in_reward=True", f"algorithm.kl_ctrl.kl_coef={value}"
    )
    assert code == 2 and "algorithm.kl_ctrl.kl_coef" in rep["error"] and value in rep["error"]
    assert "allowed: a finite number" in rep["error"]
    code, rep = run_json("trl", "--beta", value)
    assert code == 2 and "beta" in rep["error"] and "allowed" in rep["error"]


def test_unresolved_variable_is_a_clear_error(tmp_path):
    script = tmp_path / "run.sh"
    script.write_text("python3 -m verl.trainer.main_ppo algorithm.use_kl_in_reward=$USE_KL\n")
    code, rep = run_json("verl", "--script", str(script))
    assert (
        code == 2
        and "algorithm.use_kl_in_reward=$USE_KL" in rep["error"]
        and "not resolved" in rep["error"]
    )


WRAPPED = {
    "bash -c": 'bash -c "python3 -m verl.trainer.main_ppo algorithm.use_kl_in_reward=True '
    'algorithm.adv_estimator=rloo"\n',
    "ray job submit": "ray job submit --address=http://x:8265 --runtime-env-json='{}' -- python3 -m "
    "verl.trainer.main_ppo algorithm.use_kl_in_reward=True algorithm.adv_estimator=rloo\n",
    "srun + variables": "ADV=rloo\nexport KL=True\nsrun --nodes=2 python3 -m verl.trainer.main_ppo "
    "algorithm.use_kl_in_reward=${KL} algorithm.adv_estimator=$ADV\n",
    "heredoc": "cat > run.sh <<'EOF'\npython3 -m verl.trainer.main_ppo \\\n  algorithm.use_kl_in_reward=True \\\n"
    "  algorithm.adv_estimator=rloo\nEOF\nbash run.sh\n",
    "array": "ARGS=(\n  algorithm.use_kl_in_reward=True\n  algorithm.adv_estimator=rloo\n)\n"
    'python3 -m verl.trainer.main_ppo "${ARGS[@]}"\n',
}


@pytest.mark.parametrize("wrapper", list(WRAPPED))
def test_launch_wrappers_are_followed(tmp_path, wrapper):
    script = tmp_path / "run.sh"
    script.write_text(WRAPPED[wrapper])
    code, rep = run_json("verl", "--script", str(script))
    assert code == 0, rep
    assert (
        rep["audit_flags"]["use_kl_in_reward"] is True
        and rep["audit_flags"]["adv_estimator"] == "rloo"
    )
    assert rep["objective"] == "sequence reverse KL"


def test_hyphenated_flags(tmp_path):
    code, rep = run_json("trl", "--beta", "0.04", "--use-bias-correction-kl", "false")
    assert code == 0 and rep["audit_flags"]["use_bias_correction_kl"] is False
    code, rep = run_json("openrlhf", "--", "--algo.kl.use-loss", "--algo.kl.estimator", "k2")
    assert code == 2 and any("rejects '--algo.kl.use-loss'" in p for p in rep["problems"])


def test_splatted_config_is_followed_or_reported(tmp_path):
    (tmp_path / "a.py").write_text(
        "cfg = {'beta': 0.04, 'use_bias_correction_kl': False}\n"
        "args = GRPOConfig(**cfg, num_iterations=2)\n"
    )
    code, rep = run_json("trl", str(tmp_path / "a.py"))
    assert (
        code == 0
        and rep["audit_flags"]["beta"] == 0.04
        and rep["audit_flags"]["use_bias_correction_kl"] is False
    )
    (tmp_path / "b.py").write_text(
        "import yaml\ncfg = yaml.safe_load(open('x'))\nargs = GRPOConfig(**cfg, beta=0.04)\n"
    )
    code, rep = run_json("trl", str(tmp_path / "b.py"))
    assert code == 3 and any("**cfg" in u for u in rep["unread"])
    status, text = run("trl", str(tmp_path / "b.py"))
    assert status == 3 and "WARNING: not read" in text


def test_defaults_only_is_loud_and_non_zero():
    status, text = run("trl")
    assert status == 3 and "built only from defaults" in text
    assert run("trl", "--assume-defaults")[0] == 0


def test_strict_gates_on_the_sequence_reverse_kl():
    assert run("verl", "--strict", "actor_rollout_ref.actor.use_kl_loss=True")[0] == 1
    assert (
        run("verl", "--strict", "algorithm.use_kl_in_reward=True", "algorithm.adv_estimator=rloo")[
            0
        ]
        == 0
    )


def test_version_option():
    from klnotes import __version__

    buf = io.StringIO()
    assert cli.main(["--version"], out=buf) == 0 and __version__ in buf.getvalue()


def test_release_option_changes_defaults_and_is_printed():
    code, rep = run_json("trl", "--release", "0.18.0", "--assume-defaults")
    assert rep["version"]["release"] == "0.18.0" and rep["version"]["why"] == "given with --release"
    assert (
        rep["audit_flags"]["beta"] == 0.04 and rep["objective"] == "per-token forward KL"
    )  # k3 as loss
    code, rep = run_json("trl", "--assume-defaults")
    assert rep["version"]["release"] and rep["version"]["why"]  # always printed
    code, rep = run_json("trl", "--release", "0.1.0")
    assert code == 2 and "older than the releases read" in rep["error"]


def test_trl_rloo_and_ppo_configs_are_read(tmp_path):
    (tmp_path / "r.py").write_text("args = RLOOConfig(beta=0.05, num_generations=4)\n")
    code, rep = run_json("trl", str(tmp_path / "r.py"))
    assert (
        code == 0 and rep["objective"] == "sequence reverse KL" and rep["placement"] == "in reward"
    )
    (tmp_path / "p.py").write_text("args = PPOConfig(kl_coef=0.05, kl_estimator='k3')\n")
    code, rep = run_json("trl", str(tmp_path / "p.py"), "--release", "1.16.0")
    assert code == 2 and "no trainer=ppo" in rep["verdict"] and "1.12.0" in rep["verdict"]
    code, rep = run_json("trl", str(tmp_path / "p.py"), "--release", "1.12.0")
    assert (
        rep["verdict"].startswith("not modelled") and "lam" in rep["verdict"]
    )  # GAE with lam 0.95


def test_step_counts_are_stated_for_every_framework():
    _, rep = run_json(
        "openrlhf",
        "--",
        "--rollout.batch_size",
        "128",
        "--rollout.n_samples_per_prompt",
        "8",
        "--train.batch_size",
        "128",
        "--train.max_epochs",
        "1",
    )
    assert (
        rep["off_policy"]["steps"] == 8 and rep["off_policy"]["values"]["n_samples_per_prompt"] == 8
    )
    _, rep = run_json(
        "trl", "--beta", "0.04", "--steps_per_generation", "4", "--gradient_accumulation_steps", "2"
    )
    assert rep["off_policy"]["steps"] == 2 and "off-policy" in rep["off_policy"]["verdict"]
    _, rep = run_json(
        "verl",
        "algorithm.use_kl_in_reward=True",
        "data.train_batch_size=256",
        "actor_rollout_ref.actor.ppo_mini_batch_size=256",
    )
    assert rep["off_policy"]["steps"] == 1 and rep["off_policy"]["verdict"].startswith("on-policy")


def test_json_validates_against_the_schema():
    jsonschema = pytest.importorskip("jsonschema")
    for argv in (
        ["verl", "algorithm.use_kl_in_reward=True"],
        ["trl", "--beta", "0.04"],
        ["openrlhf", "--", "--algo.kl.use_loss"],
        ["verl", "nonsense.key=1", "--assume-defaults"],
    ):
        _, rep = run_json(*argv)
        jsonschema.validate(rep, schema.JSON_SCHEMA)
        assert rep["schema"] == schema.SCHEMA_ID and "recommendation" in rep


def test_trl_sequence_level_ratio_on_the_kl_is_not_modelled_with_exit_3():
    args = ("trl", "--beta", "0.04", "--importance_sampling_level", "sequence")
    code, rep = run_json(*args)  # use_bias_correction_kl True by default (trl 1.16.0)
    assert code == 3 and rep["status"] == "not modelled" and "exp(mean_t" in rep["verdict"]
    code, rep = run_json(*args, "--use_bias_correction_kl", "false")  # no ratio on the KL
    assert code == 0 and rep["objective"] == "per-token forward KL"
    code, rep = run_json("trl", "--beta", "0.04", "--importance_sampling_level", "token")
    assert code == 0 and rep["objective"] == "per-token reverse KL"


def test_trainers_whose_kl_is_not_the_reference_kl_are_not_modelled(tmp_path):
    """verl's on-policy distillation (KL to a teacher) and OpenRLHF trainers other than
    train_ppo_ray (DPO, SFT, KD, ...: no samples from the policy) get no verdict and exit 3."""
    code, rep = run_json(
        "verl",
        "actor_rollout_ref.actor.use_kl_loss=True",
        "distillation.enabled=True",
        "distillation.distillation_loss.loss_mode=k1",
    )
    assert code == 3 and rep["status"] == "not modelled" and rep["kl_term"] is None
    assert "teacher" in rep["verdict"] and "loss_mode=k1" in rep["verdict"]
    script = tmp_path / "sft.sh"
    script.write_text("deepspeed --module openrlhf.cli.train_sft \\\n  --train.batch_size 256\n")
    code, rep = run_json("openrlhf", "--script", str(script))
    assert code == 3 and rep["status"] == "not modelled" and rep["off_policy"]["steps"] is None
    assert "openrlhf.cli.train_sft" in rep["verdict"]
    script.write_text(script.read_text().replace("train_sft", "train_ppo_ray"))
    code, rep = run_json("openrlhf", "--script", str(script))
    assert rep["status"] != "not modelled"  # the PPO launch is audited


@pytest.mark.parametrize(
    "line, trainer, status",
    [
        ("python examples/scripts/rloo/rloo.py --kl_coef 0.03", "rloo", 0),
        (
            "accelerate launch --num_processes 8 trl/scripts/ppo.py --kl_coef 0.03 --lam 1.0",
            "ppo",
            0,
        ),
        ("trl rloo --kl_coef 0.03", "rloo", 0),
        ("python -m trl.scripts.grpo --beta 0.03", "grpo", 0),
    ],
)
def test_trl_trainer_is_read_from_the_script_a_launch_runs(tmp_path, line, trainer, status):
    """Without --trainer, the script or ``trl`` command a launch runs names TRL's trainer (an RLOO
    launch audited as GRPO said "no KL term" at TRL 0.19's GRPO default beta 0, with exit 0)."""
    script = tmp_path / "run.sh"
    script.write_text(line + "\n")
    code, rep = run_json("trl", "--release", "0.19.0", "--script", str(script))
    assert code == status, rep
    assert rep["flags"]["trainer"] == trainer if "flags" in rep else trainer in json.dumps(rep)
    code, text = run("trl", "--release", "0.19.0", "--script", str(script))
    assert f"trainer {trainer}: read from" in text and "ASSUMED: the GRPO trainer" not in text


def test_other_trl_trainers_and_unnamed_scripts_are_said_so(tmp_path):
    """An SFT/DPO script is not modelled (exit 3, no step count); a script whose name says nothing
    is audited as GRPO with the assumption printed; --trainer wins over the script's name, and the
    clash is printed."""
    sft = tmp_path / "sft.sh"
    sft.write_text("python examples/scripts/dpo.py --beta 0.1\n")
    code, text = run("trl", "--script", str(sft))
    assert code == 3 and "not a GRPO, RLOO or PPO trainer of TRL" in text, text
    plain = tmp_path / "plain.sh"
    plain.write_text("python train.py --beta 0.04\n")
    code, text = run("trl", "--script", str(plain))
    assert "ASSUMED: the GRPO trainer" in text and "train.py does not name one" in text, text
    rloo = tmp_path / "rloo.sh"
    rloo.write_text("python examples/scripts/rloo/rloo.py --beta 0.04\n")
    code, text = run("trl", "--trainer", "grpo", "--script", str(rloo))
    assert "names rloo, --trainer grpo: audited as grpo" in text, text
    assert (
        cli.main(["audit", "trl", "--trainer", "sft", "--script", str(rloo)], out=io.StringIO())
        == 2
    )
