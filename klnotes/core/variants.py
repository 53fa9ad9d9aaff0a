r"""One name per KL variant: :class:`KLVariant`, its parser :func:`parse` and its formatter
:func:`label`.

A KL term in RLHF code is fixed by four choices (chapter 3, :eq:`eq-3-coefficient`; chapter 5 for
the level, chapter 6 for the correction):

- the **estimator** :math:`k_n \in \{k_1, k_2, k_3\}` of
  :math:`\log\pi_\theta - \log\pi_{\mathrm{ref}}`;
- its **placement**: ``"reward"`` (":math:`k_n` in reward", the surrogate
  :math:`\mathrm{sg}(k_n)\log\pi_\theta`, coefficient :math:`k_n`) or ``"loss"`` (":math:`k_n` as
  loss", :math:`k_n` differentiated, coefficient :math:`\partial k_n/\partial\log\pi_\theta`);
- its **level**: ``"token"`` (each token's own log-ratio :math:`u_t`), ``"token-rtg"`` (per token,
  the
  reward-to-go :math:`\sum_{s\ge t}` of the per-token terms; "as loss" only with a ratio) or
  ``"sequence"``
  (the estimator of the sequence log-ratio :math:`U = \sum_t u_t`);
- its off-policy **correction**: ``"none"`` (the surrogate as on-policy code writes it),
  ``"ratio"`` (the detached coefficient at the current policy times
  :math:`\rho = \pi_\theta/\pi_{\mathrm{old}}`, :eq:`eq-6-correction`) or ``"stale-ratio"`` (the
  coefficient computed when the batch was sampled, times :math:`\rho`, as PPO's KL reward is).

The book's label of a variant is written by :func:`label` and read back by :func:`parse`:
``"k3 as loss"``, ``"k1 in reward (rtg)"``, ``"k2 as loss (seq)"``, ``"k2 as loss + IS"``,
``"k1 in reward (rtg) + stale IS"``. :func:`parse` also reads every older spelling used by the
trainer's arms, chapter 5's table, the TRL plug-in and the frameworks audit (:data:`ALIASES`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "ESTIMATORS",
    "PLACEMENTS",
    "LEVELS",
    "CORRECTIONS",
    "KLVariant",
    "label",
    "parse",
    "parse_estimator",
    "ALIASES",
    "ESTIMATOR_ALIASES",
]

#: The estimators :math:`k_1, k_2, k_3` (:mod:`klnotes.core.estimators`).
ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")
#: Where the estimate goes: in the reward (detached) or in the loss (differentiated).
PLACEMENTS: tuple[str, ...] = ("reward", "loss")
#: Per token, per token with reward-to-go ("in reward" only), per sequence.
LEVELS: tuple[str, ...] = ("token", "token-rtg", "sequence")
#: Off-policy handling: none, the ratio correction, the ratio with the coefficient of the sampler.
CORRECTIONS: tuple[str, ...] = ("none", "ratio", "stale-ratio")

_PLACEMENT_WORDS = {"reward": "in reward", "loss": "as loss"}
_LEVEL_SUFFIX = {"token": "", "token-rtg": " (rtg)", "sequence": " (seq)"}
_CORRECTION_SUFFIX = {"none": "", "ratio": " + IS", "stale-ratio": " + stale IS"}


@dataclass(frozen=True)
class KLVariant:
    r"""A KL term as the code that computes it: estimator, placement, level, off-policy correction.

    Its per-token gradient is :math:`c_t\,\nabla_\theta\log\pi_\theta(y_t\mid s_t)` with the
    coefficient
    :math:`c_t` of :func:`klnotes.core.coefficients.closed_form` (``estimator``, :attr:`style`) at
    :math:`u_t` (level ``"token"``), summed as a reward-to-go (``"token-rtg"``,
    :eq:`eq-5-reward-to-go`) or taken at :math:`U` (``"sequence"``); see :eq:`eq-3-coefficient`.

    Attributes:
        estimator: one of :data:`ESTIMATORS`.
        placement: one of :data:`PLACEMENTS`.
        level: one of :data:`LEVELS` (default ``"token"``).
        correction: one of :data:`CORRECTIONS` (default ``"none"``).

    Raises:
        ValueError: a field outside its allowed values (the message lists them), or ``"token-rtg"``
            with ``placement="loss"`` and no correction (the reward-to-go of a differentiated loss
            is
            not a surrogate; with a ratio it is the reward-to-go of the detached coefficients).
    """

    estimator: str
    placement: str
    level: str = "token"
    correction: str = "none"

    def __post_init__(self):
        for field, allowed in (
            ("estimator", ESTIMATORS),
            ("placement", PLACEMENTS),
            ("level", LEVELS),
            ("correction", CORRECTIONS),
        ):
            value = getattr(self, field)
            if value not in allowed:
                raise ValueError(f"KLVariant.{field}={value!r}; allowed: {', '.join(allowed)}")
        if self.level == "token-rtg" and self.placement == "loss" and self.correction == "none":
            raise ValueError(
                "KLVariant level='token-rtg' without a correction applies to placement='reward' "
                f"only (PPO's per-token KL reward), got {self.estimator} as loss"
            )

    @property
    def style(self) -> str:
        """The coefficient style of :mod:`klnotes.core.coefficients`: ``"in_reward"`` or
        ``"as_loss"``."""
        return "in_reward" if self.placement == "reward" else "as_loss"

    @property
    def implementation(self) -> str:
        """The elementwise implementation label (:data:`klnotes.core.coefficients.IMPLEMENTATIONS`),
        e.g. ``"k3 as loss"``: the variant without its level and correction."""
        return f"{self.estimator} {_PLACEMENT_WORDS[self.placement]}"

    @property
    def label(self) -> str:
        """The book's label, :func:`label` of this variant."""
        return label(self)

    def __str__(self) -> str:
        return label(self)


def label(variant: KLVariant) -> str:
    """The one spelling of a variant in the book, tables and figures (read back by :func:`parse`).

    The implementation part names the coefficient of :eq:`eq-3-coefficient`
    (chapter 3's six implementations); the level and the correction are those of
    :doc:`chapter 5 </book/05_sequences>` (:eq:`eq-5-reward-to-go`) and
    :doc:`chapter 6 </book/06_off_policy>` (:eq:`eq-6-correction`).

    ``implementation`` + ``" (rtg)"`` / ``" (seq)"`` for the level + ``" + IS"`` / ``" + stale IS"``
    for the correction, e.g. ``"k2 as loss (seq) + IS"``.

    Raises:
        TypeError: ``variant`` is not a :class:`KLVariant`.
    """
    if not isinstance(variant, KLVariant):
        raise TypeError(f"label() needs a KLVariant, got {type(variant).__name__}: {variant!r}")
    return (
        variant.implementation
        + _LEVEL_SUFFIX[variant.level]
        + _CORRECTION_SUFFIX[variant.correction]
    )


#: Estimator names of the frameworks' configs: verl's ``kl_penalty``/``kl_loss_type`` (``kl``,
#: ``mse``, ``low_var_kl``; ``k1``..``k3``; a trailing ``+`` is verl's straight-through gradient and
#: is
#: dropped here) and OpenRLHF's ``kl_estimator``.
ESTIMATOR_ALIASES: dict[str, str] = {
    "k1": "k1",
    "kl": "k1",
    "k2": "k2",
    "mse": "k2",
    "k3": "k3",
    "low_var_kl": "k3",
}

_ARM_TRAINER_REWARD = KLVariant("k1", "reward", "token-rtg", "stale-ratio")

#: Older spellings, in one place: the trainer's arm names (the ``kl=`` of stored results and of
#: chapter 8) and chapter 5's table names. The frameworks audit's ``"k2_as_loss"`` style and the
#: words "in reward"/"as loss" are read by the grammar of :func:`parse`. Keys are normalized
#: (lower case, underscores as spaces).
ALIASES: dict[str, KLVariant] = {
    # trainer arms (klnotes.gpt2.trainer.ARMS)
    "k1-loss": KLVariant("k1", "loss"),
    "k2-loss": KLVariant("k2", "loss"),
    "k3-loss": KLVariant("k3", "loss"),
    "k1-reward": _ARM_TRAINER_REWARD,
    "k2-loss-is": KLVariant("k2", "loss", correction="ratio"),
    "k3-loss-is": KLVariant("k3", "loss", correction="ratio"),
    # chapter 5 (klnotes.analysis.sequences.IMPLEMENTATIONS)
    "k1 in reward, reward-to-go": KLVariant("k1", "reward", "token-rtg"),
    "k1 in reward, sequence": KLVariant("k1", "reward", "sequence"),
    "k1 in reward, own token": KLVariant("k1", "reward", "token"),
    "k2 as loss, sequence": KLVariant("k2", "loss", "sequence"),
    "k3 as loss, sequence": KLVariant("k3", "loss", "sequence"),
    "k1 as loss, per token": KLVariant("k1", "loss"),
    "k2 as loss, per token": KLVariant("k2", "loss"),
    "k3 as loss, per token": KLVariant("k3", "loss"),
}


def _normalize(text: str) -> str:
    """Lower case, underscores as spaces, single spaces."""
    return " ".join(text.strip().lower().replace("_", " ").split())


_GRAMMAR = re.compile(
    r"^(?P<est>k[123]) (?P<place>in reward|as loss)"
    r"(?: ?\((?P<level>rtg|seq|sequence|token|per token|reward-to-go)\))?"
    r"(?: \+ (?P<stale>stale )?is)?$"
)
_LEVEL_WORDS = {
    None: "token",
    "token": "token",
    "per token": "token",
    "rtg": "token-rtg",
    "reward-to-go": "token-rtg",
    "seq": "sequence",
    "sequence": "sequence",
}


def parse(text: str | KLVariant) -> KLVariant:
    """Read a variant from its label (:func:`label`) or any older spelling (:data:`ALIASES`).

    The inverse of :func:`label`: ``parse(label(v)) == v`` for every variant of chapters
    :doc:`3 </book/03_unified_framework>` to :doc:`6 </book/06_off_policy>`
    (:eq:`eq-3-coefficient`, :eq:`eq-5-reward-to-go`, :eq:`eq-6-correction`).

    Accepted: ``"k3 as loss"``, ``"k3_as_loss"``, ``"K3 As Loss"``, ``"k1 in reward (rtg)"``,
    ``"k2 as loss (seq) + IS"``, ``"k1 in reward (rtg) + stale IS"``, the trainer's
    ``"k3-loss-is"``,
    chapter 5's ``"k3 as loss, per token"``. A
    :class:`KLVariant` is returned as it is.

    Raises:
        ValueError: an unknown spelling; the message lists the labels of the grammar and the
            aliases.
        TypeError: ``text`` is neither a string nor a :class:`KLVariant`.
    """
    if isinstance(text, KLVariant):
        return text
    if not isinstance(text, str):
        raise TypeError(
            f"a KL variant is a string or a KLVariant, got {type(text).__name__}: {text!r}"
        )
    key = _normalize(text)
    if key in ALIASES:
        return ALIASES[key]
    match = _GRAMMAR.match(key)
    if match:
        placement = "reward" if match["place"] == "in reward" else "loss"
        correction = "none" if " + " not in key else ("stale-ratio" if match["stale"] else "ratio")
        return KLVariant(match["est"], placement, _LEVEL_WORDS[match["level"]], correction)
    raise ValueError(
        f"unknown KL variant {text!r}; write 'k<n> in reward|as loss' [' (rtg)'|' (seq)'] "
        f"[' + IS'|' + stale IS'] with n in 1..3 (e.g. 'k3 as loss', 'k1 in reward (rtg)', "
        f"'k2 as loss + IS'), or one of: {', '.join(ALIASES)}"
    )


def parse_estimator(name: str) -> str:
    r"""The estimator ``"k1"``/``"k2"``/``"k3"`` of a framework's estimator name
    (:data:`ESTIMATOR_ALIASES`).

    The estimators are those of :eq:`eq-2-estimators`: with
    :math:`u = \log\pi_\theta - \log\pi_{\mathrm{ref}}`, :math:`k_1 = u`, :math:`k_2 = u^2/2`,
    :math:`k_3 = e^{-u} - 1 + u`.

    verl's straight-through suffix ``+`` is ignored (``"low_var_kl+"`` -> ``"k3"``).

    Raises:
        ValueError: a name outside :data:`ESTIMATOR_ALIASES` (e.g. verl's ``"abs"``, not a
            :math:`k_n`); the message lists the allowed ones.
    """
    key = name.strip().lower().rstrip("+") if isinstance(name, str) else name
    if key in ESTIMATOR_ALIASES:
        return ESTIMATOR_ALIASES[key]
    raise ValueError(f"unknown KL estimator name {name!r}; allowed: {', '.join(ESTIMATOR_ALIASES)}")
