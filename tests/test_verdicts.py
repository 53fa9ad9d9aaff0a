"""klnotes.analysis.verdicts: the one rule behind every printed verdict of chapters 7 and 8."""

import math

import numpy as np
import pandas as pd
import pytest

from klnotes.analysis import verdicts as V


def test_critical_value_is_students_t():
    assert V.critical_value(2) == pytest.approx(12.7062, abs=1e-4)
    assert V.critical_value(3) == pytest.approx(4.3027, abs=1e-4)
    assert V.critical_value(5) == pytest.approx(2.7764, abs=1e-4)
    # reference values of Student's t tables
    assert V.critical_value(31) == pytest.approx(2.0423, abs=1e-4)
    assert V.critical_value(121) == pytest.approx(1.9799, abs=1e-4)
    assert V.critical_value(5, level=0.99) == pytest.approx(4.6041, abs=1e-4)
    assert V.critical_value(2, level=0.5) == pytest.approx(1.0, abs=1e-6)  # Cauchy: tan(pi / 4)
    for bad in (1, 0, 2.0, True):
        with pytest.raises(ValueError, match="n must be an int >= 2"):
            V.critical_value(bad)
    with pytest.raises(ValueError, match="level"):
        V.critical_value(3, level=1.0)


def test_difference_verdict_three_outcomes():
    clear = V.difference_verdict([0.658, 1.040, 0.976], "k2 below k3")
    assert clear.outcome == V.HOLDS and clear.n == 3 and clear.k == pytest.approx(4.3027, abs=1e-4)
    assert clear.estimate == pytest.approx(0.8913, abs=1e-4) and clear.z > clear.k
    noisy = V.difference_verdict([0.549, 0.006, -0.048], "k1 further than none")
    assert noisy.outcome == V.INCONCLUSIVE and 0 < noisy.z < noisy.k
    against = V.difference_verdict([-1.0, -1.1, -0.9], "claim")
    assert against.outcome == V.FAILS
    # a fixed k, and the absolute floor tol
    assert V.difference_verdict([1.0, 1.2], "c", k=2.0).outcome == V.HOLDS
    assert V.difference_verdict([1.0, 1.2], "c").outcome == V.INCONCLUSIVE  # t_{0.975,1} = 12.7
    assert V.difference_verdict([1e-5, 1.1e-5, 0.9e-5], "c", tol=1e-3).outcome == V.INCONCLUSIVE


def test_identical_arms_and_single_values_are_inconclusive():
    assert V.difference_verdict([0.0, 0.0, 0.0], "c").outcome == V.INCONCLUSIVE
    one = V.difference_verdict([3.0], "c")
    assert one.outcome == V.INCONCLUSIVE and math.isnan(one.se) and "no standard error" in str(one)
    with pytest.raises(ValueError, match="finite"):
        V.difference_verdict([1.0, math.nan], "c")
    with pytest.raises(ValueError, match="at least one"):
        V.difference_verdict([], "c")
    with pytest.raises(ValueError, match="k must be"):
        V.difference_verdict([1.0, 2.0], "c", k=-1)


def test_equivalence_verdict():
    assert V.equivalence_verdict([0.01, -0.002, 0.005], "within 25%", 0.25).outcome == V.HOLDS
    assert V.equivalence_verdict([1.0, 1.1, 0.9], "within 25%", 0.25).outcome == V.FAILS
    assert V.equivalence_verdict([0.2, -0.2, 0.3], "within 25%", 0.25).outcome == V.INCONCLUSIVE
    with pytest.raises(ValueError, match="margin"):
        V.equivalence_verdict([0.1, 0.2], "c", 0)


def test_all_verdict():
    h = V.difference_verdict([1.0, 1.1, 0.9], "a")
    i = V.difference_verdict([1.0, -1.0, 0.5], "b")
    f = V.difference_verdict([-1.0, -1.1, -0.9], "c")
    assert V.all_verdict([h, h], "both").outcome == V.HOLDS
    assert V.all_verdict([h, i], "both").outcome == V.INCONCLUSIVE
    assert V.all_verdict([h, i, f], "all").outcome == V.FAILS
    assert V.all_verdict([h, i], "both").estimate == i.estimate  # numbers of the weakest part
    with pytest.raises(ValueError):
        V.all_verdict([], "none")


def _runs(values: dict, steps: int = 8) -> pd.DataFrame:
    """``values[(arm, seed)] = array of per-step metric values``."""
    rows = [
        {"arm": arm, "seed": seed, "step": t, "kl": float(v[t])}
        for (arm, seed), v in values.items()
        for t in range(steps)
    ]
    return pd.DataFrame(rows)


def test_arm_differences_seeds_and_steps():
    rng = np.random.default_rng(0)
    base = {s: rng.normal(size=8) for s in range(3)}
    runs = _runs(
        {**{("a", s): base[s] + 1.0 for s in range(3)}, **{("b", s): base[s] for s in range(3)}}
    )
    d = V.arm_differences(runs, "kl", "a", "b", last=5)
    assert (
        d.unit == "seeds"
        and d.n == 3
        and d.estimate == pytest.approx(1.0)
        and d.se == pytest.approx(0, abs=1e-12)
    )
    one = runs[runs["seed"] == 0]
    d1 = V.arm_differences(one, "kl", "a", "b", last=5)
    tail = base[0][-5:]
    assert d1.unit == "steps of one run" and d1.n == 5 and d1.estimate == pytest.approx(1.0)
    # one seed: the standard error of two independent means from each arm's step-to-step spread
    assert d1.se == pytest.approx(math.sqrt(2 * tail.var(ddof=1) / 5))
    rel = V.arm_differences(one.assign(kl=one["kl"] + 10), "kl", "a", "b", last=5, relative=True)
    assert rel.estimate == pytest.approx(1.0 / (tail + 10).mean()) and rel.se == pytest.approx(
        d1.se / (tail + 10).mean()
    )
    v = V.paired_verdict(
        runs.assign(kl=runs["kl"] + rng.normal(scale=1e-3, size=len(runs))), "kl", "b", "a"
    )
    assert (
        v.outcome == V.HOLDS and v.unit == "seeds" and "b ends with a smaller kl than a" in str(v)
    )
    inside = abs(rel.estimate) + V.critical_value(5) * rel.se < 0.25
    assert V.equivalence_verdict(rel, "within 25%", 0.25).outcome == (
        V.HOLDS if inside else V.INCONCLUSIVE
    )
    with pytest.raises(KeyError, match="arm 'c'"):
        V.arm_differences(runs, "kl", "a", "c")
    with pytest.raises(KeyError, match="column 'reward'"):
        V.arm_differences(runs, "reward", "a", "b")
    with pytest.raises(ValueError, match="duplicated"):
        V.arm_differences(pd.concat([runs, runs]), "kl", "a", "b")
    with pytest.raises(ValueError, match="last"):
        V.arm_differences(runs, "kl", "a", "b", last=0)
    with pytest.raises(ValueError, match="non-zero mean"):
        V.arm_differences(one.assign(kl=0.0), "kl", "a", "b", relative=True)


def test_identical_curves_one_seed_give_no_verdict():
    """The gpu-scale failure this module exists for: two runs of one seed that share their samples
    and differ by a small systematic amount (1e-5 here) on curves that fluctuate more from step to
    step
    are not a finding, although every step-paired difference has the same sign."""
    rng = np.random.default_rng(1)
    shared = np.linspace(0, 1e-3, 60) + rng.normal(
        scale=1e-4, size=60
    )  # same samples: same fluctuations
    runs = _runs({("none", 0): shared + 1e-5, ("k2-loss", 0): shared}, steps=60)
    v = V.paired_verdict(runs, "kl", "k2-loss", "none")
    assert v.outcome == V.INCONCLUSIVE, str(v)
    assert v.unit == "steps of one run" and v.n == 5
    big = _runs({("none", 0): shared + 1e-2, ("k2-loss", 0): shared}, steps=60)
    assert V.paired_verdict(big, "kl", "k2-loss", "none").outcome == V.HOLDS


def test_verdict_rejects_unknown_outcome():
    with pytest.raises(ValueError, match="outcome"):
        V.Verdict("c", "maybe", 0.0, 0.0, 2, 1.0)
