"""The versioned JSON schema of ``klnotes audit --json`` (documented in the README and chapter 9).

``klnotes audit ... --json`` prints one object that validates against :data:`JSON_SCHEMA` (JSON
Schema
draft 2020-12); its ``schema`` field is :data:`SCHEMA_ID`, changed whenever a field changes meaning.
Errors under ``--json`` are objects with ``schema``, ``status: "error"``, ``error`` and
``exit_code``.
:data:`EXIT_CODES` documents the exit status.
"""

from __future__ import annotations

__all__ = ["SCHEMA_ID", "JSON_SCHEMA", "EXIT_CODES", "STATUSES"]

#: The version tag of the audit's JSON output (its ``"schema"`` field).
SCHEMA_ID = "klnotes-audit/2"

#: Exit status of ``klnotes audit`` (the highest that applies).
EXIT_CODES = {
    0: "audited (whatever the verdict)",
    1: "--strict and the KL term does not follow the sequence reverse KL (or there is none)",
    2: "usage error: unknown key/flag/value, a NaN/inf/negative coefficient, an unresolved "
    "variable, an "
    "unreadable or hostile file",
    3: "verdict incomplete: the KL term is not modelled (the verdict says why), some settings "
    "could not be read, or every KL setting is a default (pass --assume-defaults to accept "
    "defaults)",
}

#: Values of the ``status`` field.
STATUSES = (
    "audited",
    "no KL term",
    "not modelled",
    "rejected by the framework",
    "not audited",
    "error",
)

_NUM = {"type": ["number", "null"]}
_STR = {"type": "string"}
_STRN = {"type": ["string", "null"]}
_STRS = {"type": "array", "items": _STR}

#: The JSON Schema of the audit's ``--json`` output.
JSON_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://klnotes.github.io/schema/" + SCHEMA_ID,
    "title": "klnotes audit report",
    "type": "object",
    "required": ["schema", "status", "exit_code"],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "status": {"enum": list(STATUSES)},
        "exit_code": {"enum": list(EXIT_CODES)},
        "error": _STR,
    },
    "if": {"properties": {"status": {"const": "error"}}},
    "then": {"required": ["error"]},
    "else": {
        "required": [
            "framework",
            "version",
            "verdict",
            "placement",
            "estimator",
            "coefficient",
            "objective",
            "off_policy",
            "recommendation",
            "settings",
            "unread",
            "problems",
            "notes",
            "kl_term",
        ],
        "properties": {
            "framework": {"enum": ["verl", "openrlhf", "trl", "klnotes"]},
            "version": {
                "type": "object",
                "required": ["release", "why", "defaults_from"],
                "properties": {"release": _STR, "why": _STR, "defaults_from": _STR},
            },
            "verdict": _STR,
            "placement": _STRN,
            "estimator": _STRN,
            "coefficient": _STRN,
            "objective": _STRN,
            "advantage_estimator": _STRN,
            "clamp": {
                "type": ["object", "null"],
                "required": ["condition", "reached"],
                "properties": {"condition": _STR, "reached": _STR},
            },
            "off_policy": {
                "type": "object",
                "required": ["steps", "formula", "values", "corrected", "verdict"],
                "properties": {
                    "steps": {"type": ["integer", "null"], "minimum": 1},
                    "formula": _STR,
                    "values": {"type": "object"},
                    "corrected": _STRN,
                    "verdict": _STR,
                },
            },
            "recommendation": {
                "type": "object",
                "required": ["status", "text"],
                "properties": {
                    "status": {"enum": ["already", "change", "cannot", "not audited", "none"]},
                    "text": _STR,
                    "command": _STRN,
                },
            },
            "settings": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["key", "value", "origin"],
                    "properties": {
                        "key": _STR,
                        "origin": {
                            "type": "string",
                            "description": "where the value came from: a file (and key), "
                            "'command line', 'script', 'launch line', 'default (<release>)', "
                            "'derived (<rule>)', or 'assumed' (not read: TRL's num_processes = 1 "
                            "when no launcher flag gives it)",
                        },
                        "value": {"type": ["string", "number", "boolean", "null"]},
                    },
                },
            },
            "unread": _STRS,
            "problems": _STRS,
            "notes": _STRS,
            "kl_term": {"type": ["object", "null"]},
        },
    },
}
