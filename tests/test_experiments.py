"""Tests of klnotes.experiments: presets, the results store, resumability, analysis, bad input."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from klnotes import experiments as ex
from klnotes import trainer


def test_presets_cover_every_scale_and_use_known_arms():
    assert set(ex.PRESETS) == {"smoke", "cpu", "gpu"}
    for name, p in ex.PRESETS.items():
        assert p.name == name
        assert set(p.arms) <= set(trainer.ARMS)
    assert ex.PRESETS["gpu"].beta == 0.5 and min(ex.PRESETS["gpu"].betas) < 0.5
    assert len(ex.PRESETS["cpu"].seeds) >= 2 and len(ex.PRESETS["gpu"].seeds) >= 2
    assert ex.PRESETS["smoke"].steps < ex.PRESETS["cpu"].steps < ex.PRESETS["gpu"].steps
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
    assert (cfg.steps, cfg.group_size, cfg.max_new_tokens, cfg.lr) == (p.steps, p.group_size, p.max_new_tokens, p.lr)


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
    frame = pd.DataFrame({"arm": ["k2-loss", "k3-loss"], "step": [0, 1], "reward": [1 / 3, np.pi * 1e-7],
                          "kl_seq_exact": [0.1 + 0.2, 1e300]})
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
    return pd.DataFrame({"step": np.arange(n), "reward": rng.random(n), "kl_seq_exact": rng.random(n) * config.beta})


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
    assert list(first.columns[:6]) == ["experiment", "arm", "beta", "seed", "updates_per_batch", "policy"]
    assert set(first["policy"]) == {ex.policy_id(p)}
    again = ex.run_arms(p, arms=["none", "k2-loss", "k3-loss"], seeds=[0, 1], store=tmp_path, progress=False)
    assert len(fake_training) == 6 * len(p.betas)  # only the new arm was trained
    pd.testing.assert_frame_equal(again[again["arm"] != "k3-loss"].reset_index(drop=True), first, check_exact=True)


def test_off_policy_ablation_runs_every_pair_and_update_count(tmp_path, fake_training):
    p = ex.PRESETS["smoke"]
    frame = ex.run_off_policy_ablation(p, store=tmp_path, progress=False)
    arms = {a for pair in ex.OFF_POLICY_PAIRS for a in pair} | {"none", "k1-loss"}
    assert set(frame["arm"]) == arms
    assert set(frame["updates_per_batch"]) == set(p.ablation_updates)
    assert {c[4] for c in fake_training} == {p.ablation_steps}
    assert len(fake_training) == len(arms) * len(p.ablation_updates) * len(p.ablation_seeds)


def test_final_metrics_and_frontier_average_the_last_steps():
    frame = pd.DataFrame({"experiment": "arms", "arm": ["a"] * 4 + ["b"] * 4, "beta": 0.5, "seed": 0,
                          "updates_per_batch": 1, "step": [0, 1, 2, 3] * 2,
                          "reward": [0, 1, 2, 3, 10, 20, 30, 40.0], "kl_seq_exact": [1, 1, 1, 5, 0, 0, 2, 2.0]})
    fin = ex.final_metrics(frame, last=2)
    assert fin.set_index("arm").loc["a", "reward"] == 2.5 and fin.set_index("arm").loc["b", "kl_seq_exact"] == 2.0
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
    rows = [{"arm": arm, "beta": 0.5, "seed": seed, "step": step, "kl_seq_exact": float(step)}
            for arm in ("none", "k1-loss") for seed in (0, 1) for step in range(3)]
    fig = plotting.plot_metric(pd.DataFrame(rows), "kl_seq_exact")
    ax = fig.axes[0]
    assert ax.get_ylabel() == "sequence KL (nats, exact)"
    styles = {line.get_label(): line.get_linestyle() for line in ax.get_lines()}
    assert styles["none"] != styles["k1 as loss"]
    plt.close(fig)


def test_mean_sd_table_puts_mean_and_sd_in_one_readable_column():
    summary = pd.DataFrame({"arm": ["none"], "beta": [0.5], "reward_mean": [0.25], "reward_std": [0.0125],
                            "kl_seq_exact_mean": [1.0], "kl_seq_exact_std": [float("nan")]})
    out = ex.mean_sd_table(summary)
    assert list(out.columns) == ["arm", "beta", "reward", "sequence KL (nats, exact)"]
    assert out.iloc[0]["reward"] == "0.250 ± 0.013" and out.iloc[0]["sequence KL (nats, exact)"] == "1.000 ± 0.000"
    with pytest.raises(ValueError, match="no _std column"):
        ex.mean_sd_table(summary.drop(columns="reward_std"))
