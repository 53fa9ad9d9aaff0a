"""The audit table as compact HTML for the book (chapter 9)."""

from __future__ import annotations

__all__ = ["OFF_POLICY_SHORT", "audit_html"]


#: Short forms of :func:`table`'s off-policy verdicts, for the compact per-framework tables.
OFF_POLICY_SHORT = {
    "ratio applied; KL value frozen at pi_old: bias -grad KL(pi_theta || pi_old)": "stale KL value",
    "biased: no importance ratio on the KL term": "biased (no ratio)",
    "unbiased": "unbiased",
    "-": "\u2013",
}


def _breakable(text: str) -> str:
    """HTML-escape ``text`` and allow line breaks after ``.``, ``_`` and ``=`` inside long flag names."""
    import html

    out = html.escape(text)
    for ch in (".", "_", "="):
        out = out.replace(ch, ch + "<wbr>")
    return out


def audit_html(frame, framework: str) -> str:
    """One framework's rows of :func:`table` as a compact HTML table that fits a page column.

    The per-framework tables of :doc:`chapter 9 </book/09_in_practice>`'s "The audit table"; the
    coefficient column is :math:`c_t` of :eq:`eq-9-coefficient`.

    Four columns: the full flags (one per line, breakable inside long names; the framework's
    default marked), the coefficient ``c(u)`` (as inline math), the on-policy objective and the
    off-policy verdict (:data:`OFF_POLICY_SHORT`). The long fields (formula, credit, aggregation,
    clamp and its effect, the full off-policy verdict, notes) go into a collapsed
    ``<details>`` under the flags, so rows that differ only there still look different.

    Raises:
        ValueError: ``framework`` has no rows in ``frame`` (the message lists those it has).
    """
    import html

    rows = frame[frame["framework"] == framework]
    if rows.empty:
        raise ValueError(
            f"no rows for framework {framework!r}; have: {', '.join(dict.fromkeys(frame['framework']))}"
        )
    head = (
        "<tr><th>flags</th><th>\\(c(u)\\)</th><th>on-policy objective</th><th>off-policy</th></tr>"
    )
    body = []
    for r in rows.to_dict("records"):
        flags = "<br>".join(f"<code>{_breakable(f)}</code>" for f in r["flags"].split(", "))
        if r["default"]:
            flags += "<br><em>(default)</em>"
        more = [
            f"{k}: {html.escape(str(r[k]))}"
            for k in (
                "placement",
                "formula",
                "gradient to",
                "credit",
                "aggregation",
                "clamp",
                "ratio on KL",
                "clamp effect on c",
                "off-policy",
            )
            if str(r[k]) not in ("", "-")
        ]
        if r["notes"]:
            more.append(f"notes: {html.escape(r['notes'])}")
        details = f"<details><summary>details</summary><ul>{''.join(f'<li>{m}</li>' for m in more)}</ul></details>"
        coef = r["coefficient c(u)"]
        coef = (
            "\u2013"
            if coef == "-"
            else "\\(" + html.escape(coef).replace("sign(", "\\operatorname{sign}(") + "\\)"
        )
        off = OFF_POLICY_SHORT.get(r["off-policy"], html.escape(r["off-policy"]))
        body.append(
            f"<tr><td>{flags}{details}</td><td>{coef}</td><td>{html.escape(r['on-policy objective'])}</td>"
            f"<td>{off}</td></tr>"
        )
    # class mathjax_process: the book's MathJax typesets the coefficients inside a notebook output
    return (
        f'<div class="mathjax_process"><table class="klnotes-audit" style="width:100%; table-layout:fixed">'
        '<colgroup><col style="width:52%"><col style="width:16%"><col style="width:17%"><col style="width:15%">'
        f"</colgroup><thead>{head}</thead><tbody>{''.join(body)}</tbody></table></div>"
    )
