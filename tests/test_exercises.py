"""klnotes.exercises: each checkable exercise accepts its right answer, rejects a typical wrong one
with a hint that does not give the answer away, and calls a malformed one malformed."""

import re
from pathlib import Path

import numpy as np
import pytest
import sympy
import torch

from klnotes import exercises
from klnotes.core import estimators

# exercise -> (a right answer, a typical wrong answer, a malformed answer)
CASES = {
    "1.3": ((-2.0, "worse"), (2.0, "worse"), "left"),
    "2.1": ("-m", "m", "-x"),
    "2.2": ("2/Abs(m)", "2/m", "2/|m|"),
    "2.3": ((False, True), (True, True), ("no", "yes")),
    "2.4": ("1 - exp(-u)", "u", "1 - exp(-u"),
    "3.1": ("1", "u", [1, 2]),
    "3.2": ("u**2/2 + u", "u**2/2", 3.0),
    "3.3": (
        lambda lp, lr: torch.exp(lp - lp.detach()) * estimators.k3(lp, lr),
        lambda lp, lr: estimators.k3(lp, lr),
        "rho * k3",
    ),
    "4.1": (
        lambda th, ref: (
            torch.softmax(th, -1)
            * (
                (u := th.log_softmax(-1) - ref.log_softmax(-1))
                - (torch.softmax(th, -1) * u).sum(-1, keepdim=True)
            )
        ),
        lambda th, ref: torch.softmax(th, -1) * (th.log_softmax(-1) - ref.log_softmax(-1)),
        lambda th, ref: th.sum(),
    ),
    "4.2": ("u**2/2", "u", "u**2/2 + beta"),
    "4.3": (("diverges", "bounded"), ("diverges", "diverges"), ("big", "small")),
    "6.1": ("w*u", "w*(1 - exp(-u))", "rho*u"),
    "6.2": ("increases", "unchanged", "away"),
    "6.4": ("w*(u + u**2/2)", "w*u", lambda u, w: np.ones(3)),
    "9.1": ("u", "1 - exp(-u)", "k1"),
    "9.2": ("k1", "k3", "kl"),
    "9.3": ("u", "1 - exp(-u)", None),
}


def test_every_checkable_exercise_has_a_case():
    assert set(CASES) == set(exercises.EXERCISES)


@pytest.mark.parametrize("key", sorted(CASES))
def test_right_answer_is_right(key):
    verdict = exercises.check(key, CASES[key][0])
    assert verdict.status == exercises.RIGHT and bool(verdict), verdict


@pytest.mark.parametrize("key", sorted(CASES))
def test_typical_wrong_answer_gets_a_hint_not_the_answer(key):
    verdict = exercises.check(key, CASES[key][1])
    assert verdict.status == exercises.WRONG and not verdict, verdict
    assert verdict.message.startswith("Hint: ") and len(verdict.message) > 20
    right = CASES[key][0]
    if isinstance(right, str) and len(right) > 1:
        assert right.replace(" ", "") not in verdict.message.replace(" ", ""), verdict


@pytest.mark.parametrize("key", sorted(CASES))
def test_malformed_answer_says_what_was_expected(key):
    verdict = exercises.check(key, CASES[key][2])
    assert verdict.status == exercises.MALFORMED and not verdict, verdict
    assert exercises.expected(key) in verdict.message


def test_equivalent_forms_of_a_formula_are_all_right():
    u = sympy.Symbol("u")
    for answer in (
        "u + u^2/2",
        u + u**2 / 2,
        lambda u: u * (1 + u / 2),
        lambda u: torch.as_tensor(u) * (1 + torch.as_tensor(u) / 2),
    ):
        assert exercises.check("3.2", answer), answer


def test_4_2_accepts_every_function_with_the_same_gradient():
    # E_pi[exp(-u)] = sum pi_ref = 1 and constants have zero gradient: same expected gradient
    assert exercises.check("4.2", "u**2/2 + 3*exp(-u) + 7")
    assert not exercises.check("4.2", "u**2/2 + 3*exp(u)")


def test_unknown_exercise_names_the_checkable_ones():
    with pytest.raises(KeyError, match="3.2"):
        exercises.check("5.9", 1)


def test_each_checkable_exercise_shows_its_call_in_the_chapter():
    root = Path(__file__).resolve().parents[1]
    for key in exercises.EXERCISES:
        chapter = next((root / "book").glob(f"0{key.split('.')[0]}_*.ipynb"))
        assert f'exercises.check(\\"{key}\\"' in chapter.read_text(encoding="utf-8"), key


def test_course_guide_lists_the_checkable_exercises():
    course = (Path(__file__).resolve().parents[1] / "book" / "course.md").read_text(
        encoding="utf-8"
    )
    listed = re.search(r"Exercises with a check: ([^\n]+(?:\n[^\n]+)?)\.", course).group(1)
    keys = set()
    for chapter, first, last in re.findall(r"(\d)\.(\d)(?:–\d\.(\d))?", listed):
        keys |= {f"{chapter}.{n}" for n in range(int(first), int(last or first) + 1)}
    assert keys == set(exercises.EXERCISES), sorted(keys ^ set(exercises.EXERCISES))
