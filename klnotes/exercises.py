"""Answers students can check: ``check("3.2", answer)`` says right, wrong (a hint) or malformed.

Every exercise of the book with a numeric or symbolic answer has an entry here. The right answer is
never stored as a number or a formula: it is computed when ``check`` runs, by the same package
functions the chapter uses (autograd coefficients, exact enumeration, closed-form Gaussian moments),
and the student's answer is compared with it. A wrong answer gets a hint that points at the step
that usually goes wrong, never the answer itself.

Answer formats (``expected(exercise)`` prints the one an exercise wants):

- a **function of named variables** (``u``, ``w``, ``m``): a string such as ``"u**2/2"``, a SymPy
  expression, or a Python callable taking NumPy arrays (``lambda u: u**2 / 2``). It is evaluated on
  a float64 grid and compared pointwise with the computed truth (relative tolerance ``1e-6``);
- a **callable** with a given signature (a surrogate loss, an expected-gradient formula): it is run
  on the book's test problems and its result compared with the exact one;
- a **number**, a **tuple** or one word from a listed set.

Example::

    >>> from klnotes import exercises
    >>> exercises.check("2.4", "1 - exp(-u)")
    2.4: right. ...
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "RIGHT",
    "WRONG",
    "MALFORMED",
    "RTOL",
    "Verdict",
    "Malformed",
    "Exercise",
    "EXERCISES",
    "expected",
    "check",
]

#: The three outcomes of :func:`check`: the answer is right, wrong, or not of the expected form.
RIGHT, WRONG, MALFORMED = "right", "wrong", "malformed"
#: Relative tolerance of a numeric or functional answer against the package's own value.
RTOL = 1e-6


@dataclass(frozen=True)
class Verdict:
    """The result of :func:`check`: ``status`` is ``"right"``, ``"wrong"`` or ``"malformed"``.

    The answer to an exercise of a chapter's "Exercises" section, as the course guide
    (:doc:`/book/course`) lists them; no formula.

    ``message`` is a hint for a wrong answer (never the answer) and, for a malformed one, what was
    expected. ``bool(verdict)`` is True only for a right answer.
    """

    exercise: str
    status: str
    message: str

    def __bool__(self) -> bool:
        return self.status == RIGHT

    def __str__(self) -> str:
        return f"{self.exercise}: {self.status}. {self.message}"

    __repr__ = __str__


class Malformed(ValueError):
    """An answer that cannot be compared: the message says what was expected.

    Raised by an :class:`Exercise`'s judge (:doc:`/book/course`); no formula.
    """


@dataclass(frozen=True)
class Exercise:
    """One checkable exercise.

    One entry of the course guide's exercise index (:doc:`/book/course`); the formulas are the
    chapters' (e.g. exercise 3.2 checks a coefficient :math:`c(u)` of :eq:`eq-3-coefficient`).

    ``judge(answer)`` returns ``None`` for a right answer, a hint string for a wrong one, and raises
    :class:`Malformed` for an answer of the wrong form. ``expects`` describes the form.
    """

    key: str
    question: str
    expects: str
    judge: Callable[[Any], str | None]


# --- reading answers ------------------------------------------------------------------------------

_SYMPY_FUNCS = ("exp", "log", "sqrt", "Abs", "sign", "sin", "cos", "tanh", "Max", "Min")


def _as_function(answer: Any, variables: tuple[str, ...]) -> Callable[..., np.ndarray]:
    """A float64 NumPy function of ``variables`` from a string, a SymPy expression or a callable.

    Raises :class:`Malformed` naming the bad value and the variables allowed.
    """
    import sympy

    if callable(answer) and not isinstance(answer, sympy.Basic):

        def call(*arrays):
            try:
                out = answer(*arrays)
            except Exception:  # noqa: BLE001 - a callable written for tensors: retry with tensors
                out = answer(*(torch.as_tensor(a) for a in arrays))
            if isinstance(out, torch.Tensor):
                out = out.detach().cpu().numpy()
            return out

        return call
    symbols = {name: sympy.Symbol(name, real=True) for name in variables}
    if isinstance(answer, str):
        names = {**{f: getattr(sympy, f) for f in _SYMPY_FUNCS}, "abs": sympy.Abs, **symbols}
        try:
            expr = sympy.parse_expr(answer.replace("^", "**"), local_dict=names)
        except Exception as err:  # noqa: BLE001 - any error of the answer is the student's
            raise Malformed(
                f"could not read {answer!r} as a formula ({type(err).__name__}); "
                f"write it in Python syntax with the variables {', '.join(variables)}, "
                'e.g. "exp(-u) + u**2/2"'
            ) from None
    elif isinstance(answer, sympy.Basic):
        expr = answer.subs({sympy.Symbol(n): s for n, s in symbols.items()})
    else:
        raise Malformed(
            f"got a {type(answer).__name__}; expected a formula in "
            f"{', '.join(variables)}: a string, a SymPy expression or a function"
        )
    if not isinstance(expr, sympy.Expr):
        raise Malformed(f"{answer!r} is not a formula (it reads as {type(expr).__name__})")
    extra = {str(s) for s in expr.free_symbols} - set(variables)
    if extra:
        raise Malformed(
            f"{answer!r} uses {', '.join(sorted(extra))}; the only variables allowed "
            f"are {', '.join(variables)}"
        )
    return sympy.lambdify([symbols[n] for n in variables], expr, modules="numpy")


def _evaluate(answer: Any, variables: tuple[str, ...], grids: tuple[np.ndarray, ...]) -> np.ndarray:
    """The answer's values on ``grids`` (float64, their broadcast shape), or :class:`Malformed`."""
    fn = _as_function(answer, variables)
    shape = np.broadcast_shapes(*(g.shape for g in grids))
    try:
        with np.errstate(all="ignore"):
            out = np.asarray(fn(*grids), dtype=np.float64)
    except Malformed:
        raise
    except Exception as err:  # noqa: BLE001 - any error of the answer is the student's
        raise Malformed(
            f"evaluating the answer at {', '.join(variables)} arrays failed: "
            f"{type(err).__name__}: {err}"
        ) from None
    out = np.broadcast_to(out, shape) if out.ndim == 0 else out
    if out.shape != shape:
        raise Malformed(
            f"the answer returned shape {out.shape} for inputs of shape {shape}; "
            "it must work elementwise"
        )
    if not np.all(np.isfinite(out)):
        raise Malformed(
            "the answer is not finite everywhere on the test grid "
            f"({', '.join(variables)} in the ranges the exercise uses)"
        )
    return out


def _close(got: np.ndarray, want: np.ndarray, rtol: float = RTOL, *, up_to_constant=False) -> bool:
    diff = got - want
    if up_to_constant:
        diff = diff - diff.mean()
    return bool(np.max(np.abs(diff)) <= rtol * max(1.0, float(np.max(np.abs(want)))))


def _number(answer: Any, what: str) -> float:
    if isinstance(answer, bool) or not isinstance(answer, (int, float, np.floating, np.integer)):
        if isinstance(answer, torch.Tensor) and answer.numel() == 1:
            return float(answer)
        raise Malformed(f"{what}: expected a number, got {answer!r}")
    if not math.isfinite(float(answer)):
        raise Malformed(f"{what}: expected a finite number, got {answer!r}")
    return float(answer)


def _pair(answer: Any, what: str) -> tuple:
    if not isinstance(answer, (tuple, list)) or len(answer) != 2:
        raise Malformed(f"expected a pair {what}, got {answer!r}")
    return tuple(answer)


def _word(answer: Any, allowed: dict[str, str], what: str) -> str:
    """Normalize a word answer through ``allowed`` (synonym -> canonical)."""
    if not isinstance(answer, str) or answer.strip().lower() not in allowed:
        raise Malformed(f"{what}: expected one of {sorted(set(allowed))}, got {answer!r}")
    return allowed[answer.strip().lower()]


# --- the problems the checks run on ---------------------------------------------------------

U = np.linspace(-3.0, 3.0, 61)
U9 = np.linspace(-2.0, 2.0, 41)  # inside the frameworks' value clamps (|k3| <= 10)
W = np.array([0.5, 0.8, 1.0, 1.3, 2.0])[:, None]


def _coefficient(surrogate, u: np.ndarray, logp_old_shift: np.ndarray | None = None) -> np.ndarray:
    """``d surrogate / d logp`` at log-ratios ``u`` (autograd, ``klnotes.core.coefficients``)."""
    from klnotes.core import coefficients

    ut = torch.as_tensor(u, dtype=torch.float64)
    return coefficients.from_surrogate(surrogate, ut, torch.zeros_like(ut)).numpy()


def _surrogate(label: str):
    from klnotes.core import surrogates

    return lambda lp, lr: surrogates.surrogate(label, lp, lr)


def _categorical_problem(seed: int = 0):
    from klnotes.analysis import exact

    ref = exact.random_categorical(6, scale=1.0, seed=seed, contexts=3)
    return exact.perturb(ref, 1.0, seed=seed + 1), ref


# --- the exercises --------------------------------------------------------------------------


def _ex_1_3(answer):
    from klnotes.analysis import objective

    mu, verdict = _pair(answer, "(mu, 'better' or 'worse')")
    mu = _number(mu, "the mean of the fit")
    verdict = _word(verdict, {"better": "better", "worse": "worse"}, "the comparison")
    grid = torch.linspace(-6, 6, 601, dtype=torch.float64)
    target = objective.gaussian_mixture_logprobs(
        grid, means=(-2.0, 2.0), stds=(0.6, 0.6), weights=(0.4, 0.6)
    )
    fits = {
        init: objective.fit_gaussian(target, grid, "reverse", init=init)
        for init in ((-1.0, 0.5), (1.0, 0.5))
    }

    def kl(fit):
        q = objective.discretized_gaussian_logprobs(
            grid, *(torch.tensor(v, dtype=grid.dtype) for v in fit)
        )
        return float(objective.kl_divergence(q, target))

    found = fits[(-1.0, 0.5)][0]
    truth = "worse" if kl(fits[(-1.0, 0.5)]) > kl(fits[(1.0, 0.5)]) else "better"
    if abs(mu - found) > 0.1:
        if abs(mu - fits[(1.0, 0.5)][0]) <= 0.1:
            return "that is the fit from the default start; pass init=(-1.0, 0.5)"
        return "run objective.fit_gaussian(target, grid, 'reverse', init=(-1.0, 0.5)) and read mu"
    if verdict != truth:
        return (
            "the location is right; now compare the reverse KL, objective.kl_divergence(q, "
            "target), of the two fits: which mode holds more of the target's mass?"
        )
    return None


def _ex_2_1(answer):
    """Bias E[k3] - KL when the reference puts mass m where the policy has none."""
    from klnotes.core import estimators

    m = np.linspace(0.05, 0.9, 18)
    got = _evaluate(answer, ("m",), (m,))
    gen = torch.Generator().manual_seed(0)
    pi = torch.softmax(torch.randn(5, generator=gen, dtype=torch.float64), -1)
    shape = torch.softmax(torch.randn(5, generator=gen, dtype=torch.float64), -1)
    truth = []
    for mass in m:  # the reference: (1 - m) on the policy's 5 outcomes, m on a sixth it never makes
        ref = (1 - mass) * shape
        logp, logr = pi.log(), ref.log()
        kl = float((pi * (logp - logr)).sum())
        truth.append(float((pi * estimators.k3(logp, logr)).sum()) - kl)
    truth = np.array(truth)
    if _close(got, truth):
        return None
    if _close(got, -truth):
        return "check the sign: does k3 over- or underestimate when E[delta] < 1?"
    if _close(got, np.zeros_like(m)):
        return (
            "k3 is unbiased only under the support condition; here E[delta] is a sum over the "
            "policy's support only"
        )
    return "write E[k3] = E[delta] - 1 + E[u] and compute E[delta] over the policy's support"


def _ex_2_2(answer):
    from klnotes.analysis import montecarlo

    m = np.concatenate([np.linspace(-2.0, -0.1, 10), np.linspace(0.1, 2.0, 10)])
    got = _evaluate(answer, ("m",), (m,))
    truth = np.array(
        [
            montecarlo.gaussian_moments(
                "k1", montecarlo.Gaussian(0.0, 1.0), montecarlo.Gaussian(float(v), 1.0)
            ).relative_std
            for v in m
        ]
    )
    if _close(got, truth):
        return None
    if _close(np.abs(got), truth):
        return "try a negative m: a standard deviation and a KL are never negative"
    return "with equal variances u is linear in z: read KL = a and std(k1) = |b| off eq-2-gauss-u"


def _ex_2_3(answer):
    from klnotes.analysis import montecarlo

    pair = _pair(
        answer, "(finite at sigma_q = sigma_p/2, finite at sigma_q = 0.8 sigma_p) of booleans"
    )
    if not all(isinstance(v, (bool, np.bool_)) for v in pair):
        raise Malformed(f"expected two booleans (True = finite variance), got {answer!r}")
    p = montecarlo.Gaussian(0.0, 1.0)
    truth = tuple(montecarlo.k3_variance_finite(montecarlo.Gaussian(0.3, s), p) for s in (0.5, 0.8))
    if tuple(bool(v) for v in pair) == truth:
        return None
    return (
        "the condition of prop-2-k3-variance compares sigma_q^2 with sigma_p^2 / 2; "
        "montecarlo.k3_variance_finite tells you each case"
    )


def _ex_2_4(answer):
    from klnotes.core import estimators

    got = _evaluate(answer, ("u",), (U,))
    truth = _coefficient(lambda lp, lr: estimators.k3(lp, lr), U)
    if _close(got, truth):
        return None
    if _close(got, U):
        return "that is the derivative of k2; differentiate e^{-u} - 1 + u"
    if _close(got, -truth):
        return "check the sign of the derivative of e^{-u}"
    return "k3 = e^{-u} - 1 + u with u = log pi_theta - log pi_ref: differentiate in u"


def _ex_3_1(answer):
    got = _evaluate(answer, ("u",), (U,))
    truth = _coefficient(_surrogate("k1 as loss"), U)
    if _close(got, truth):
        return None
    if _close(got, U):
        return "that is the coefficient of k1 *in reward*; as a loss, differentiate k1 itself"
    return "the coefficient of an 'as loss' term is d k_n / d log pi_theta"


def _ex_3_2(answer):
    got = _evaluate(answer, ("u",), (U,))
    reward, loss = _surrogate("k2 in reward"), _surrogate("k2 as loss")
    truth = _coefficient(lambda lp, lr: reward(lp, lr) + loss(lp, lr), U)
    if _close(got, truth):
        return None
    if _close(got, _coefficient(reward, U)):
        return "that is the 'in reward' part only; add the 'as loss' part"
    if _close(got, _coefficient(loss, U)):
        return "that is the 'as loss' part only; add the 'in reward' part"
    return "the coefficients of the two parts add; coefficients.from_surrogate checks each"


def _ex_3_3(answer):
    from klnotes.core import estimators

    if not callable(answer):
        raise Malformed(
            f"expected a surrogate, a function (logp, logp_ref) -> tensor, got {answer!r}"
        )
    ut = torch.as_tensor(U, dtype=torch.float64)
    lp, lr = ut - 1.0, torch.full_like(ut, -1.0)
    try:
        with torch.no_grad():
            value = answer(lp.clone(), lr.clone())
        from klnotes.core import coefficients

        c = coefficients.from_surrogate(answer, lp, lr)
    except Exception as err:  # noqa: BLE001 - any error of the answer is the student's
        raise Malformed(
            f"calling the surrogate on float64 tensors [61] failed: {type(err).__name__}: {err}"
        ) from None
    if not isinstance(value, torch.Tensor) or value.shape != ut.shape:
        raise Malformed("the surrogate must return a tensor of logp's shape (one value per sample)")
    coefficient_ok = _close(c.numpy(), U)
    value_ok = _close(value.detach().numpy(), estimators.k3(lp, lr).numpy())
    if coefficient_ok and value_ok:
        return None
    if coefficient_ok:
        return "the coefficient is right, but the surrogate's value must be k3's (use k3's value)"
    if value_ok:
        return (
            "the value is k3's but the coefficient is not u: multiply by a factor whose value "
            "is 1 and whose gradient is the score"
        )
    return "keep k3's value and find a factor of value 1 that adds k3 times the score"


def _ex_4_1(answer):
    from klnotes.analysis import exact

    if not callable(answer):
        raise Malformed(
            f"expected a function (logits, ref_logits) -> expected gradient, got {answer!r}"
        )
    for seed in (0, 3):
        theta, ref = _categorical_problem(seed)
        try:
            got = torch.as_tensor(answer(theta.clone(), ref.clone()), dtype=torch.float64)
        except Exception as err:  # noqa: BLE001 - any error of the answer is the student's
            raise Malformed(
                f"calling it on logits of shape {tuple(theta.shape)} failed: "
                f"{type(err).__name__}: {err}"
            ) from None
        if got.shape != theta.shape:
            raise Malformed(
                f"expected a gradient of the logits' shape {tuple(theta.shape)}, "
                f"got {tuple(got.shape)}"
            )
        truth = exact.categorical_kl_gradient(theta, ref)
        if exact.relative_error(got, truth) > RTOL:
            if float(got.sum(-1).abs().max()) > 1e-9:
                return (
                    "a softmax gradient sums to zero over the outcomes of each context; "
                    "yours does not: the score is e_y - pi_theta, not e_y"
                )
            return "compare with exact.categorical_kl_gradient on a random problem"
    return None


def _ex_4_2(answer):
    """f with 'k2 in reward + k2 as loss' following grad E_pi[f(u)]: coefficient f + f', up to a
    constant (a constant coefficient has zero expected gradient)."""
    h = 1e-5
    got = _evaluate(answer, ("u",), (U,))
    slope = (_evaluate(answer, ("u",), (U + h,)) - _evaluate(answer, ("u",), (U - h,))) / (2 * h)
    reward, loss = _surrogate("k2 in reward"), _surrogate("k2 as loss")
    truth = _coefficient(lambda lp, lr: reward(lp, lr) + loss(lp, lr), U)
    # grad E_pi[f(u)] = E_pi[(f(u) + f'(u)) grad log pi]: compare coefficients up to a constant
    if _close(got + slope, truth, 1e-5, up_to_constant=True):
        return None
    if _close(got + slope, U, 1e-5, up_to_constant=True):
        return "that function's gradient is the reverse KL's; the exercise's is not"
    return (
        "the gradient of E_pi[f(u)] has coefficient f(u) + f'(u) (in reward plus as loss); "
        "match it to the coefficient of 'k2 in reward + k2 as loss'"
    )


def _ex_4_3(answer):
    from klnotes.analysis import exact

    words = {
        "diverges": "diverges",
        "infinite": "diverges",
        "unbounded": "diverges",
        "grows": "diverges",
        "bounded": "bounded",
        "finite": "bounded",
    }
    got = tuple(_word(a, words, "each variance") for a in _pair(answer, "(Var[1-delta], Var[u])"))
    ref = torch.zeros(4, dtype=torch.float64)
    chi2, var_u = [], []
    for a in (-5.0, -10.0, -20.0, -40.0):
        theta = torch.tensor([a, 0.0, 0.0, 0.0], dtype=torch.float64)
        chi2.append(float(exact.categorical_chi_square(theta, ref)))
        pi = torch.softmax(theta, -1)
        u = theta.log_softmax(-1) - ref.log_softmax(-1)
        var_u.append(float((pi * u**2).sum() - (pi * u).sum() ** 2))

    def trend(v):
        return "diverges" if v[-1] > 1e3 * v[0] else "bounded"

    truth = (trend(chi2), trend(var_u))
    if got == truth:
        return None
    wrong = [name for name, g, t in zip(("Var[1-delta]", "Var[u]"), got, truth) if g != t]
    return (
        f"reconsider {' and '.join(wrong)}: compute the contribution of the vanishing outcome, "
        "epsilon times its squared term, as epsilon -> 0"
    )


def _ex_6_1(answer):
    from klnotes.core import estimators

    u, w = np.broadcast_arrays(U[None, :], W)
    got = _evaluate(answer, ("u", "w"), (u, w))
    ut = torch.as_tensor(u, dtype=torch.float64)
    lo = ut - torch.log(torch.as_tensor(w, dtype=torch.float64))  # log pi_old, so that rho = w

    truth = _coefficient(lambda lp, lr: torch.exp(lp - lo) * estimators.k3(lp, lr), u)
    if _close(got, truth):
        return None
    if _close(got, w * (1 - np.exp(-u))):
        return "the ratio is differentiated too: add its score-function term"
    if _close(got, u):
        return "the per-sample coefficient keeps the ratio's value"
    return "differentiate rho * k3 with the product rule; d rho / d log pi_theta = rho"


def _ex_6_2(answer):
    from klnotes.analysis import exact

    allowed = {"increases": "increases", "decreases": "decreases", "unchanged": "unchanged"}
    got = _word(answer, allowed, "what descent does to KL(pi_old || pi_theta)")
    theta, ref = _categorical_problem(1)
    old = exact.perturb(theta, 0.8, seed=5)
    g = exact.categorical_expected_gradient(_surrogate("k1 as loss"), theta, ref, old)
    leaf = theta.clone().requires_grad_(True)
    kl = exact.categorical_kl(old, leaf).sum()  # KL(pi_old || pi_theta) as a function of theta
    (kl_grad,) = torch.autograd.grad(kl, leaf)
    rate = float(-(g * kl_grad).sum())  # d KL / d step along the descent direction -g
    truth = "increases" if rate > 1e-12 else ("decreases" if rate < -1e-12 else "unchanged")
    if got == truth:
        return None
    return (
        "on pi_old's samples the coefficient 1 no longer averages to zero: compute "
        "sum_y pi_old(y) grad log pi_theta(y) and compare with grad KL(pi_old || pi_theta)"
    )


def _ex_6_4(answer):
    from klnotes.core import estimators

    u, w = np.broadcast_arrays(U[None, :], W)
    got = _evaluate(answer, ("u", "w"), (u, w))
    ut = torch.as_tensor(u, dtype=torch.float64)
    lo = ut - torch.log(torch.as_tensor(w, dtype=torch.float64))
    truth = _coefficient(lambda lp, lr: torch.exp(lp - lo) * estimators.k2(lp, lr), u)
    if _close(got, truth):
        return None
    if _close(got, w * u):
        return "that is sg(w) k2's coefficient; with a differentiable w the ratio adds a term"
    return "differentiate w * k2 with the product rule; d w / d log pi_theta = w"


def _ex_9_1(answer):
    from klnotes import frameworks as F

    got = _evaluate(answer, ("u",), (U9,))
    ut = torch.as_tensor(U9, dtype=torch.float64)
    opt = F.option(
        "verl", use_kl_in_reward=True, kl_penalty="k3", use_kl_loss=True, kl_loss_type="k3"
    )
    truth = F.coefficient(opt, ut).numpy()
    if _close(got, truth):
        return None
    if _close(got, _coefficient(_surrogate("k3 as loss"), U9)):
        return "that is the loss part alone; the reward part's coefficient adds to it"
    if _close(got, _coefficient(_surrogate("k3 in reward"), U9)):
        return "that is the reward part alone; the loss part's coefficient adds to it"
    return "add the coefficients of 'k3 in reward' and 'k3 as loss' on the token's own term"


def _ex_9_2(answer):
    from klnotes import frameworks as F

    allowed = {name: name for name in ("k1", "k2", "k3")}
    got = _word(answer, allowed, "the value of --kl_estimator")
    zero = [
        e
        for e in allowed
        if F.audit("openrlhf", use_kl_loss=True, kl_estimator=e).on_policy == "nothing"
    ]
    if got in zero:
        return None
    return (
        "that estimator's loss has a non-constant coefficient; which estimator's derivative in "
        "log pi_theta is a constant?"
    )


def _ex_9_3(answer):
    from klnotes import frameworks as F

    got = _evaluate(answer, ("u",), (U9,))
    ut = torch.as_tensor(U9, dtype=torch.float64)
    coeffs = [
        F.coefficient(F.option("verl", use_kl_loss=True, kl_loss_type=t), ut).numpy()
        for t in ("k3+", "mse")
    ]
    if _close(got, coeffs[0]) and _close(got, coeffs[1]):
        return None
    if _close(got, 1 - np.exp(-U9)):
        return (
            "that is plain k3's coefficient; the straight-through form takes its gradient elsewhere"
        )
    return "the gradient of k2 - sg(k2) + sg(k3) is the gradient of k2 alone"


#: Every checkable exercise by its number ("3.2"): its statement of the expected form and its check.
EXERCISES: dict[str, Exercise] = {
    e.key: e
    for e in [
        Exercise(
            "1.3",
            "reverse-KL fit from init=(-1.0, 0.5)",
            "a pair (mu, verdict): the mean mu of the fit it finds (a number) and whether its "
            "reverse KL is 'better' or 'worse' than the fit at the right-hand mode",
            _ex_1_3,
        ),
        Exercise(
            "2.1",
            "bias of k3 with reference mass m off the policy's support",
            'a formula in m for E[k3] - KL, e.g. "m**2" or lambda m: m**2',
            _ex_2_1,
        ),
        Exercise(
            "2.2",
            "std(k1)/KL for N(0,1) against N(m,1)",
            'a formula in m, valid for negative m too, e.g. "3/m"',
            _ex_2_2,
        ),
        Exercise(
            "2.3",
            "is k3's variance finite?",
            "a pair of booleans (sigma_q = sigma_p/2, sigma_q = 0.8 sigma_p), True = finite",
            _ex_2_3,
        ),
        Exercise("2.4", "d k3 / d log pi_theta", 'a formula in u, e.g. "u**2/2"', _ex_2_4),
        Exercise(
            "3.1",
            "coefficient of 'k1 as loss'",
            'a formula in u (a constant is fine, e.g. "2")',
            _ex_3_1,
        ),
        Exercise("3.2", "coefficient of 'k2 in reward + k2 as loss'", "a formula in u", _ex_3_2),
        Exercise(
            "3.3",
            "a k3 surrogate with coefficient u",
            "a surrogate: a function (logp, logp_ref) -> tensor of logp's shape, e.g. "
            "lambda lp, lr: estimators.k3(lp, lr)",
            _ex_3_3,
        ),
        Exercise(
            "4.1",
            "expected gradient of 'k1 in reward' for softmax logits",
            "a function (logits, ref_logits) -> tensor [..., V], e.g. "
            "lambda th, ref: torch.softmax(th, -1)",
            _ex_4_1,
        ),
        Exercise(
            "4.2",
            "the function whose gradient 'k2 in reward + k2 as loss' follows",
            "a formula f in u such that the term follows grad E_pi[f(u)]",
            _ex_4_2,
        ),
        Exercise(
            "4.3",
            "Var[1-delta] and Var[u] as a logit goes to -infinity",
            "a pair of words, each 'diverges' or 'bounded'",
            _ex_4_3,
        ),
        Exercise(
            "6.1",
            "per-sample coefficient of rho * k3",
            'a formula in u and w (w = the ratio\'s value), e.g. "w*u**2"',
            _ex_6_1,
        ),
        Exercise(
            "6.2",
            "uncorrected 'k1 as loss' on pi_old's samples",
            "one word: what gradient descent on the loss does to KL(pi_old || pi_theta): "
            "'increases', 'decreases' or 'unchanged'",
            _ex_6_2,
        ),
        Exercise(
            "6.4",
            "per-sample coefficient of w * k2 with a differentiable w",
            "a formula in u and w",
            _ex_6_4,
        ),
        Exercise(
            "9.1",
            "coefficient of verl's k3 in reward and k3 as loss on a token's own term",
            "a formula in u",
            _ex_9_1,
        ),
        Exercise(
            "9.2",
            "OpenRLHF's zero-gradient KL loss",
            "one of 'k1', 'k2', 'k3': the --kl_estimator value",
            _ex_9_2,
        ),
        Exercise("9.3", "coefficient of verl's k3+ (and mse)", "a formula in u", _ex_9_3),
    ]
}


def expected(exercise: str) -> str:
    """What form ``check(exercise, ...)`` expects, in words.

    For the exercises listed in the course guide (:doc:`/book/course`); no formula.
    """
    return _lookup(exercise).expects


def _lookup(exercise: str) -> Exercise:
    if exercise not in EXERCISES:
        raise KeyError(
            f"no checkable exercise {exercise!r}; the checkable ones are "
            f"{', '.join(EXERCISES)} (chapter.exercise, a string)"
        )
    return EXERCISES[exercise]


def check(exercise: str, answer: Any) -> Verdict:
    """Check an answer to exercise ``"chapter.number"`` (e.g. ``"3.2"``).

    The exercises are those of each chapter's "Exercises" section, indexed in the course guide
    (:doc:`/book/course`); a symbolic answer is compared with the chapter's closed form, e.g. a
    coefficient :math:`c(u)` of :eq:`eq-3-coefficient`, on a grid of :math:`u`.

    Returns a :class:`Verdict`: ``right``; ``wrong`` with a hint that never gives the answer; or
    ``malformed`` with what was expected (see :func:`expected`). Raises ``KeyError`` for an
    exercise that has no check.
    """
    spec = _lookup(exercise)
    try:
        hint = spec.judge(answer)
    except Malformed as err:
        return Verdict(exercise, MALFORMED, f"{err}. Expected: {spec.expects}.")
    if hint is None:
        return Verdict(exercise, RIGHT, "Well done.")
    return Verdict(exercise, WRONG, f"Hint: {hint}.")
