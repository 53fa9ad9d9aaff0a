"""klnotes.gpt2.tasks: verifiable rewards and shipped prompts."""

import pytest
import torch

from klnotes.gpt2 import policies as P
from klnotes.gpt2 import tasks as T


def test_word_count_reward_counts_lower_cased_words_and_caps():
    reward = T.WordCountReward(frozenset({"good", "great"}), cap=4)
    r = reward(["Good, good! a great day", "goodness gracious", "", "good " * 9])
    assert r.dtype == torch.float64
    assert r.tolist() == [0.75, 0.0, 0.0, 1.0]


def test_reward_rejects_a_single_string_and_bad_construction():
    reward = T.WordCountReward(frozenset({"a"}))
    with pytest.raises(TypeError, match="sequence of decoded strings"):
        reward("a a")
    with pytest.raises(ValueError, match="cap must be a positive int"):
        T.WordCountReward(frozenset({"a"}), cap=0)
    with pytest.raises(ValueError, match="non-empty set"):
        T.WordCountReward(frozenset())


def test_positive_words_task_reads_the_shipped_files():
    task = T.positive_words_task()
    assert len(task.prompts) >= 40 and not any(p.startswith("#") for p in task.prompts)
    assert task.score(["What a wonderful, happy day.", "The bridge was closed."]).tolist() == [
        0.5,
        0.0,
    ]


def test_synthetic_task_is_deterministic_and_uses_the_language():
    config = P.TINY_PRESETS["smoke"]
    a, b = T.synthetic_task(config), T.synthetic_task(config)
    assert a.prompts == b.prompts and a.name == b.name
    words = set(P.synthetic_language(config).words)
    assert all(1 <= len(p.split()) <= 3 and set(p.split()) <= words for p in a.prompts)
    target = a.name.rsplit("-", 1)[1]
    assert target in words and a.score([f"{target} x {target}"]).tolist() == [0.5]


def test_synthetic_target_is_rare_under_the_reference_language():
    config = P.TINY_PRESETS["cpu"]
    lang = P.synthetic_language(config)
    target = T.synthetic_task(config).name.rsplit("-", 1)[1]
    pi = lang.stationary()
    assert float(pi[lang.words.index(target)]) < 1.0 / len(lang.words)


def test_task_validates_its_fields():
    with pytest.raises(ValueError, match="non-empty tuple"):
        T.Task("x", ["a"], T.WordCountReward(frozenset({"a"})))
    with pytest.raises(TypeError, match="callable"):
        T.Task("x", ("a",), 3)
    bad = T.Task("x", ("a",), lambda c: torch.zeros(len(c) + 1))
    with pytest.raises(ValueError, match="finite tensor"):
        bad.score(["a"])


def test_task_for_scale_checks_scale_and_tokenizer():
    assert T.task_for_scale("gpu").name == "positive-words"
    assert T.task_for_scale("smoke").name.startswith("synthetic-word-")
    with pytest.raises(ValueError, match="allowed: smoke, cpu, gpu"):
        T.task_for_scale("huge")

    class OtherTokenizer:
        def get_vocab(self):
            return {"x": 0}

    with pytest.raises(ValueError, match="lacks the synthetic language's words"):
        T.task_for_scale("smoke", OtherTokenizer())
