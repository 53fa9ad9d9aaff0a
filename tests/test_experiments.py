"""Tests of klnotes.gpt2.experiments: presets, the results store, resumability, analysis, bad input."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _children import lock_held_by_child

from klnotes.gpt2 import _runio, trainer
from klnotes.gpt2 import experiments as ex
from klnotes.gpt2 import store as st


def test_presets_cover_every_scale_and_use_known_arms():
    assert set(ex.PRESETS) == {"smoke", "cpu", "gpu", "full"}
    for name, p in ex.PRESETS.items():
        assert p.name == name
        assert set(p.arms) <= set(trainer.ARMS)
    assert ex.PRESETS["full"].beta == 0.5 and min(ex.PRESETS["full"].betas) < 0.5
    assert len(ex.PRESETS["cpu"].seeds) >= 2 and len(ex.PRESETS["full"].seeds) >= 2
    assert (
        ex.PRESETS["smoke"].steps
        < ex.PRESETS["cpu"].steps
        <= ex.PRESETS["gpu"].steps
        < ex.PRESETS["full"].steps
    )
    assert ex.PRESETS["full"].scale == ex.PRESETS["gpu"].scale == "gpu"
    assert ex.PRESETS["cpu"].ablation_updates == (1, 2, 4)


def test_preset_follows_the_scale(monkeypatch):
    monkeypatch.setenv("KLNOTES_SCALE", "cpu")
    assert ex.preset() is ex.PRESETS["cpu"]
    assert ex.preset("smoke") is ex.PRESETS["smoke"]
    assert ex.preset(ex.PRESETS["gpu"]) is ex.PRESETS["gpu"]


def test_presets_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ex.PRESETS["cpu"].steps = 1


def test_train_config_carries_the_preset():
    p = ex.PRESETS["cpu"]
    cfg = p.train_config("k3-loss", beta=0.1, seed=2, updates_per_batch=4)
    assert (cfg.kl, cfg.beta, cfg.seed, cfg.updates_per_batch) == ("k3-loss", 0.1, 2, 4)
    assert (cfg.steps, cfg.group_size, cfg.max_new_tokens, cfg.lr) == (
        p.steps,
        p.group_size,
        p.max_new_tokens,
        p.lr,
    )


def test_unknown_preset_and_arm_list_the_allowed_ones():
    with pytest.raises(ValueError, match="allowed: smoke, cpu, gpu"):
        ex.preset("laptop")
    with pytest.raises(ValueError, match="allowed: " + ", ".join(trainer.ARMS)):
        ex.check_arms(["k2-loss", "k4-loss"])
    with pytest.raises(ValueError, match="unknown arm 'k4'"):
        ex.run_arms("smoke", arms=["k4"])
    with pytest.raises(ValueError, match="positive int"):
        dataclasses.replace(ex.PRESETS["smoke"], steps=0)


def test_store_round_trip_is_exact(tmp_path):
    store = ex.ResultsStore(tmp_path)
    frame = pd.DataFrame(
        {
            "arm": ["k2-loss", "k3-loss"],
            "step": [0, 1],
            "reward": [1 / 3, np.pi * 1e-7],
            "kl_seq_exact": [0.1 + 0.2, 1e300],
        }
    )
    assert not store.has("arms/x")
    path = store.save("arms/x", frame)
    assert path == tmp_path / "arms" / "x.csv" and store.has("arms/x")
    back = store.load("arms/x")
    pd.testing.assert_frame_equal(back, frame, check_exact=True)
    assert store.keys("arms/") == ["arms/x"]
    pd.testing.assert_frame_equal(store.load_all("arms/"), frame, check_exact=True)


def test_store_rejects_bad_keys_and_missing_results(tmp_path):
    store = ex.ResultsStore(tmp_path)
    for key in ("../escape", "/abs", "a b", ""):
        with pytest.raises(ValueError, match="bad results key"):
            store.path(key)
    with pytest.raises(FileNotFoundError, match="no results for 'arms/missing'"):
        store.load("arms/missing")
    with pytest.raises(TypeError, match="DataFrame"):
        store.save("x", {"a": 1})
    assert store.load_all().empty


def _fake_metrics(config, steps=None):
    n = config.steps
    rng = np.random.default_rng(config.seed)
    return pd.DataFrame(
        {"step": np.arange(n), "reward": rng.random(n), "kl_seq_exact": rng.random(n) * config.beta}
    )


@pytest.fixture
def fake_training(monkeypatch):
    """Replace model loading and training by a counter, to test the bookkeeping alone."""
    calls = []

    def fake_train(policy, reference, task, config, *, run_dir=None, progress=True):
        calls.append((config.kl, config.beta, config.seed, config.updates_per_batch, config.steps))
        return _fake_metrics(config)

    monkeypatch.setattr(ex, "_load", lambda p, device=None: ex._Models())
    monkeypatch.setattr(ex, "_fresh_policy", lambda p, device=None: None)
    monkeypatch.setattr(trainer, "train", fake_train)
    return calls


def test_run_arms_is_resumable(tmp_path, fake_training):
    p = ex.PRESETS["smoke"]
    first = ex.run_arms(p, arms=["none", "k2-loss"], seeds=[0, 1], store=tmp_path, progress=False)
    assert len(fake_training) == 4 * len(p.betas)
    assert len(first) == 4 * len(p.betas) * p.steps
    assert list(first.columns[:6]) == [
        "experiment",
        "arm",
        "beta",
        "seed",
        "updates_per_batch",
        "policy",
    ]
    assert set(first["policy"]) == {ex.policy_id(p)}
    again = ex.run_arms(
        p, arms=["none", "k2-loss", "k3-loss"], seeds=[0, 1], store=tmp_path, progress=False
    )
    assert len(fake_training) == 6 * len(p.betas)  # only the new arm was trained
    pd.testing.assert_frame_equal(
        again[again["arm"] != "k3-loss"].reset_index(drop=True), first, check_exact=True
    )


def test_off_policy_ablation_runs_every_pair_and_update_count(tmp_path, fake_training):
    p = ex.PRESETS["smoke"]
    frame = ex.run_off_policy_ablation(p, store=tmp_path, progress=False)
    arms = {a for pair in ex.OFF_POLICY_PAIRS for a in pair} | {"none", "k1-loss"}
    assert set(frame["arm"]) == arms
    assert set(frame["updates_per_batch"]) == set(p.ablation_updates)
    assert {c[4] for c in fake_training} == {p.ablation_steps}
    assert len(fake_training) == len(arms) * len(p.ablation_updates) * len(p.ablation_seeds)


def test_final_metrics_and_frontier_average_the_last_steps():
    frame = pd.DataFrame(
        {
            "experiment": "arms",
            "arm": ["a"] * 4 + ["b"] * 4,
            "beta": 0.5,
            "seed": 0,
            "updates_per_batch": 1,
            "step": [0, 1, 2, 3] * 2,
            "reward": [0, 1, 2, 3, 10, 20, 30, 40.0],
            "kl_seq_exact": [1, 1, 1, 5, 0, 0, 2, 2.0],
        }
    )
    fin = ex.final_metrics(frame, last=2)
    assert (
        fin.set_index("arm").loc["a", "reward"] == 2.5
        and fin.set_index("arm").loc["b", "kl_seq_exact"] == 2.0
    )
    front = ex.frontier(frame, last=1)
    assert list(front.set_index("arm").loc["b", ["reward", "kl"]]) == [40.0, 2.0]
    summary = ex.summarize(frame, metrics=["reward"], last=1)
    assert summary.set_index("arm").loc["a", "reward_mean"] == 3.0
    with pytest.raises(ValueError, match="empty results"):
        ex.final_metrics(pd.DataFrame())


def test_runs_made_with_another_policy_are_trained_again(tmp_path, fake_training):
    p = ex.PRESETS["smoke"]
    ex.run_arms(p, arms=["none"], seeds=[0], store=tmp_path, progress=False)
    store = ex.ResultsStore(tmp_path)
    (key,) = store.keys("arms/")
    stale = store.load(key).assign(policy="tiny-lm-0000000000000000")
    store.save(key, stale)
    calls = len(fake_training)
    fresh = ex.run_arms(p, arms=["none"], seeds=[0], store=tmp_path, progress=False)
    assert len(fake_training) == calls + 1 and set(fresh["policy"]) == {ex.policy_id(p)}
    assert ex.policy_id("gpu") == "gpt2" and ex.policy_id("cpu").startswith("tiny-lm-")


def test_figures_label_metrics_for_readers_and_tell_none_from_k1_loss():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from klnotes import plotting

    assert set(ex.METRIC_LABELS) <= set(trainer.METRICS)  # every label names a logged metric
    assert ex.metric_label("kl_seq_exact") == "sequence KL (nats, exact)"
    assert ex.metric_label("not_a_metric") == "not_a_metric"
    rows = [
        {"arm": arm, "beta": 0.5, "seed": seed, "step": step, "kl_seq_exact": float(step)}
        for arm in ("none", "k1-loss")
        for seed in (0, 1)
        for step in range(3)
    ]
    fig = plotting.plot_metric(pd.DataFrame(rows), "kl_seq_exact")
    ax = fig.axes[0]
    assert ax.get_ylabel() == "sequence KL (nats, exact)"
    styles = {line.get_label(): line.get_linestyle() for line in ax.get_lines()}
    assert styles["none"] != styles["k1 as loss"]
    plt.close(fig)


def _damage(kind, path):
    lines = path.read_text().splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    text = {
        "rows missing": header + "".join(rows[:-1]),
        "cut mid-line": "".join(lines)[:-7],
        "extra row": header + "".join(rows) + rows[-1],
        "steps out of order": header + "".join(reversed(rows)),
        "non-finite value": None,
        "garbage": '\x00\x01\x02 not a table,\n"unclosed\n',
        "empty file": "",
        "another arm": "".join(lines).replace(",none,", ",k1-loss,"),
    }[kind]
    if kind == "non-finite value":  # the reward of the last step becomes NaN
        cells = rows[-1].rstrip("\n").split(",")
        cells[header.split(",").index("reward")] = "nan"
        text = header + "".join(rows[:-1]) + ",".join(cells) + "\n"
    path.write_text(text)


@pytest.mark.parametrize(
    "kind, problem",
    [
        ("rows missing", r"holds 2 rows, expected 3"),
        ("cut mid-line", r"ends in the middle of a line"),
        ("extra row", r"holds 4 rows, expected 3"),
        ("steps out of order", r"row 0 has step 2, expected 0"),
        ("non-finite value", r"reward = nan at step 2"),
        ("garbage", r"cannot be read as a table"),
        ("empty file", r"cannot be read as a table"),
        ("another arm", r"column 'arm' should be 'none'"),
    ],
)
def test_a_damaged_stored_run_is_trained_again_with_a_warning_naming_the_file(
    tmp_path, fake_training, kind, problem
):
    p = ex.PRESETS["smoke"]
    first = ex.run_arms(p, arms=["none"], seeds=[0], store=tmp_path, progress=False)
    store = ex.ResultsStore(tmp_path)
    (key,) = store.keys("arms/")
    _damage(kind, store.path(key))
    stale = store.path(key).with_name(
        store.path(key).name + ".tmp-abc123"
    )  # as a killed save leaves it
    stale.write_text("half")
    calls = len(fake_training)
    with pytest.warns(
        RuntimeWarning, match=rf"stored results '{store.path(key)}' are not valid \(.*{problem}"
    ):
        again = ex.run_arms(p, arms=["none"], seeds=[0], store=tmp_path, progress=False)
    assert len(fake_training) == calls + 1
    pd.testing.assert_frame_equal(again, first, check_exact=True)
    pd.testing.assert_frame_equal(store.load(key), first, check_exact=True)
    assert not stale.exists()


def test_stored_runs_carry_their_config_and_a_changed_config_is_trained_again(
    tmp_path, fake_training, monkeypatch
):
    p = ex.PRESETS["smoke"]
    frame = ex.run_arms(p, arms=["k2-loss"], seeds=[0], store=tmp_path, progress=False)
    config = p.train_config("k2-loss", beta=p.beta, seed=0)
    assert set(frame["config_id"]) == {ex.config_id(config)}
    calls = len(fake_training)
    changed = dataclasses.replace(p, lr=p.lr / 2)
    ex.run_arms(changed, arms=["k2-loss"], seeds=[0], store=tmp_path, progress=False)
    assert len(fake_training) == calls + 1  # same key, another learning rate: not reused


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
def test_one_writer_per_stored_run(tmp_path):
    store = ex.ResultsStore(tmp_path)
    with lock_held_by_child(lambda: store.lock("arms/x")) as pid:
        with pytest.raises(
            _runio.LockedError,
            match=rf"results 'arms/x' of '{tmp_path}' is in use by another process "
            rf"\(pid {pid}\)",
        ):
            with store.lock("arms/x", wait=False):
                pass
        with store.lock("arms/y", wait=False):  # other keys are free
            store.save("arms/y", pd.DataFrame({"a": [1.0]}))
    with store.lock("arms/x", wait=False):  # released by the holder's death
        pass
    assert store.keys() == ["arms/y"]


def test_preset_overrides_from_the_environment(monkeypatch):
    monkeypatch.setenv(ex.OVERRIDES_ENV, '{"steps": 2, "seeds": [0]}')
    p = ex.preset("gpu")
    assert (p.steps, p.seeds, p.name) == (2, (0,), "gpu")
    monkeypatch.setenv(ex.OVERRIDES_ENV, '{"stepz": 2}')
    with pytest.raises(ValueError, match="unknown Preset fields \\['stepz'\\]"):
        ex.preset("gpu")
    monkeypatch.setenv(ex.OVERRIDES_ENV, "steps=2")
    with pytest.raises(ValueError, match="JSON object"):
        ex.preset("gpu")


def test_results_and_runs_directories_follow_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KLNOTES_RESULTS", str(tmp_path / "res"))
    monkeypatch.setenv("KLNOTES_RUNS", str(tmp_path / "runs"))
    assert ex.default_results_dir("full") == tmp_path / "res" / "full"
    assert st.runs_dir(ex.PRESETS["smoke"]).is_relative_to(tmp_path / "runs")


def test_outside_a_checkout_nothing_goes_to_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("KLNOTES_RESULTS", raising=False)
    monkeypatch.delenv("KLNOTES_RUNS", raising=False)
    monkeypatch.setenv("KLNOTES_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(st, "_repo_root", lambda: None)
    monkeypatch.chdir(tmp_path)
    assert not ex.default_results_dir("smoke").is_relative_to(tmp_path / "results")
    assert st.runs_dir(ex.PRESETS["smoke"]).is_relative_to(tmp_path / "cache")


def test_gpu_policy_id_names_a_local_policy(monkeypatch, tmp_path):
    monkeypatch.setenv("KLNOTES_POLICY", str(tmp_path / "my-gpt2"))
    assert ex.policy_id("gpu") == ex.policy_id("full") == "local-my-gpt2"
    monkeypatch.delenv("KLNOTES_POLICY")
    assert ex.policy_id("full") == "gpt2"


def test_stored_reads_without_training(tmp_path, fake_training):
    assert ex.stored("full", "arms/", store=tmp_path).empty
    made = ex.run("full", ex.RunSpec("arms", "none", 0.5, 0), store=tmp_path, progress=False)
    calls = len(fake_training)
    ex.ResultsStore(tmp_path).save(
        "arms/x", pd.DataFrame({"a": [1.0]})
    )  # not a run: left out, named
    with pytest.warns(RuntimeWarning, match=r"stored results '.*arms/x.csv' are not valid"):
        pd.testing.assert_frame_equal(
            ex.stored("full", "arms/", store=tmp_path), made, check_exact=True
        )
    assert len(fake_training) == calls


def test_mean_sd_table_puts_mean_and_sd_in_one_readable_column():
    summary = pd.DataFrame(
        {
            "arm": ["none"],
            "beta": [0.5],
            "reward_mean": [0.25],
            "reward_std": [0.0125],
            "kl_seq_exact_mean": [1.0],
            "kl_seq_exact_std": [float("nan")],
        }
    )
    out = ex.mean_sd_table(summary)
    assert list(out.columns) == ["arm", "beta", "reward", "sequence KL (nats, exact)"]
    assert (
        out.iloc[0]["reward"] == "0.250 ± 0.013"
        and out.iloc[0]["sequence KL (nats, exact)"] == "1.000 ± 0.000"
    )
    with pytest.raises(ValueError, match="no _std column"):
        ex.mean_sd_table(summary.drop(columns="reward_std"))


def test_stored_leaves_out_a_damaged_file_with_a_warning_naming_it(tmp_path, fake_training):
    p = ex.PRESETS["smoke"]
    ex.run_arms(p, arms=["none", "k2-loss"], seeds=[0], store=tmp_path, progress=False)
    store = ex.ResultsStore(tmp_path)
    bad = store.path("arms/none_beta0.5_upb1_seed0")
    _damage("rows missing", bad)
    with pytest.warns(
        RuntimeWarning,
        match=rf"stored results '{bad}' are not valid \(.*holds 2 rows, expected 3.*left out",
    ):
        frame = ex.stored(p, "arms/", store=tmp_path)
    assert set(frame["arm"]) == {"k2-loss"} and len(frame) == p.steps


def test_sizing_counts_flops_and_estimates_time():
    no_grad, grad = ex.step_flops("gpu", 10**6)
    p = ex.PRESETS["gpu"]
    tokens = p.prompts_per_step * p.group_size * (12 + p.max_new_tokens)
    assert (no_grad, grad) == (4e6 * tokens, 6e6 * tokens)
    assert ex.sweep_flops("cpu", 10**6) == (0.0, 0.0)  # exact enumeration
    assert ex.sweep_flops("full", 10**6)[1] > ex.sweep_flops("gpu", 10**6)[1] > 0
    one = ex.estimate_seconds("gpu", 10**6, steps=1)
    assert 0 < one and ex.estimate_seconds("gpu", 10**6, steps=10) > 5 * one


def test_a_pip_installed_package_reads_shipped_results_and_writes_to_the_cache(
    monkeypatch, tmp_path
):
    shipped, cache = tmp_path / "site-packages" / "klnotes" / "results" / "cpu", tmp_path / "cache"
    ex.ResultsStore(shipped).save("arms/old", pd.DataFrame({"a": [1.0]}))
    monkeypatch.delenv("KLNOTES_RESULTS", raising=False)
    monkeypatch.setenv("KLNOTES_CACHE", str(cache))
    monkeypatch.setattr(st, "_repo_root", lambda: None)
    monkeypatch.setattr(st, "default_results_dir", lambda name: shipped)
    monkeypatch.setattr(st, "_is_shipped", lambda folder: True)
    store = st.results_store(ex.PRESETS["cpu"], None)
    assert store.root == cache / "results" / "cpu" and store.has("arms/old")
    store.save("arms/new", pd.DataFrame({"a": [2.0]}))
    assert store.keys("arms/") == ["arms/new", "arms/old"]
    assert list(store.load("arms/old")["a"]) == [1.0] and list(store.load("arms/new")["a"]) == [2.0]
    assert sorted(p.name for p in shipped.rglob("*.csv")) == [
        "old.csv"
    ]  # nothing written into the package
    store.save("arms/old", pd.DataFrame({"a": [3.0]}))  # a retrained run shadows the shipped one
    assert list(store.load("arms/old")["a"]) == [3.0] and list(
        ex.ResultsStore(shipped).load("arms/old")["a"]
    ) == [1.0]


def test_gpu_preset_fits_a_t4_in_ten_minutes_per_chapter():
    """Chapter 8 at the gpu preset (GPT-2 124M, every arm x beta x seed) within the stated T4 budget,
    from the FLOP count and the assumed T4 throughput (an estimate, as the README says)."""
    p = ex.PRESETS["gpu"]
    no_grad, grad = ex.step_flops(p, 124_439_808)
    fast, slow = ex.GPU_THROUGHPUT["T4"]
    per_step = no_grad / fast + grad / slow + p.max_new_tokens * ex.DECODE_LATENCY_S
    runs = len(p.arms) * len(p.betas) * len(p.seeds)
    assert runs * p.steps * per_step < 10 * 60, (runs, p.steps, per_step)


def test_a_checkout_reads_and_writes_its_committed_results(monkeypatch):
    """In a checkout, the cpu preset's results are the committed ``results/cpu`` (not a cache), and the
    shipped results of an installed package are looked up beside the package's modules."""
    monkeypatch.delenv("KLNOTES_RESULTS", raising=False)
    root = Path(st.__file__).resolve().parents[2]
    assert (root / "_toc.yml").is_file() and st._repo_root() == root
    assert ex.default_results_dir("cpu") == root / "results" / "cpu"
    assert st._PACKAGE == root / "klnotes"
