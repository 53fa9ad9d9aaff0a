"""examples/: the launch files parse, and the example script trains on two CPU processes (DDP, gloo)."""

import importlib.util
import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
SCRIPT = os.path.join(EXAMPLES, "train_grpo_kl.py")


def free_port() -> int:
    """A free TCP port for torchrun's rendezvous: two launches at once (pytest -n 2) must not share 29500."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_script():
    spec = importlib.util.spec_from_file_location("train_grpo_kl", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_arguments_parse_and_reject_a_non_positive_beta(capsys):
    script = load_script()
    args = script.parse_args([])
    assert (args.model, args.kl, args.level, args.cpu) == (
        "tiny",
        "k1_in_reward",
        "sequence",
        False,
    )
    args = script.parse_args(
        ["--kl", "k2_as_loss", "--level", "token", "--grad-accum", "2", "--cpu"]
    )
    assert (args.kl, args.level, args.grad_accum, args.cpu) == ("k2_as_loss", "token", 2, True)
    for beta in ("0", "-0.1", "nan"):
        with pytest.raises(SystemExit):
            script.parse_args(["--beta", beta])
        assert "--beta must be > 0" in capsys.readouterr().err
    assert script.reward(["a b a", "b"]) == [2.0, 0.0]


@pytest.mark.parametrize("name, kind", [("ddp.yaml", "MULTI_GPU"), ("zero2.yaml", "DEEPSPEED")])
def test_accelerate_config_files_load(name, kind):
    pytest.importorskip("accelerate")
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(os.path.join(EXAMPLES, "accelerate", name))
    assert config.distributed_type.value == kind
    assert (config.num_processes, config.num_machines, config.mixed_precision) == (8, 1, "bf16")
    if kind == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == 2


def test_example_trains_on_two_cpu_processes_with_the_ddp_config(tmp_path):
    pytest.importorskip("trl")
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",
        TRL_EXPERIMENTAL_SILENCE="1",
        PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
    )
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        os.path.join(EXAMPLES, "accelerate", "ddp.yaml"),
        "--num_processes",
        "2",
        "--main_process_port",
        str(free_port()),
        "--mixed_precision",
        "no",
        SCRIPT,
        "--cpu",
        "--max-steps",
        "2",
        "--per-device-batch",
        "4",
        "--output-dir",
        str(tmp_path),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-6000:]
    summary = [line for line in done.stdout.splitlines() if line.startswith("kl=")]
    assert len(summary) == 1, done.stdout[-3000:]  # printed by rank 0 only
    fields = dict(item.split("=") for item in summary[0].split())
    assert (fields["processes"], fields["steps"], fields["distributed"]) == ("2", "2", "MULTI_CPU")
    assert (
        float(fields["kl"]) > 0.0
    )  # the second step of the batch has moved away from the reference
