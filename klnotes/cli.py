"""``klnotes audit``: what a verl, OpenRLHF or TRL configuration's KL term optimizes, and how to fix it.

The command reads the settings as users write them, maps them onto the keyword arguments of
:func:`klnotes.frameworks.audit` (which computes everything: coefficient, on-policy objective,
off-policy behaviour) and prints the result with a recommendation::

    klnotes audit verl ppo_trainer.yaml algorithm.use_kl_in_reward=True
    klnotes audit openrlhf -- --algo.kl.use_loss --algo.kl.estimator k3      # or --use_kl_loss --kl_estimator k3
    klnotes audit trl grpo_config.yaml --beta 0.04
    klnotes audit verl --script run_grpo.sh                                   # the overrides of a launch script

``--json`` prints one JSON object of the versioned schema :data:`klnotes.frameworks.schema.JSON_SCHEMA`
(errors too), ``--plot FILE`` saves the gradient coefficient against the principled one,
``--release X`` names the framework release (default: the installed package's, else the newest; always
printed), ``--trainer grpo|rloo|ppo`` picks TRL's trainer, ``--strict`` exits 1 unless the KL term follows
the sequence reverse KL, ``--assume-defaults`` accepts a verdict built from defaults. Exit status
(:data:`klnotes.frameworks.schema.EXIT_CODES`): 0 audited; 1 ``--strict`` and not the sequence reverse KL;
2 usage error, bad value or unreadable/hostile file; 3 settings unread or only defaults.

Reading never runs code: YAML with ``yaml.safe_load``, Python snippets with ``ast`` (literal
keyword arguments of TRL's ``*Config(...)`` only), shell scripts with ``shlex``
(:mod:`klnotes.frameworks.files`, with size and depth limits).
"""

from __future__ import annotations

import argparse
import json
import sys

from klnotes import frameworks as F
from klnotes.core import variants
from klnotes.frameworks import (
    EXIT_CODES,
    KEYS,
    SCHEMA_ID,
    Reading,
    UsageError,
    read,
    read_text,
    recommend,
    report,
    script_args,
)

__all__ = ["render", "save_plot", "main", "console_main"]


def render(rep: dict) -> str:
    """``report``'s mapping as the text the command prints.

    What ``klnotes audit`` prints (:doc:`chapter 9 </book/09_in_practice>`, "From your own
    configuration: klnotes audit"): the coefficient :math:`c_t` of :eq:`eq-9-coefficient`, the
    objective and the fix.
    """
    v = rep.get("version") or {}
    lines = [
        f"klnotes audit: {rep['framework']}",
        f"  release:       {v.get('release') or '-'} ({v.get('why') or 'not resolved'})",
        f"  defaults from: {rep['defaults_from']}",
        f"  covers:        {rep['covers']}",
        "",
        "settings",
    ]
    width = max((len(f"{s['key']} = {s['value']}") for s in rep["settings"]), default=0)
    for s in rep["settings"]:
        shown = f"{s['key']} = {s['value']}"
        origin = s["origin"]
        if s["written_as"] and s["written_as"].split("=")[0] not in (s["key"], "--" + s["key"]):
            origin += f", written {s['written_as'].split('=')[0]}"
        elif s.get("alias"):
            origin += f"; older spelling {s['alias']}"
        lines.append(f"  {shown:<{width}}  {origin}")
    if rep["ignored"]:
        lines.append(f"  ignored: {len(rep['ignored'])} setting(s) that do not touch the KL term")
    for p in rep["problems"]:
        lines.append(f"  PROBLEM: {p}")
    lines += ["", f"verdict: {rep['verdict']}"]
    term = rep.get("kl_term")
    if term:
        rows = [
            ("variant", term.get("variant") or "-"),
            ("where", term["placement"]),
            (
                "per-token value",
                term["formula"]
                if term["formula"].startswith("u =")
                else f"{term['formula']}   (u = {term['u']})",
            ),
            ("gradient to", term["gradient_to"]),
            ("coefficient c(u)", f"{term['coefficient']}   (clamps: {term['clamp_effect']})"),
            ("credit", term["credit"]),
            ("aggregation", term["aggregation"]),
            ("ratio on the KL", term["ratio"]),
            ("on-policy", term["on_policy"]),
            *(
                [("advantage", term["advantage_estimator"])]
                if term.get("advantage_estimator")
                else []
            ),
            (
                "off-policy",
                f"{term['off_policy']} (relative gradient error {term['off_policy_error']:.2g})",
            ),
            ("read at", term["version"]),
        ]
        if term["notes"]:
            rows.append(("framework notes", term["notes"]))
        lines += [f"  {k + ':':<17} {v}" for k, v in rows]
    if rep["notes"]:
        lines += ["", "your settings"] + [f"  - {n}" for n in rep["notes"]]
    off = rep.get("off_policy")
    if off and off.get("formula") != "not applicable":
        lines += [
            "",
            "optimizer steps per rollout batch",
            f"  {off['steps'] if off['steps'] is not None else 'unknown'} = {off['formula']}",
            "  values read: " + ", ".join(f"{k}={x}" for k, x in off["values"].items()),
            f"  {off['verdict']}",
        ]
    if rep.get("clamp"):
        lines += ["", "clamp", f"  {rep['clamp']['condition']}", f"  {rep['clamp']['reached']}"]
    rec = rep.get("recommendation")
    if rec:
        lines += ["", "recommendation", f"  {rec['text']}"] + [
            f"  - {n}" for n in rec.get("notes", [])
        ]
    return "\n".join(lines)


def save_plot(reading: Reading, path: str) -> None:
    r"""Gradient coefficient c(u) of the user's KL term (and of the recommended change) against the
    principled c = u (:func:`klnotes.plotting.plot_framework_coefficients`).

    Draws :math:`c(u) = \partial\ell/\partial\log\pi_\theta` (:eq:`eq-9-coefficient`) beside
    :math:`c = u` (:eq:`eq-3-rkl-gradient`), as :numref:`fig-9-clamps` does for the audited options.
    """
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")  # no display needed when called from the command line
    import matplotlib.pyplot as plt
    import torch

    from klnotes import plotting

    u = torch.linspace(-4.0, 4.0, 161, dtype=torch.float64)
    curves = {}
    if reading.flags is not None and not reading.problems:
        opt = F.option(reading.framework, **reading.flags)
        if opt.token_loss is not None:
            curves[f"yours: {opt.placement}, {opt.formula}"] = F.coefficient(opt, u)
        rec = recommend(reading, F.audit(reading.framework, **reading.flags))
        if rec["status"] == "change":
            changes = {k: v for k, v in zip(reading.flags, reading.flags.values())}
            for c in rec["changes"]:
                kw = next(k.kwarg for k in KEYS[reading.framework] if k.name == c["key"])
                changes[kw] = c["to"]
            curves["recommended: " + rec["command"]] = F.coefficient(
                F.option(reading.framework, **changes), u
            )
    plotting.use_style()
    reward = variants.label(variants.KLVariant("k1", "reward"))
    styles = {
        label: (plotting.color(reward), ":") for label in curves if label.startswith("recommended")
    }
    fig = plotting.plot_framework_coefficients(u, curves, styles=styles)
    fig.axes[0].set_title(f"{reading.framework}: gradient coefficient of the KL term")
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

_USAGE = """klnotes audit verl [CONFIG.yaml] [key=value ...] [--script run.sh] [OPTIONS]
       klnotes audit openrlhf [--script run.sh] [OPTIONS] -- <OpenRLHF arguments>
       klnotes audit trl [CONFIG.yaml|.json|.py] [--beta 0.04 --num_iterations 2 ...] [OPTIONS]
       klnotes audit klnotes [kl=k1_in_reward level=sequence clip=True]
       klnotes --version
OPTIONS: --json --plot FILE --release X --trainer grpo|rloo|ppo --strict --assume-defaults
exit status: """ + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items())

_VALUED = ("--plot", "--script", "--release", "--trainer")
_SWITCHES = ("--json", "--strict", "--assume-defaults")


def _split_own_options(rest: list[str]) -> tuple[dict, list[str]]:
    """Take the command's own options out of ``rest`` (before a ``--``); the rest is the framework's."""
    own = {
        "json": False,
        "strict": False,
        "assume_defaults": False,
        "plot": None,
        "script": None,
        "release": None,
        "trainer": "",
    }
    out, i = [], 0
    while i < len(rest):
        tok = rest[i]
        if tok == "--":
            out += rest[i:]
            break
        if tok in _SWITCHES:
            own[tok[2:].replace("-", "_")] = True
        elif tok in _VALUED or tok.startswith(tuple(v + "=" for v in _VALUED)):
            name, eq, val = tok.partition("=")
            if not eq:
                if i + 1 >= len(rest):
                    raise UsageError(f"{tok} needs a value")
                i += 1
                val = rest[i]
            own[name[2:]] = val
        else:
            out.append(tok)
        i += 1
    return own, out


def _audit_command(framework: str, rest: list[str]) -> tuple[dict, dict]:
    own, rest = _split_own_options(rest)
    if "--" in rest:
        cut = rest.index("--")
        before, after = rest[:cut], rest[cut + 1 :]
    else:
        before, after = rest, []
    from_script, unread, notes, launch = [], (), (), ()
    if own["script"]:
        parsed = script_args(read_text(own["script"]), framework)
        from_script, unread, notes = list(parsed), parsed.unread, parsed.notes
        launch = parsed.launch
    config = None
    if (
        framework in ("verl", "trl")
        and before
        and not before[0].startswith("-")
        and "=" not in before[0]
    ):
        config, before = before[0], before[1:]
    reading = read(
        framework,
        config,
        from_script + before + after,
        release=own["release"],
        trainer=own["trainer"],
        unread=unread,
        notes=notes,
        launch=launch,
    )
    return own, report(reading) | {"_reading": reading}


def _exit_code(rep: dict, reading: Reading, own: dict) -> int:
    if rep["problems"]:
        return 2
    if rep["status"] == "not modelled":
        return 3
    if reading.unread or (
        reading.defaults_only and not own["assume_defaults"] and reading.framework != "klnotes"
    ):
        return 3
    if own["strict"] and rep.get("objective") != "sequence reverse KL":
        return 1
    return 0


def _loud(rep: dict, reading: Reading, own: dict) -> list[str]:
    lines = []
    for u in reading.unread:
        lines.append(f"WARNING: not read: {u}")
    for s in reading.settings:
        if s.origin == "assumed":
            lines.append(f"WARNING: {s.key} = {s.value} is ASSUMED, not read ({s.written_as})")
    if reading.defaults_only and reading.framework != "klnotes":
        lines.append(
            "WARNING: every KL setting above is the framework's default (none was read from your "
            "config or command line): the verdict is built only from defaults"
            + (
                ""
                if own["assume_defaults"]
                else "; exit status 3 (pass --assume-defaults to accept)"
            )
        )
    return lines


def main(argv: list[str] | None = None, out=None) -> int:
    """Entry point of the ``klnotes`` command (and ``python -m klnotes``); returns the exit status.

    The ``klnotes audit`` command of :doc:`chapter 9 </book/09_in_practice>` ("From your own
    configuration: klnotes audit"); no formula of its own.
    """
    out = out or sys.stdout
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="klnotes", description="klnotes: KL regularization in RLHF."
    )
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser(
        "audit",
        usage=_USAGE,
        help="what your framework configuration's KL term optimizes",
        description="Audit the KL term of a verl, OpenRLHF or TRL configuration.",
    )
    p.add_argument("framework", help="verl, openrlhf, trl or klnotes")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="config file and/or settings (see usage)")
    if argv[:1] == ["--version"]:
        from klnotes import __version__

        print(f"klnotes {__version__} (audit schema {SCHEMA_ID})", file=out)
        return 0
    if not argv or argv[0] != "audit":
        parser.print_help(file=out)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    if len(argv) == 1 or argv[1] in ("-h", "--help"):
        p.print_help(file=out)
        return 0
    framework, rest = argv[1].lower(), argv[2:]
    # argparse's REMAINDER would swallow --json after the framework; we split the rest ourselves.
    as_json = "--json" in rest[: rest.index("--")] if "--" in rest else "--json" in rest
    try:
        own, rep = _audit_command(framework, rest)
    except UsageError as err:
        if as_json:
            print(
                json.dumps(
                    {"schema": SCHEMA_ID, "status": "error", "error": str(err), "exit_code": 2}
                ),
                file=out,
            )
        else:
            print(f"klnotes audit: error: {err}", file=sys.stderr if out is sys.stdout else out)
        return 2
    reading = rep.pop("_reading")
    status = _exit_code(rep, reading, own)
    rep["exit_code"] = status
    if own["plot"] and not rep["problems"]:
        save_plot(reading, own["plot"])
        rep["plot"] = own["plot"]
    if own["json"]:
        print(json.dumps(rep, indent=1, default=str, allow_nan=False), file=out)
    else:
        print(render(rep), file=out)
        for line in _loud(rep, reading, own):
            print(line, file=out)
        if own["plot"] and "plot" in rep:
            print(f"\ncoefficient plot saved to {own['plot']}", file=out)
        if status:
            print(f"exit status {status}: {EXIT_CODES[status]}", file=out)
    return status


def console_main() -> None:
    """The ``klnotes`` console script (``[project.scripts]``): :func:`main`, its status as exit code.

    The command of :doc:`chapter 9 </book/09_in_practice>`; no formula.
    """
    raise SystemExit(main())


if __name__ == "__main__":
    console_main()
