"""The TRL plug-in across two processes (accelerate, gloo, CPU) equals one process on the same global batch.

``tests/ddp_plugin_runner.py`` runs ``PrincipledKLGRPOTrainer`` for 4 optimizer steps of 8 completions in
every configuration: each KL name and level, ``gradient_accumulation_steps`` 1 and 2, ``num_iterations``
1 and 2, and two rewards (all zero, so the gradient is the KL term's alone; or counting ``a`` words: the
whole GRPO update). It runs once as one process (no accumulation: the reference) and once under
``accelerate launch`` with two processes; the tests compare, configuration by configuration, the
all-reduced gradient at every optimizer step and the total parameter update, and check that the KL
term's gradient is ``beta`` times the gradient of the mean, over the 8 sequences of the global batch, of
each sequence's summed KL head, whatever the split.
"""

import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from klnotes import trl_plugin as P

pytest.importorskip("trl")
pytest.importorskip("accelerate")

RUNNER = os.path.join(os.path.dirname(__file__), "ddp_plugin_runner.py")
RTOL = 1e-5  # float32; measured differences are 2e-6 or less (relative to the largest entry)


def free_port() -> int:
    """A free TCP port for torchrun's rendezvous: two launches at once (pytest -n 2) must not share 29500."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd, env):
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",
        TRL_EXPERIMENTAL_SILENCE="1",
        PYTHONPATH=os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])),
    )
    env.pop("ACCELERATE_CONFIG_FILE", None)
    start = time.perf_counter()
    _run([sys.executable, RUNNER, str(out)], env)
    # accelerate 1.x: --cpu selects the single-process launcher; --multi_gpu starts the processes with
    # torchrun, and the script asks for the CPU (gloo).
    _run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--main_process_port",
            str(free_port()),
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            RUNNER,
            str(out),
        ],
        env,
    )
    print(f"two launches: {time.perf_counter() - start:.1f} s")
    load = lambda world: torch.load(out / f"world{world}.pt", weights_only=True)  # noqa: E731
    return load(1), load(2)


def rel_diff(a, b):
    return float((a - b).abs().max() / b.abs().max())


CONFIGS = [
    (n, lv, ga, nit, r)
    for n in P.KL_NAMES
    for lv in P.LEVELS
    for ga in (1, 2)
    for nit in (1, 2)
    for r in ("zero", "count")
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c)))
def test_two_processes_equal_one_process_on_the_same_global_batch(runs, config):
    one, two = runs
    name, level, ga, nit, reward = config
    ref, run = one[(name, level, 1, nit, reward)], two[config]
    assert (
        run["batches"] == ref["batches"] and len(run["grads"]) == 4
    )  # same global batch, 4 optimizer steps
    for step, (g, g_ref) in enumerate(zip(run["grads"], ref["grads"])):
        assert float(g_ref.abs().max()) > 1e-3, (
            "a vanishing gradient would make the comparison empty"
        )
        assert rel_diff(g, g_ref) < RTOL, (step, rel_diff(g, g_ref))
    assert float(ref["update"].abs().max()) > 1e-3
    assert rel_diff(run["update"], ref["update"]) < RTOL
    torch.testing.assert_close(
        torch.tensor(run["log_kl"]), torch.tensor(ref["log_kl"]), rtol=RTOL, atol=0
    )


@pytest.mark.parametrize(
    "config", [c for c in CONFIGS if c[-1] == "zero"], ids=lambda c: "-".join(map(str, c))
)
def test_beta_multiplies_the_kl_of_whole_sequences_whatever_the_split(runs, config):
    """Zero advantages: the all-reduced gradient is the KL term's alone, and equals ``beta`` times the
    gradient of (1/8) * sum over the 8 global sequences of the sequence's summed per-token KL head, rebuilt
    from the micro-batches of all ranks; the logged ``kl`` is the global mean of sequence log-ratios."""
    one, two = runs
    for run in (two[config], one[config[:2] + (1,) + config[3:]]):
        for g, expected in zip(run["grads"], run["expected_kl_grads"]):
            assert rel_diff(g, expected) < RTOL
        torch.testing.assert_close(
            torch.tensor(run["log_kl"]), torch.tensor(run["seq_kl"]), rtol=RTOL, atol=1e-6
        )
