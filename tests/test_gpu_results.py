"""klnotes.gpt2.gpu_results: the GPU-results pipeline (pretraining, sizing, runs) and its toy end-to-end path."""

from __future__ import annotations

import dataclasses
import json
import math
import tarfile

import pandas as pd
import pytest
import torch

from klnotes.gpt2 import experiments, gpu_results, policies, tasks


def test_gpu_model_is_gpt2_124m_architecture():
    c = gpu_results.GPU_MODEL
    assert (c.n_layer, c.n_embd, c.n_head) == (12, 768, 12)
    assert c.n_words == 65  # the synthetic language at its largest (the cpu preset's has 16 words)
    # 12 blocks of 12 d^2 + 13 d parameters, plus the final layer norm and the (tied) embeddings
    d = c.n_embd
    blocks = c.n_layer * (12 * d * d + 13 * d) + 2 * d
    assert 84e6 < blocks + (c.n_words + 2 + c.n_positions) * d < 86e6


def test_language_nll_is_the_floor_of_a_model_of_the_language():
    config = gpu_results.TOY_MODEL
    language = policies.synthetic_language(config)
    words, lengths = language.sample_words(4000, torch.Generator().manual_seed(1), max_words=40)
    nll = gpu_results.language_nll(language, words, lengths, max_words=40)
    # a unigram model of the same tokens (stationary-ish word frequencies) is worse than the chain itself
    assert 0 < nll < math.log(config.n_words + 1)
    one = dataclasses.replace(language, end_prob=0.5)
    assert gpu_results.language_nll(
        one, words[:1, :1], torch.tensor([1]), max_words=40
    ) == pytest.approx(math.log(2))


def _plan(per_step, budget, **kw):
    return gpu_results.plan(experiments.preset("full"), per_step, budget, **kw)


def test_plan_priorities_and_budget():
    p = experiments.preset("full")
    stages = _plan(0.25, 280)
    assert [s.name for s in stages][:3] == [
        "arms beta=0.5, 2 seeds",
        "off-policy ablation, 4 updates, seed 0",
        "arms beta=0.05, seed 0",
    ]
    assert stages[0].arms == p.arms and stages[0].seeds == (0, 1) and stages[0].runs == 10
    assert (
        set(stages[1].arms) == {"k2-loss", "k2-loss-is", "k3-loss", "k3-loss-is"}
        and stages[1].updates == 4
    )
    assert len({s.steps for s in stages}) == 1 and 50 <= stages[0].steps <= p.steps
    assert sum(s.seconds(0.25) for s in stages) <= 280
    # more time: the preset's steps and more stages; never a run twice
    big = _plan(0.25, 10**5)
    assert big[0].steps == p.steps and len(big) > 3
    specs = [spec for s in big for spec in s.specs()]
    assert len(specs) == len(set(specs))
    # less time: fewer stages before fewer steps than min_steps, then one seed, then nothing
    assert [s.name for s in _plan(0.5, 280)] == ["arms beta=0.5, 2 seeds"]
    assert [s.seeds for s in _plan(1.0, 280)] == [(0,)]
    assert _plan(1.0, 100) == []


@pytest.mark.parametrize(
    "kw",
    [
        dict(per_step=0.0, budget=10),
        dict(per_step=float("nan"), budget=10),
        dict(per_step=1.0, budget=-1),
        dict(per_step=1.0, budget=10, min_steps=0),
    ],
)
def test_plan_rejects_bad_inputs(kw):
    with pytest.raises(ValueError, match="per_step|budget|min_steps"):
        gpu_results.plan(experiments.preset("full"), **kw)


def test_folder_task(tmp_path):
    assert tasks.folder_task(tmp_path) is None and tasks.folder_task("gpt2") is None
    config = gpu_results.TOY_MODEL
    (tmp_path / tasks.TASK_FILE).write_text(
        json.dumps({"task": "synthetic", "language": dataclasses.asdict(config)})
    )
    task = tasks.folder_task(tmp_path)
    assert (
        task.prompts == tasks.synthetic_task(config).prompts
        and task.name == tasks.synthetic_task(config).name
    )
    (tmp_path / tasks.TASK_FILE).write_text(json.dumps({"task": "other"}))
    with pytest.raises(ValueError, match="klnotes_task.json"):
        tasks.folder_task(tmp_path)


def test_the_script_parses_and_calls_the_module():
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_results.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    import py_compile

    py_compile.compile(
        str(script.parents[1] / "benchmarks" / "bench_trainer.py"), doraise=True
    )  # it calls it
    text = script.read_text()
    assert (
        "-m klnotes.gpt2.gpu_results" in text
        and "bench_trainer.py" in text
        and "GPU_RESULTS_TOY" in text
    )


def test_toy_pipeline_end_to_end(tmp_path, monkeypatch):
    """``python -m klnotes.gpt2.gpu_results --toy``: every stage of scripts/gpu_results.sh but the
    benchmark, on a CPU."""
    monkeypatch.setenv(
        "KLNOTES_POLICY", "unset"
    )  # main() points it at the model; restored afterwards
    monkeypatch.setenv("KLNOTES_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv(experiments.OVERRIDES_ENV, raising=False)
    out = tmp_path / "out"
    assert (
        gpu_results.main(
            [
                "--toy",
                "--device",
                "cpu",
                "--out",
                str(out),
                "--work",
                str(tmp_path / "work"),
                "--pretrain-steps",
                "40",
                "--measure-steps",
                "2",
                "--min-steps",
                "2",
                "--budget",
                "60",
            ]
        )
        == 0
    )
    model = json.loads((out / "model.json").read_text())
    assert model["steps"] == 40 and model["loss_after"] < model["loss_before"]
    assert model["loss_after"] > model["language_nll"] - 0.05  # no model beats the language itself
    folder = gpu_results.model_folder(
        dataclasses.replace(gpu_results.TOY_MODEL, pretrain_steps=40), tmp_path / "work" / "models"
    )
    assert tasks.folder_task(folder) is not None  # the model names its task
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"][0] == "arms beta=0.5, 2 seeds" and summary["runs_done"] >= 10
    timings = pd.read_csv(out / "timings.csv")
    assert (timings["seconds_per_step"] > 0).all() and (timings["tokens_per_second"] > 0).all()
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
    assert "results/full/arms/k2-loss_beta0.5_upb1_seed1.csv" in names
    assert "results/full/measure/k2-loss_beta0.5_upb1_seed0.csv" in names
    stored = experiments.ResultsStore(tmp_path / "work" / "results" / "full").load_all("arms/")
    assert set(stored["arm"]) == set(experiments.preset("full").arms)
    assert set(stored["policy"]) == {"local-" + folder.name}
