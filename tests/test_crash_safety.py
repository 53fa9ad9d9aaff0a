"""Crash safety of training runs: a real training process is killed (SIGKILL) right after each file
operation of its checkpoints, then resumed; the resumed metrics and weights must equal those of an
uninterrupted run, with no clean-up by hand. Also: one writer per run folder, divergence stops.

The killed runs are child processes (``os.fork``: the parent's imports and cached model are reused, so
each kill point costs milliseconds); the hook :data:`klnotes.gpt2._runio._hook` counts file operations in
the child and kills it at operation ``n``.
"""

import dataclasses
import os
import signal
import time

import _tiny
import pandas as pd
import pytest
import torch
from _children import lock_held_by_child

from klnotes.gpt2 import _runio, checkpoint, policies, tasks
from klnotes.gpt2 import trainer as TR

TINY = dataclasses.replace(_tiny.TINY, pretrain_steps=5)
CONFIG = dataclasses.replace(
    _tiny.CONFIG, kl="k3-loss-is", max_new_tokens=6, steps=2, checkpoint_every=1
)
COLUMNS = [c for c in TR.METRICS if c != "seconds"]

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")


@pytest.fixture(scope="module")
def task():
    return tasks.synthetic_task(TINY, n_prompts=8)


@pytest.fixture(scope="module")
def models(cache):
    """A policy, its initial weights and a frozen reference: :func:`_restart` puts the policy back at the
    start (what a new process would load) without reading the model from disk again."""
    policy, reference = (
        policies.tiny_policy(TINY, cache),
        policies.frozen(policies.tiny_policy(TINY, cache)),
    )
    return policy, {k: v.clone() for k, v in policy.model.state_dict().items()}, reference


def _restart(models):
    policy, initial, reference = models
    policy.model.load_state_dict(initial)
    return policy, reference


@pytest.fixture(scope="module")
def uninterrupted(models, task, tmp_path_factory):
    """Metrics, final weights and the number of file operations of a run that nobody kills."""
    ops = []
    _runio._hook = ops.append
    try:
        policy, reference = _restart(models)
        frame = TR.train(
            policy,
            reference,
            task,
            CONFIG,
            run_dir=tmp_path_factory.mktemp("whole"),
            progress=False,
        )
    finally:
        _runio._hook = None
    return frame, {k: v.clone() for k, v in policy.model.state_dict().items()}, ops


def _killed_at(n: int, policy, reference, task, run_dir) -> int:
    """Run training in a child process that SIGKILLs itself right after file operation ``n``; return its status."""
    pid = os.fork()
    if pid == 0:  # the child: never returns to pytest
        try:
            count = iter(range(1, 10**9))

            def hook(name):
                if next(count) == n:
                    os.kill(os.getpid(), signal.SIGKILL)

            _runio._hook = hook
            TR.train(policy, reference, task, CONFIG, run_dir=run_dir, progress=False)
        finally:
            os._exit(3)  # reached only if the kill point was never hit
    _, status = os.waitpid(pid, 0)
    return status


def test_a_run_killed_after_any_file_operation_resumes_to_the_uninterrupted_result(
    models, task, uninterrupted, tmp_path
):
    whole, weights, ops = uninterrupted
    # lock, config.json (5 operations), then per checkpoint: checkpoint.pt and metrics.csv (5 each)
    assert ops.count("replace") == 1 + 2 * CONFIG.steps and len(ops) == 1 + 5 + 10 * CONFIG.steps, (
        ops
    )
    began = time.perf_counter()
    for n in range(1, len(ops) + 1):
        run_dir = tmp_path / f"kill{n}"
        policy, reference = _restart(models)
        status = _killed_at(n, policy, reference, task, run_dir)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
            n,
            ops[n - 1],
            status,
        )
        policy, reference = _restart(models)  # as in a new process: weights back at the start
        resumed = TR.train(policy, reference, task, CONFIG, run_dir=run_dir, progress=False)
        where = f"killed after operation {n} ({ops[n - 1]})"
        pd.testing.assert_frame_equal(resumed[COLUMNS], whole[COLUMNS], check_exact=True, obj=where)
        pd.testing.assert_frame_equal(
            TR.load_metrics(run_dir, steps=CONFIG.steps)[COLUMNS],
            whole[COLUMNS],
            check_exact=True,
            obj=where,
        )
        for name, value in policy.model.state_dict().items():
            assert torch.equal(value, weights[name]), (where, name)
        leftovers = sorted(p.name for p in run_dir.iterdir() if ".tmp-" in p.name)
        assert not leftovers, (where, leftovers)
    print(f"{len(ops)} kill points in {time.perf_counter() - began:.1f} s")


def test_a_second_writer_of_a_run_folder_fails_and_a_killed_holder_frees_it(models, task, tmp_path):
    policy, reference = _restart(models)
    with lock_held_by_child(lambda: _runio.lock(tmp_path / TR.LOCK_FILE, what="run folder")) as pid:
        with pytest.raises(
            _runio.LockedError,
            match=rf"run folder '{tmp_path}' is in use by another process "
            rf"\(pid {pid}\)",
        ):
            TR.train(policy, reference, task, CONFIG, run_dir=tmp_path, progress=False)
        with pytest.raises(_runio.LockedError, match=r"in use by another process .*waited"):
            with _runio.lock(tmp_path / TR.LOCK_FILE, what="run folder", wait=True, timeout=0.3):
                pass
    frame = TR.train(
        policy,
        reference,
        task,
        dataclasses.replace(CONFIG, steps=1),
        run_dir=tmp_path,
        progress=False,
    )
    assert len(frame) == 1  # the kill released the lock: no clean-up by hand


def test_divergence_stops_before_the_step_and_never_checkpoints_non_finite_weights(
    models, task, tmp_path
):
    policy, reference = _restart(models)
    config = dataclasses.replace(
        CONFIG, kl="k2-loss", lr=1e30, max_grad_norm=None, steps=6, updates_per_batch=1
    )
    with pytest.raises(
        TR.TrainingDiverged,
        match=r"training diverged at step [1-5] \(arm 'k2-loss', lr=1e\+30.*"
        r"last good checkpoint: '.*checkpoint.pt' \(after [1-5] steps\)",
    ):
        TR.train(policy, reference, task, config, run_dir=tmp_path, progress=False)
    state = torch.load(tmp_path / TR.CHECKPOINT, weights_only=True)
    assert all(
        bool(torch.isfinite(v).all()) for v in state["model"].values() if v.is_floating_point()
    )
    assert len(TR.load_metrics(tmp_path)) == state["step"]
    with pytest.raises(TR.TrainingDiverged, match=r"at step 0 .*no checkpoint \(run_dir=None\)"):
        with torch.no_grad():
            next(policy.model.parameters()).fill_(float("nan"))
        TR.train(policy, reference, task, config, progress=False)
    _restart(models)


# --- damaged files -------------------------------------------------------------------------------


@pytest.fixture()
def finished(models, task, uninterrupted, tmp_path):
    """A finished run folder (checkpoint after the last step) and the uninterrupted metrics."""
    policy, reference = _restart(models)
    TR.train(policy, reference, task, CONFIG, run_dir=tmp_path, progress=False)
    return tmp_path, uninterrupted[0]


def _resume(models, task, run_dir, **changes):
    policy, reference = _restart(models)
    return TR.train(
        policy,
        reference,
        task,
        dataclasses.replace(CONFIG, **changes),
        run_dir=run_dir,
        progress=False,
    )


def _cut(path, keep):
    data = path.read_bytes()
    path.write_bytes(data[: keep(len(data))])


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda p: _cut(p, lambda n: n // 2),
            r"is damaged or not a klnotes checkpoint \(.*\); delete '.*checkpoint.pt' "
            r"to restart the run from step 0",
        ),
        (lambda p: p.write_bytes(b"not a checkpoint"), r"is damaged or not a klnotes checkpoint"),
        (lambda p: p.write_bytes(b""), r"is damaged or not a klnotes checkpoint"),
        (
            lambda p: torch.save({"step": 2}, p),
            r"lacks the entries \['model', 'optimizer', 'generator', 'config'\]",
        ),
    ],
)
def test_a_damaged_checkpoint_is_named_with_what_to_do(models, task, finished, damage, message):
    run_dir, _ = finished
    damage(run_dir / TR.CHECKPOINT)
    with pytest.raises(ValueError, match=message):
        _resume(models, task, run_dir, steps=3)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda t: t.index_fill_(0, torch.tensor([1]), float("nan")),
            r"checkpoint.pt': row 1 has step nan, expected 1",
        ),
        (
            lambda t: t.index_put_(
                (torch.tensor([1]), torch.tensor([1])), torch.tensor(float("nan"), dtype=t.dtype)
            ),
            r"checkpoint.pt': reward = nan at step 1 \(1 non-finite values in 'reward'\); delete",
        ),
        (
            lambda t: t.index_fill_(1, torch.tensor([6]), float("inf")),
            r"checkpoint.pt': entropy = inf at step 0 \(2 non-finite",
        ),
        (
            lambda t: t[:, :5],
            r"metric rows do not match its step 2 \(table torch.Size\(\[2, 5\]\)\)",
        ),
        (lambda t: t[:1], r"metric rows do not match its step 2 \(table torch.Size\(\[1, 13\]\)\)"),
        (lambda t: t.index_fill_(1, torch.tensor([0]), 0.0), r"row 1 has step 0, expected 1"),
    ],
)
def test_checkpoint_metric_rows_are_checked_on_resume(models, task, finished, edit, message):
    run_dir, _ = finished
    path = run_dir / TR.CHECKPOINT
    state = torch.load(path, weights_only=True)
    state["metrics"] = edit(state["metrics"].clone())
    torch.save(state, path)
    with pytest.raises(ValueError, match=message):
        _resume(models, task, run_dir, steps=3)


@pytest.mark.parametrize("damage", ["cut mid-line", "rows missing", "deleted", "garbage", "empty"])
def test_a_damaged_metrics_file_is_named_and_rewritten_from_the_checkpoint(
    models, task, finished, damage
):
    run_dir, whole = finished
    path = run_dir / TR.METRICS_FILE
    lines = path.read_text().splitlines(keepends=True)
    text = {
        "cut mid-line": "".join(lines)[:-20],
        "rows missing": "".join(lines[:2]),
        "deleted": None,
        "garbage": "\x00\x01 not,a\ncsv",
        "empty": "",
    }[damage]
    if text is None:
        path.unlink()
        with pytest.raises(FileNotFoundError, match="no metrics.csv in"):
            TR.load_metrics(run_dir)
    else:
        path.write_text(text)
        with pytest.raises(
            ValueError, match=rf"'{path}'.*train\(\) with the same run_dir rewrites this file"
        ):
            TR.load_metrics(run_dir, steps=CONFIG.steps)
    resumed = _resume(models, task, run_dir)  # the checkpoint holds the rows: nothing lost
    pd.testing.assert_frame_equal(resumed[COLUMNS], whole[COLUMNS], check_exact=True)
    pd.testing.assert_frame_equal(
        TR.load_metrics(run_dir, steps=CONFIG.steps)[COLUMNS], whole[COLUMNS], check_exact=True
    )


def test_resume_checks_the_device_and_warns_about_the_thread_count(models, task, finished):
    run_dir, _ = finished
    path = run_dir / TR.CHECKPOINT
    state = torch.load(path, weights_only=True)
    edited = {**state, "threads": torch.get_num_threads() + 1}
    torch.save(
        {**edited, "checksum": checkpoint.digest(edited)}, path
    )  # an edit that keeps the checksum right
    with pytest.warns(
        RuntimeWarning,
        match=rf"with {torch.get_num_threads()} torch threads, saved with "
        rf"{torch.get_num_threads() + 1}.*torch.set_num_threads",
    ):
        _resume(models, task, run_dir)
    torch.save({**state, "device": "cuda"}, path)
    with pytest.raises(ValueError, match=r"saved on device 'cuda', the policy is on 'cpu'"):
        _resume(models, task, run_dir)
    with pytest.raises(ValueError, match=r"holds 2 steps, more than config.steps=1"):
        _resume(models, task, run_dir, steps=1)
