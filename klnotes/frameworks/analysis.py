"""What an option computes: its gradient coefficient, the objective it follows on-policy (exact
enumeration of a length-3 autoregressive policy) and its off-policy bias; :func:`audit` and :func:`table`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Callable

import torch

from klnotes.analysis import exact
from klnotes.frameworks import grouped
from klnotes.frameworks.options import FRAMEWORKS, KLOption, option, spec
from klnotes.frameworks.problems import (
    OBJECTIVES,
    OTHER,
    PROBLEMS,
    objective_gradients,
    off_policy_problem,
    sequence_problem,
    single_step_problem,
)

__all__ = [
    "Audit",
    "coefficient",
    "expected_gradient",
    "off_policy_error",
    "off_policy_prefix_error",
    "with_sequence_ratio",
    "error_to_objective",
    "drift_table",
    "classify_objective",
    "off_policy_bias",
    "audit_option",
    "audit",
    "table",
    "principled_options",
    "name_coefficient",
    "on_policy_objective",
]


def _closed_forms() -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    from klnotes.core.coefficients import closed_form

    return {
        "u": lambda u: closed_form("k1", "in_reward", u),
        "1": lambda u: closed_form("k1", "as_loss", u),
        "1 - e^{-u}": lambda u: closed_form("k3", "as_loss", u),
        "u^2/2": lambda u: closed_form("k2", "in_reward", u),
        "e^{-u} - 1 + u": lambda u: closed_form("k3", "in_reward", u),
        "sign(u)": torch.sign,
        "|u|": torch.abs,
    }


def coefficient(opt: KLOption, u: torch.Tensor) -> torch.Tensor:
    r"""Gradient coefficient of ``opt`` at log-ratios ``u`` (``[n]``, float64), on-policy, one token:
    :func:`klnotes.core.coefficients.from_surrogate` applied to the option's per-token loss.

    .. math:: c(u) = \frac{\partial\ell}{\partial\log\pi_\theta(y_t\mid s_t)}

    at :math:`\pi_{\mathrm{old}} = \pi_\theta` (:eq:`eq-9-coefficient`); the curves of
    :numref:`fig-9-clamps`.
    """
    from klnotes.core.coefficients import from_surrogate

    if opt.token_loss is None:
        return torch.zeros_like(u)

    def surrogate(logp, logp_ref):
        lp, lr = logp.reshape(-1, 1), logp_ref.reshape(-1, 1)
        return opt.token_loss(lp, lr, lp.detach(), torch.ones_like(lp)).reshape(logp.shape)

    return from_surrogate(surrogate, u.clone(), torch.zeros_like(u)).detach()


def _summarize_side(u, c, where, side):
    if not bool(where.any()):
        return None
    values = c[where]
    edge = float(u[where].max()) if side == "<" else float(u[where].min())
    if bool((values == 0).all()):
        what = "0"
    elif bool((values == values[0]).all()):
        what = f"{float(values[0]):.3g}"
    else:
        what = "altered"
    return f"c = {what} for u {side} {edge:.2f}"


def name_coefficient(opt: KLOption) -> tuple[str, str]:
    """(closed-form name on ``|u| <= 2``, where clamps change it on ``|u| <= 25``).

    The closed forms are those of :eq:`eq-3-coefficient` (:math:`c = u`, :math:`1 - e^{-u}`,
    ...), read from :func:`coefficient` (:eq:`eq-9-coefficient`); clamps are
    :numref:`fig-9-clamps`'s.
    """
    if opt.token_loss is None:
        return "0", "-"
    u = torch.linspace(-2.0, 2.0, 81, dtype=torch.float64)
    c = coefficient(opt, u)
    forms = _closed_forms()
    name = next(
        (n for n, f in forms.items() if torch.allclose(c, f(u).to(c), rtol=1e-9, atol=1e-9)), OTHER
    )
    if name == OTHER:
        return name, "-"
    wide = torch.linspace(-25.0, 25.0, 5001, dtype=torch.float64)
    cw = coefficient(opt, wide)
    # Tolerance grows with e^{|u|}: forms like (e^{-u} - 1 + u) + (1 - e^{-u}) cancel in float64.
    atol = 1e-7 + 1e-12 * torch.exp(wide.abs())
    differs = (cw - forms[name](wide).to(cw)).abs() > atol + 1e-7 * cw.abs()
    sides = [
        _summarize_side(wide, cw, differs & (wide < 0), "<"),
        _summarize_side(wide, cw, differs & (wide > 0), ">"),
    ]
    sides = [s for s in sides if s]
    return name, "; ".join(sides) if sides else "none on |u| <= 25"


def expected_gradient(
    opt: KLOption, space: exact.SequenceSpace, theta, ref, behaviour=None
) -> torch.Tensor:
    r"""Exact ``E_{y ~ pi_behaviour}[grad_theta L_opt(y)]`` (behaviour = pi_theta when ``None``), ``[P, V]``.

    .. math:: g = \sum_y \mathrm{sg}\big(\pi_b(y)\big)\,\nabla_\theta L_{\mathrm{opt}}(y)

    (:eq:`eq-4-expected-gradient` on-policy, :eq:`eq-6-naive` off-policy; the option's
    :math:`c_t` of :eq:`eq-9-coefficient`).

    The sampling distribution is detached, as autodiff on a sampled batch does
    (:func:`klnotes.analysis.exact.expected_gradient`); ``L_opt`` is the option's per-token loss summed
    (``opt.sum_tokens``) or averaged over the sequence.
    """

    def per_sequence(logp, lref, old, mask):
        per_token = opt.token_loss(logp, lref, old, mask)
        return per_token.sum(-1) if opt.sum_tokens else per_token.mean(-1)

    return exact.expected_gradient(space, per_sequence, theta, ref, behaviour=behaviour)


def _off_policy_gradients(opt: KLOption, step: float, problem: str):
    if problem not in PROBLEMS:
        raise ValueError(f"unknown problem {problem!r}; allowed: {', '.join(PROBLEMS)}")
    pol, theta, ref, old = (
        off_policy_problem(float(step))
        if problem == "sequence"
        else single_step_problem(1, float(step))
    )
    on = expected_gradient(opt, pol, theta, ref)
    off = expected_gradient(opt, pol, theta, ref, behaviour=old)
    return pol, theta, old, on, off


def off_policy_error(opt: KLOption, step: float = 0.03, problem: str = "sequence") -> float:
    r"""Relative error ``|g_off - g_on| / max(|g_on|, |g_off|)`` of ``opt``'s exact expected gradient on
    samples of ``pi_old`` (logits ``theta + step * z``) against its on-policy gradient at ``pi_theta``.

    .. math:: \frac{\lVert g_{\mathrm{off}} - g_{\mathrm{on}}\rVert}
        {\max(\lVert g_{\mathrm{on}}\rVert, \lVert g_{\mathrm{off}}\rVert)}

    the error of :eq:`eq-6-naive` that a correction (:eq:`eq-6-correction`) removes:
    :numref:`fig-9-offpolicy-bias`.

    ``problem="sequence"`` (default): the length-3 autoregressive problem of :func:`off_policy_problem`,
    where per-token ratios leave the prefixes at ``pi_old``; ``"single step"``: a categorical policy
    with 5 outcomes (:func:`single_step_problem`), one token and no prefix. Clipping is not modelled,
    so keep ``step`` small.
    """
    if opt.token_loss is None:
        return 0.0
    _, _, _, on, off = _off_policy_gradients(opt, step, problem)
    return float((off - on).norm() / max(float(on.norm()), float(off.norm()), 1e-300))


def off_policy_prefix_error(opt: KLOption, step: float = 0.03) -> float:
    r"""Off-policy error *given the prefix*, on :func:`off_policy_problem`: ``max_s |g_off[s] / P_old(s) -
    g_on[s] / P_theta(s)|`` over the prefixes ``s`` (rows of the tabular gradient ``[P, V]``), relative
    to ``max_s |g_on[s] / P_theta(s)|``.

    .. math:: \frac{\max_s \big\lvert g_{\mathrm{off}}[s]/P_{\mathrm{old}}(s)
        - g_{\mathrm{on}}[s]/P_\theta(s)\big\rvert}
        {\max_s \big\lvert g_{\mathrm{on}}[s]/P_\theta(s)\big\rvert}

    zero for the per-token ratio of :eq:`eq-6-token`.

    Row ``s`` of a tabular gradient collects the tokens that follow prefix ``s``, weighted by the
    sampler's probability of reaching ``s``; dividing by it leaves the conditional expectation given
    the prefix. Zero means the option is unbiased per token given the prefix (it reweights the token,
    not the prefix: chapter 6's per-token ratio theorem).
    """
    if opt.token_loss is None:
        return 0.0
    pol, theta, old, on, off = _off_policy_gradients(opt, step, "sequence")
    cond_on = on / exact.prefix_probs(pol, theta).unsqueeze(-1)
    cond_off = off / exact.prefix_probs(pol, old).unsqueeze(-1)
    return float((cond_off - cond_on).abs().max() / max(float(cond_on.abs().max()), 1e-300))


def with_sequence_ratio(opt: KLOption) -> KLOption:
    r"""``opt``'s *on-policy* per-token loss (evaluated with ``pi_old := sg(pi_theta)``, so its own
    per-token ratios are 1 and any KL value is fresh) times the detached sequence ratio
    ``sg(pi_theta(y) / pi_old(y)) = sg(exp(sum_t (log pi_theta - log pi_old)))``.

    .. math:: \ell'(y) = \mathrm{sg}\big(\rho(y)\big)\,\ell(y), \qquad
        \rho(y) = \prod_t\frac{\pi_\theta(y_t\mid s_t)}{\pi_{\mathrm{old}}(y_t\mid s_t)}

    the correction of :eq:`eq-6-correction` at sequence level: :numref:`fig-9-offpolicy-bias`.

    On-policy the factor is 1 (the option's gradient); on ``pi_old``'s samples
    ``E_old[sg(rho(y)) grad L(y)] = E_theta[grad L(y)]`` exactly, whatever ``L``: the sequence-level
    correction that per-token ratios are not.
    """
    if opt.token_loss is None:
        return opt
    base = opt.token_loss

    def token_loss(logp, ref, old, mask):
        m = mask.to(logp.dtype)
        rho = torch.exp(((logp - old) * m).sum(-1, keepdim=True)).detach()
        return rho * base(logp, ref, logp.detach(), mask)

    # no KLVariant has a sequence-ratio correction: the new option names no variant
    return replace(
        opt,
        ratio="detached sequence ratio on the whole term (replaces per-token ratios)",
        coefficient_from="pi_theta",
        token_loss=token_loss,
        variants=(),
    )


def error_to_objective(
    opt: KLOption, objective: str = "sequence reverse KL", shrink: float = 1.0
) -> float:
    r"""Relative error ``|g - s g*| / |s g*|`` of ``opt``'s exact on-policy gradient ``g`` against the
    gradient ``g*`` of ``objective`` on the tiny autoregressive problem, with the policy moved towards
    the reference: logits ``ref + shrink * (theta - ref)``. ``s`` is the aggregation's scale (1 when
    the option sums over tokens, ``1/T`` when it averages).

    .. math:: \frac{\lVert g - s\,g^\star\rVert}{\lVert s\,g^\star\rVert}

    with :math:`g^\star` e.g. the sequence reverse-KL gradient of :eq:`eq-5-seq-gradient`
    (:doc:`chapter 9 </book/09_in_practice>`).
    """
    if objective not in OBJECTIVES[:4]:
        raise ValueError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES[:4])}")
    pol, theta, ref, _ = sequence_problem()
    th = ref + shrink * (theta - ref)
    target = objective_gradients(pol, th, ref)[objective] * (
        1.0 if opt.sum_tokens else 1.0 / pol.length
    )
    g = (
        expected_gradient(opt, pol, th, ref)
        if opt.token_loss is not None
        else torch.zeros_like(target)
    )
    return float((g - target).norm() / target.norm())


def drift_table(
    options: dict, shrinks=(1.0, 0.3, 0.1, 0.03, 0.01), objective: str = "sequence reverse KL"
):
    r"""``pandas.DataFrame`` (columns ``option``, ``shrink``, ``kl``, ``error``): for each labelled
    :class:`KLOption`, :func:`error_to_objective` as the policy moves towards the reference, with
    ``kl`` the exact sequence ``KL(pi_theta || pi_ref)`` at that point (nats).

    Each row is :func:`error_to_objective`'s :math:`\lVert g - s\,g^\star\rVert/\lVert s\,g^\star\rVert`
    (:eq:`eq-5-seq-gradient`) at :math:`\mathrm{KL}(\pi_\theta\,\|\,\pi_{\mathrm{ref}})`
    (:doc:`chapter 9 </book/09_in_practice>`).
    """
    import pandas as pd

    pol, theta, ref, _ = sequence_problem()
    rows = []
    for shrink in shrinks:
        kl = float(exact.sequence_kl(pol, ref + shrink * (theta - ref), ref))
        for label, opt in options.items():
            rows.append(
                {
                    "option": label,
                    "shrink": shrink,
                    "kl": kl,
                    "error": error_to_objective(opt, objective, shrink),
                }
            )
    return pd.DataFrame(rows)


def classify_objective(opt: KLOption, tol: float = 1e-9) -> tuple[str, float, float]:
    r"""Which objective ``opt`` follows on-policy: ``(name, scale, residual)``.

    .. math:: \text{scale} = \frac{\langle g, g^\star\rangle}{\langle g^\star, g^\star\rangle}, \qquad
        \text{residual} = \frac{\lVert g - \text{scale}\,g^\star\rVert}{\lVert g\rVert}

    against the gradients of the sequence KLs :eq:`eq-5-seq-rkl`, :eq:`eq-5-seq-fkl` and the
    token-level ones :eq:`eq-5-tok-rkl`, :eq:`eq-5-tok-fkl` (the audit table's "gradient to" column).

    The exact expected gradient ``g`` on the tiny autoregressive policy is compared with each target
    ``g*`` of :data:`OBJECTIVES`: ``scale = <g, g*> / <g*, g*>`` and
    ``residual = |g - scale g*| / |g|``; the first target with ``residual <= tol`` and ``scale > 0``
    names the objective. A zero gradient is ``"nothing"``; no match is ``"none of these"``.
    """
    if opt.token_loss is None:
        return "nothing", 0.0, 0.0
    pol, theta, ref, targets = sequence_problem()
    g = expected_gradient(opt, pol, theta, ref)
    norm = float(g.norm())
    if norm <= tol * max(float(t.norm()) for t in targets.values()):
        return "nothing", 0.0, 0.0
    best = (OTHER, 0.0, float("inf"))
    for name, t in targets.items():
        scale = float((g * t).sum() / (t * t).sum())
        residual = float((g - scale * t).norm()) / norm
        if residual < best[2]:
            best = (name, scale, residual)
        if residual <= tol and scale > 0:
            return name, scale, residual
    return OTHER, best[1], best[2]


@lru_cache(maxsize=64)
def _grouped_relation(framework: str, key: str) -> str:
    return grouped.relation(grouped.ESTIMATORS[(framework, key)])


def on_policy_objective(opt: KLOption, tol: float = 1e-9) -> tuple[str, float, float, str]:
    """:func:`classify_objective` corrected for the advantage estimator that treats a KL in the reward:
    ``(objective, scale, residual, grouped)`` with ``grouped`` the estimator's exact relation
    (:func:`klnotes.frameworks.grouped.relation`; ``""`` when no estimator touches the KL).

    The objectives are those of :func:`classify_objective` (:eq:`eq-5-seq-rkl`,
    :eq:`eq-5-tok-rkl`, ...); the grouped estimators' relations are
    :doc:`chapter 9 </book/09_in_practice>`'s "Group-normalized advantages with the KL in the reward".

    A per-group std normalization (or pass@k's max) makes the in-reward KL *no constant multiple of any
    objective*: the objective becomes :data:`OTHER`; an estimator that drops the KL (GDPO) leaves
    ``"nothing"`` in the reward; one not modelled gives ``"not modelled"``. Centring (``1 - 1/G``) and
    batch whitening keep the objective and state their condition in ``grouped``.
    """
    name, scale, residual = classify_objective(opt, tol)
    if not opt.advantage or opt.token_loss is None:
        return name, scale, residual, ""
    rel = _grouped_relation(*opt.advantage)
    only_reward = opt.placement == "in reward"
    if rel.startswith("no constant multiple"):
        return OTHER, scale, residual, rel
    if rel.startswith("no KL term"):
        return ("nothing" if only_reward else OTHER), scale, residual, rel
    if rel.startswith("not modelled"):
        return "not modelled", scale, residual, rel
    return name, scale, residual, rel


def off_policy_bias(opt: KLOption, tol: float = 1e-9) -> tuple[str, float]:
    r"""``(verdict, relative error)``: :func:`off_policy_error` on the length-3 problem at ``step = 0.03``
    (ratios within [0.9, 1.1], so PPO clipping would not act) and its cause, read from the option's data.

    The error is :func:`off_policy_error`'s
    :math:`\lVert g_{\mathrm{off}} - g_{\mathrm{on}}\rVert/\max(\lVert g_{\mathrm{on}}\rVert,
    \lVert g_{\mathrm{off}}\rVert)`; the causes are those of :eq:`eq-6-naive`, :eq:`eq-6-stale` and
    :eq:`eq-6-token` (:doc:`chapter 9 </book/09_in_practice>`, "Off-policy: who sees the ratio").

    Verdicts: ``"unbiased"`` (the sequence-level gradient is the on-policy one, to ``tol``);
    ``"unbiased per token given the prefix; biased over sequences"`` (:func:`off_policy_prefix_error`
    below ``tol``: per-token ratios correct each token, the prefixes stay at ``pi_old``);
    otherwise ``"biased: ..."`` with the cause (no ratio; a KL value frozen at ``pi_old``; per-token
    ratios on a term that credits future tokens).
    """
    if opt.token_loss is None:
        return "-", 0.0
    err = off_policy_error(opt)
    if err <= tol:
        return "unbiased", err
    if off_policy_prefix_error(opt) <= tol:
        return "unbiased per token given the prefix; biased over sequences", err
    if "none" in opt.ratio.split(" + "):
        return "biased: no importance ratio on the KL term", err
    if opt.coefficient_from.startswith("pi_old"):
        return "biased: KL value frozen at pi_old (stale reward); per-token ratios", err
    return "biased: per-token ratios; prefixes and future tokens from pi_old", err


@dataclass(frozen=True)
class Audit:
    """An option and what the book computes about it (see the module docstring).

    One row of :doc:`chapter 9 </book/09_in_practice>`'s audit table: the option's coefficient
    :math:`c_t` (:eq:`eq-9-coefficient`), the objective its on-policy gradient follows, and its
    off-policy error (:func:`off_policy_error`).
    """

    option: KLOption
    coefficient: str
    clamp_effect: str
    on_policy: str
    on_policy_scale: float
    on_policy_residual: float
    off_policy: str
    off_policy_error: float
    grouped: str = ""

    def row(self) -> dict:
        o = self.option
        return {
            "framework": o.framework,
            "flags": o.flag_string(),
            "default": o.default,
            "placement": o.placement,
            "formula": o.formula,
            "gradient to": o.gradient_to,
            "credit": o.credit,
            "aggregation": o.aggregation,
            "clamp": o.clamp,
            "ratio on KL": o.ratio,
            "coefficient c(u)": self.coefficient,
            "clamp effect on c": self.clamp_effect,
            "on-policy objective": self.on_policy,
            "advantage estimator": self.grouped,
            "off-policy": self.off_policy,
            "off-policy rel. error": self.off_policy_error,
            "version": o.version,
            "notes": o.notes,
        }


def audit_option(opt: KLOption) -> Audit:
    """Compute the :class:`Audit` of an option.

    One row of :doc:`chapter 9 </book/09_in_practice>`'s audit table: coefficient
    (:eq:`eq-9-coefficient`), objective (:func:`on_policy_objective`), off-policy verdict
    (:func:`off_policy_bias`).
    """
    if opt.placement == "not implemented":
        return Audit(opt, "-", "-", "not implemented (raises)", 0.0, 0.0, "-", 0.0)
    name, clamp_effect = name_coefficient(opt)
    objective, scale, residual, rel = on_policy_objective(opt)
    verdict, err = off_policy_bias(opt)
    return Audit(opt, name, clamp_effect, objective, scale, residual, verdict, err, rel)


def audit(framework: str, **flags) -> Audit:
    """Audit ``framework``'s KL term under ``flags`` (others at their defaults).

    The :class:`Audit` of one row of :doc:`chapter 9 </book/09_in_practice>`'s audit table, its
    coefficient :math:`c_t` of :eq:`eq-9-coefficient`.

    Example: ``audit("verl", use_kl_loss=True, kl_loss_type="low_var_kl")``.
    Frameworks: ``verl`` (flags use_kl_in_reward, kl_penalty, adv_estimator, use_kl_loss,
    kl_loss_type), ``openrlhf`` (init_kl_coef, kl_estimator, use_kl_loss, advantage_estimator),
    ``trl`` (beta, use_bias_correction_kl, num_iterations, loss_type) and ``klnotes`` (the TRL
    plug-in: kl, level, clip).

    Raises:
        ValueError: unknown framework, flag, or flag value (the message lists the known ones).
    """
    return audit_option(option(framework, **flags))


def table(frameworks: tuple[str, ...] | None = None):
    """Every audited option of ``frameworks`` (default: all) as a ``pandas.DataFrame``, one row each.

    :doc:`Chapter 9 </book/09_in_practice>`'s audit table ("The audit table"), one
    :func:`audit_option` per row (coefficients :math:`c_t` of :eq:`eq-9-coefficient`).
    """
    import pandas as pd

    names = tuple(FRAMEWORKS) if frameworks is None else frameworks
    rows = [audit(name, **flags).row() for name in names for flags in spec(name).space]
    return pd.DataFrame(rows)


def principled_options(frameworks: tuple[str, ...] | None = None) -> list[Audit]:
    """The listed options whose on-policy gradient is the sequence reverse-KL gradient (the recipes).

    The options whose :math:`c_t` (:eq:`eq-9-coefficient`) gives the gradient of
    :eq:`eq-5-seq-gradient`: :doc:`chapter 9 </book/09_in_practice>`'s "Recipes".
    """
    names = tuple(FRAMEWORKS) if frameworks is None else frameworks
    out = []
    for name in names:
        for flags in spec(name).space:
            a = audit(name, **flags)
            if a.on_policy == "sequence reverse KL":
                out.append(a)
    return out
