"""What ``klnotes audit`` reports for a reading of the settings: the verdict and the smallest change
of the user's own settings that makes the KL term follow the sequence reverse KL."""

from __future__ import annotations

import functools
import itertools

from klnotes.core.variants import ESTIMATOR_ALIASES, ESTIMATORS, parse_estimator
from klnotes.frameworks import analysis as A
from klnotes.frameworks.clamps import reach_text
from klnotes.frameworks.config import DEFAULTS_FROM, KEYS, Reading
from klnotes.frameworks.options import OPENRLHF_ADV, TRL_LOSS_TYPES, KLOption, flag_space, option
from klnotes.frameworks.schema import SCHEMA_ID, STATUSES
from klnotes.frameworks.versions import COVERS

__all__ = [
    "recommend",
    "report",
    "TARGET",
    "clamp_condition",
    "clamped_estimator",
    "ESTIMATOR_FLAGS",
]

# ---------------------------------------------------------------------------------------------
# Recommendation: the fewest changes of the user's own settings that follow the sequence reverse KL.
# ---------------------------------------------------------------------------------------------

#: The objective the audit recommends reaching: the sequence-level reverse KL (chapter 2).
TARGET = "sequence reverse KL"


def _kwarg_key(framework: str) -> dict:
    return {k.kwarg: k for k in KEYS[framework] if k.kwarg}


def _candidate_values(framework: str, flags: dict) -> dict:
    """Values to try for each of :func:`klnotes.frameworks.audit`'s keyword arguments."""
    defaults = flag_space(framework)
    out = {}
    for kwarg, current in flags.items():
        key = _kwarg_key(framework).get(kwarg)
        if key is None or kwarg in ("trainer", "lam"):  # not a KL switch the recommendation changes
            out[kwarg] = [current]
            continue
        if key.kind in ("bool", "flag"):
            values = [current, not current]
        elif key.kind == "float":  # a coefficient: off, or on at the framework's default
            on = defaults[kwarg] if defaults[kwarg] else 0.04
            values = [current] + [x for x in (on, 0.0) if x != current]
        elif key.kind == "int":
            values = [current] + ([1] if current != 1 else [])
        else:
            verl_kinds = ("kl", "abs", "mse", "low_var_kl", "k1+", "k3+")  # one spelling per kind
            modelled = {
                "kl_penalty": verl_kinds,
                "kl_loss_type": verl_kinds,
                "adv_estimator": ("gae", "rloo", "grpo"),
                "kl_estimator": ("k1", "k3") if framework == "trl" else ESTIMATORS,
                "advantage_estimator": OPENRLHF_ADV,
                "loss_type": TRL_LOSS_TYPES,
            }.get(kwarg, key.allowed)
            values = [current] + [x for x in modelled if x != current and x != "full"]
        out[kwarg] = values
    return out


@functools.lru_cache(maxsize=4096)
def _objective(framework: str, flags: tuple) -> tuple[str, str]:
    opt = option(framework, **dict(flags))
    return A.on_policy_objective(opt)[0], opt.placement


def _search(framework: str, flags: dict, target: str, max_changes: int = 3) -> list[dict]:
    """Smallest sets of changed keyword arguments whose option follows ``target`` on-policy, best first
    (fewest terms, then the framework's default values)."""
    values = _candidate_values(framework, flags)
    names = list(flags)
    defaults = flag_space(framework)
    for n in range(1, max_changes + 1):
        found = []
        for subset in itertools.combinations(names, n):
            for choice in itertools.product(*(values[k][1:] for k in subset)):
                cand = {**flags, **dict(zip(subset, choice))}
                objective, placement = _objective(framework, tuple(sorted(cand.items())))
                if objective == target:
                    changes = dict(zip(subset, choice))
                    # keep the user's advantage estimator when possible (it also treats the task reward)
                    moved = sum(k in ("adv_estimator", "advantage_estimator") for k in changes)
                    rank = (
                        placement.count("+"),
                        moved,
                        sum(changes[k] != defaults[k] for k in changes),
                        sum(values[k].index(changes[k]) for k in changes),
                    )
                    found.append((rank, changes))
        if found:
            return [c for _, c in sorted(found, key=lambda rc: rc[0])]
    return []


def _spell(framework: str, reading: Reading | None, kwarg: str, value) -> str:
    key = _kwarg_key(framework)[kwarg]
    if framework == "verl":
        return f"{key.name}={value}"
    if framework == "openrlhf":
        name = (
            key.alias
            if reading is not None and reading.spelling == "old" and key.alias
            else key.name
        )
        if key.kind == "flag":
            return name if value else f"(remove {name})"
        return f"{name} {value}"
    if framework == "trl":
        return f"{key.name}={value}"
    return f"{key.name}={value}"


def recommend(reading: Reading, result: A.Audit | None) -> dict:
    """The smallest change of the user's settings that makes the KL term follow the sequence reverse KL
    on-policy (searched with :func:`klnotes.frameworks.option` / ``classify_objective``), or the
    statement that the framework cannot, with the klnotes TRL plug-in as the way out.

    The target is the gradient of :eq:`eq-5-seq-rkl` (:eq:`eq-5-seq-gradient`), as in
    :doc:`chapter 9 </book/09_in_practice>`'s "Recipes".
    """
    fw = reading.framework
    if reading.flags is None:
        return {"status": "not audited", "changes": [], "text": "fix the problems above first"}
    if result is not None and result.on_policy == TARGET and not reading.rejected:
        return {
            "status": "already",
            "changes": [],
            "text": "no change: the KL term already follows the sequence reverse KL on-policy",
        }
    found = _search(fw, reading.flags, TARGET)
    extra = []
    if found:
        changes = found[0]
        after = A.audit(fw, **{**reading.flags, **changes})
        spelled = [_spell(fw, reading, k, v) for k, v in changes.items()]
        if fw == "verl":
            coefs = {
                "use_kl_in_reward": "algorithm.kl_ctrl.kl_coef",
                "use_kl_loss": "actor_rollout_ref.actor.kl_loss_coef",
            }
            for k, coef in coefs.items():
                if changes.get(k) is True and not (
                    isinstance(reading.value(coef), float) and reading.value(coef) > 0
                ):
                    spelled.append(f"{coef}=0.001")
            if (
                changes.get("use_kl_in_reward") is True
                and reading.flags["use_kl_loss"]
                and changes.get("use_kl_loss") is False
            ):
                extra.append(
                    "the strength moves from actor.kl_loss_coef to algorithm.kl_ctrl.kl_coef; in the "
                    "reward it acts per token summed over the sequence, so retune it"
                )
        text = (
            f"change {' '.join(spelled)}: the KL term becomes '{after.option.placement}' with coefficient "
            f"{after.coefficient} and follows the sequence reverse KL on-policy"
            + (f" ({after.grouped})" if after.grouped else "")
            + f"; off-policy: {after.off_policy}"
        )
        return {
            "status": "change",
            "changes": [
                {"key": _kwarg_key(fw)[k].name, "from": reading.flags[k], "to": v}
                for k, v in changes.items()
            ],
            "command": " ".join(spelled),
            "text": text,
            "notes": extra,
            "after": {
                "placement": after.option.placement,
                "coefficient": after.coefficient,
                "on_policy": after.on_policy,
                "off_policy": after.off_policy,
            },
        }
    plugin = A.audit("klnotes")
    best = _search(fw, reading.flags, "per-token reverse KL")
    closest = ""
    if result is not None and result.on_policy == "per-token reverse KL":
        closest = " The current setting is already its closest: the per-token reverse KL."
    elif best:
        spelled = " ".join(_spell(fw, reading, k, v) for k, v in best[0].items())
        closest = f" Its closest: {spelled} (the per-token reverse KL, which ignores the prefix's future)."
    text = (
        f"{fw} cannot: no setting of its KL flags gives the sequence reverse KL (its KL term is per token).{closest}"
        f" The way out: klnotes.trl_plugin.PrincipledKLGRPOTrainer (kl='k1_in_reward', level='sequence'; "
        f"audited: {plugin.on_policy} on-policy, off-policy {plugin.off_policy}) or a custom loss with the "
        f"detached coefficient u summed to the reward-to-go."
        + (
            " Within TRL, RLOOTrainer (beta > 0) puts k1 summed over the sequence in the reward with a "
            "leave-one-out baseline: the sequence reverse KL, scale 1."
            if fw == "trl"
            else ""
        )
    )
    return {"status": "cannot", "changes": [], "text": text}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def report(reading: Reading) -> dict:
    """The audit of ``reading`` as one JSON-ready mapping (what ``--json`` prints; it validates against
    :data:`klnotes.frameworks.schema.JSON_SCHEMA` once ``cli`` sets ``exit_code``).

    What ``klnotes audit`` reports (:doc:`chapter 9 </book/09_in_practice>`, "From your own
    configuration: klnotes audit"): the coefficient :math:`c_t` of :eq:`eq-9-coefficient`, the
    objective it follows, and the off-policy verdict.
    """
    out, result = _report(reading)
    term = out.get("kl_term")
    verdict = out["verdict"]
    status = next((s for s in STATUSES if verdict.startswith(s)), "audited")
    steps = reading.steps or {"steps": None, "formula": "not applicable", "values": {}, "text": ""}
    if steps["steps"] is None:
        off_verdict = steps["text"] or "no step count for this framework"
    elif steps["steps"] == 1:
        off_verdict = "on-policy: 1 optimizer step per rollout batch"
    else:
        off_verdict = (
            f"off-policy from the second of {steps['steps']} optimizer steps per rollout batch: "
            + (term["off_policy"] if term else "no KL term")
        )
    out.update(
        {
            "schema": SCHEMA_ID,
            "status": status,
            "version": {
                "release": reading.release or "",
                "why": reading.release_why or "",
                "defaults_from": out["defaults_from"],
            },
            "placement": term["placement"] if term else None,
            "estimator": term["formula"] if term else None,
            "coefficient": term["coefficient"] if term else None,
            "objective": term["on_policy"] if term else None,
            "advantage_estimator": term.get("advantage_estimator") if term else None,
            "clamp": clamp_condition(result) if term else None,
            "off_policy": {
                "steps": steps["steps"],
                "formula": steps["formula"],
                "values": steps["values"],
                "corrected": term["off_policy"] if term else None,
                "verdict": off_verdict,
            },
            "unread": list(reading.unread),
        }
    )
    rec = out.get("recommendation")
    if not rec:
        rec = {"status": "none", "changes": [], "text": f"no recommendation: {verdict}"}
    rec.setdefault("command", None)
    out["recommendation"] = rec
    return out


def _report(reading: Reading):
    fw = reading.framework
    result = None
    out = {
        "framework": fw,
        "defaults_from": reading.defaults_source or DEFAULTS_FROM[fw],
        "covers": COVERS[fw],
        "settings": [
            {
                "key": s.key,
                "value": s.value,
                "origin": s.origin,
                "written_as": s.written_as,
                **({"alias": s.alias} if s.alias else {}),
            }
            for s in reading.settings
        ],
        "ignored": list(reading.ignored),
        "problems": list(reading.problems),
        "notes": list(reading.notes),
        "audit_flags": reading.flags,
    }
    if reading.problems:
        out["verdict"] = "not audited: " + "; ".join(reading.problems)
        out["kl_term"] = None
        return out, result
    if reading.unmodelled:
        out["verdict"] = "not modelled: " + reading.unmodelled
        out["kl_term"] = None
        return out, result
    result = A.audit(fw, **reading.flags)
    opt = result.option
    if result.on_policy == "not modelled":
        out["verdict"] = result.grouped
        out["kl_term"] = None
        out["recommendation"] = recommend(reading, result)
        return out, result
    if reading.rejected or opt.placement == "not implemented":
        out["verdict"] = "rejected by the framework: " + (reading.rejected or opt.notes)
        out["kl_term"] = None
    elif opt.token_loss is None:
        out["verdict"] = "no KL term: " + (_no_kl_reason(reading) or opt.notes)
        out["kl_term"] = None
    else:
        out["kl_term"] = {
            # the book's name of the term (klnotes.core.variants.label), "-" when it is no KLVariant
            "variant": opt.label,
            "placement": opt.placement,
            "formula": opt.formula,
            "u": "log pi_theta - log pi_ref",
            "gradient_to": opt.gradient_to,
            "coefficient": result.coefficient,
            "clamp_effect": result.clamp_effect,
            "credit": opt.credit,
            "aggregation": opt.aggregation,
            "ratio": opt.ratio,
            "coefficient_from": opt.coefficient_from,
            "on_policy": result.on_policy,
            "on_policy_scale": result.on_policy_scale,
            "off_policy": result.off_policy,
            "off_policy_error": result.off_policy_error,
            "notes": opt.notes,
            "version": opt.version,
            "advantage_estimator": result.grouped or None,
        }
        out["verdict"] = _verdict(result)
    out["recommendation"] = recommend(reading, result)
    return out, result


def clamp_condition(result) -> dict | None:
    r"""``{"condition", "reached"}`` for an option whose clamps change its coefficient somewhere, else ``None``:
    the verdict holds only where no token reaches the clamp (``result.clamp_effect`` gives where).

    The condition is on :math:`\lvert u_t\rvert`, :math:`u_t = \log\pi_\theta - \log\pi_{\mathrm{ref}}`
    (:numref:`fig-9-clamps`; :doc:`chapter 9 </book/09_in_practice>`, "Clamped coefficients").
    """
    if result is None or result.clamp_effect in ("-", "") or result.clamp_effect.startswith("none"):
        return None
    kind = clamped_estimator(result.option)
    return {
        "condition": f"the verdict holds only while no token reaches the clamp ({result.clamp_effect})",
        "reached": reach_text(kind),
    }


#: Flag names (their last dotted part) that hold an estimator name of a framework.
ESTIMATOR_FLAGS: tuple[str, ...] = ("kl_penalty", "kl_loss_type", "estimator", "kl_estimator")


def clamped_estimator(opt: KLOption) -> str:
    """The estimator ``"k1"``/``"k2"``/``"k3"`` whose clamp an option's clamps are: from its
    estimator flags (:data:`ESTIMATOR_FLAGS`, read by :func:`klnotes.core.variants.parse_estimator`;
    ``k3`` first when there are two), ``"k3"`` when no flag names one (TRL's GRPO KL is
    :math:`k_3`). A name that is no :math:`k_n` (verl's ``abs``) is skipped.

    The estimators are those of :eq:`eq-2-estimators`; their clamps, :numref:`fig-9-clamps`.
    """
    names = [
        v for k, v in opt.flags if isinstance(v, str) and k.rsplit(".", 1)[-1] in ESTIMATOR_FLAGS
    ]
    kinds = [parse_estimator(n) for n in names if n.rstrip("+") in ESTIMATOR_ALIASES]
    return "k3" if "k3" in kinds or not kinds else kinds[0]


def _no_kl_reason(reading: Reading) -> str:
    fw, f = reading.framework, reading.flags
    why = [n for n in reading.notes if "weight 0" in n]
    if why:
        return why[0]
    if fw == "verl":
        return (
            "algorithm.use_kl_in_reward and actor_rollout_ref.actor.use_kl_loss are both False "
            "(verl's default; the reference model is not even loaded)"
        )
    if fw == "openrlhf":
        return f"--algo.kl.init_coef={f['init_kl_coef']} (<= 0 turns the KL term off)"
    if fw == "trl":
        return "beta=0 (TRL's default since v0.19; the reference model is not loaded)"
    return ""


def _verdict(result: A.Audit) -> str:
    objective = result.on_policy
    if objective == "nothing":
        follows = "regularizes nothing on-policy (its expected gradient is zero)"
    elif objective == A.OTHER:
        follows = (
            "follows none of the KL objectives on-policy (sequence/per-token, reverse/forward)"
        )
    else:
        follows = f"follows the {objective} on-policy"
    return f"{result.option.placement}, coefficient {result.coefficient}: {follows}"
