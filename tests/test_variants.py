"""klnotes.core.variants: one parser and one formatter for every KL variant, old spellings included."""

import itertools
import re

import pytest

from klnotes.core import coefficients, variants
from klnotes.core.variants import KLVariant
from klnotes.gpt2 import trainer

ALL = [
    KLVariant(e, p, lvl, c)
    for e, p, lvl, c in itertools.product(
        variants.ESTIMATORS, variants.PLACEMENTS, variants.LEVELS, variants.CORRECTIONS
    )
    if not (lvl == "token-rtg" and p == "loss" and c == "none")
]


@pytest.mark.parametrize("variant", ALL, ids=str)
def test_label_parses_back_to_the_same_variant(variant):
    assert variants.parse(variants.label(variant)) == variant
    assert variants.parse(variants.label(variant).upper().replace(" ", "_")) == variant


def test_labels_are_distinct():
    assert len({variants.label(v) for v in ALL}) == len(ALL) == 51


@pytest.mark.parametrize(
    "old, new",
    [
        ("k3-loss-is", "k3 as loss + IS"),
        ("k2-loss", "k2 as loss"),
        ("k1-reward", "k1 in reward (rtg) + stale IS"),
        ("k3 as loss", "k3 as loss"),
        ("k3 as loss, per token", "k3 as loss"),
        ("k3 as loss (seq)", "k3 as loss (seq)"),
        ("k2_as_loss", "k2 as loss"),
        ("k1_in_reward", "k1 in reward"),
        ("k1 in reward, reward-to-go", "k1 in reward (rtg)"),
        ("k1 in reward, own token", "k1 in reward"),
    ],
)
def test_old_spellings_map_to_one_variant(old, new):
    assert variants.label(variants.parse(old)) == new


def test_every_alias_and_arm_parses():
    for alias, variant in variants.ALIASES.items():
        assert variants.parse(alias) is variant
    for arm in trainer.ARMS[1:]:
        assert trainer.ARM_LABELS[arm] == variants.label(variants.parse(arm))


def test_implementation_is_the_coefficients_label():
    for v in ALL:
        assert v.implementation in coefficients.IMPLEMENTATIONS
        assert coefficients.parse_implementation(v.implementation) == (v.estimator, v.style)


@pytest.mark.parametrize(
    "bad", ["k4 as loss", "k2 in loss", "k1 as loss (rtg)", "", "k2 as loss + XX"]
)
def test_unknown_spellings_name_the_value_and_the_grammar(bad):
    with pytest.raises(ValueError, match=f"unknown KL variant {re.escape(repr(bad))}|token-rtg"):
        variants.parse(bad)


def test_bad_fields_list_the_allowed_values():
    with pytest.raises(
        ValueError, match=r"KLVariant.level='tok'; allowed: token, token-rtg, sequence"
    ):
        KLVariant("k1", "loss", "tok")
    with pytest.raises(
        ValueError, match="token-rtg' without a correction applies to placement='reward'"
    ):
        KLVariant("k2", "loss", "token-rtg")
    with pytest.raises(TypeError, match="string or a KLVariant, got int"):
        variants.parse(3)


@pytest.mark.parametrize(
    "name, k",
    [("kl", "k1"), ("mse", "k2"), ("low_var_kl", "k3"), ("low_var_kl+", "k3"), ("k2", "k2")],
)
def test_framework_estimator_names(name, k):
    assert variants.parse_estimator(name) == k


def test_framework_abs_is_not_a_kn_estimator():
    with pytest.raises(ValueError, match="unknown KL estimator name 'abs'; allowed: k1, kl"):
        variants.parse_estimator("abs")
