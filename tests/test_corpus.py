"""klnotes audit on the corpus of real launch files and configs (tests/fixtures/corpus/, see its
README).

Each file was taken unchanged from verl, OpenRLHF or TRL at a tagged release; its expected verdict
(exit status, status, on-policy objective, optimizer steps per rollout batch) is in expected.csv,
derived by reading the file's KL settings and that release's code (rule column, file:line) before
the tool was run on it; derivation.csv keeps that blind derivation with its reasoning, and the
``derived`` column of expected.csv says whether the tool agreed with it or which side was corrected.
"""

import csv
import io
import json
import re
import shlex
from pathlib import Path

import pytest

from klnotes import cli
from klnotes.frameworks import schema

CORPUS = Path(__file__).parent / "fixtures" / "corpus"
EXPECTED = list(csv.DictReader(open(CORPUS / "expected.csv")))
DERIVED = {r["file"]: r for r in csv.DictReader(open(CORPUS / "derivation.csv"))}
VERDICT = ("exit", "status", "objective", "steps")


def _argv(row: dict) -> list[str]:
    """The command a user would type for this file: a shell script through ``--script``, a
    config (YAML, JSON, Python) as the positional file, plus the row's own options."""
    path = CORPUS / row["file"]
    argv = ["audit", row["framework"], "--json", "--release", row["release"]]
    argv += shlex.split(row["args"])
    return argv + (["--script", str(path)] if path.suffix == ".sh" else [str(path)])


def _run(row: dict) -> tuple[int, dict]:
    buf = io.StringIO()
    code = cli.main(_argv(row), out=buf)
    return code, json.loads(buf.getvalue())


def test_corpus_is_large_and_covers_the_three_frameworks():
    assert len(EXPECTED) >= 40
    by_fw = {
        fw: {r["release"] for r in EXPECTED if r["framework"] == fw}
        for fw in ("verl", "openrlhf", "trl")
    }
    assert all(len(v) >= 2 for v in by_fw.values()) and len(by_fw["trl"]) >= 3
    on_disk = {p.relative_to(CORPUS).as_posix() for p in CORPUS.glob("*/*") if p.name != "LICENSE"}
    assert on_disk == {r["file"] for r in EXPECTED}
    assert all((CORPUS / fw / "LICENSE").is_file() for fw in by_fw)


def _trl_trainer(row: dict) -> str:
    args = shlex.split(row["args"])
    if "--trainer" in args:
        return args[args.index("--trainer") + 1]
    text = (CORPUS / row["file"]).read_text()
    entry = re.search(r"examples/scripts/(\w+)/", text)  # the script the launch runs
    named = entry.group(1) if entry else ""
    return next((t for t in ("rloo", "ppo") if f"{t.upper()}Config(" in text or named == t), "grpo")


def test_corpus_covers_trl_grpo_rloo_and_ppo_in_several_releases():
    trainers: dict[str, set] = {}
    for r in EXPECTED:
        if r["framework"] == "trl":
            trainers.setdefault(_trl_trainer(r), set()).add(r["release"])
    assert sorted(trainers) == ["grpo", "ppo", "rloo"]
    assert all(len(releases) >= 2 for releases in trainers.values()), trainers


def test_every_expected_row_records_its_blind_derivation():
    """Each row was derived from the framework's code before the tool ran; the ``derived`` column
    says whether the derivation agreed, or which side was corrected and why."""
    assert set(DERIVED) == {r["file"] for r in EXPECTED}
    for r in EXPECTED:
        d = DERIVED[r["file"]]
        agrees = tuple(d[k] for k in VERDICT) == tuple(r[k] for k in VERDICT)
        assert r["derived"].startswith("agrees" if agrees else "corrected: "), r["file"]
        assert "@" in d["reasoning"] or d["status"] == "error", r["file"]  # file:line@commit


@pytest.mark.parametrize("row", EXPECTED, ids=[r["file"] for r in EXPECTED])
def test_corpus_verdict(row):
    code, rep = _run(row)
    assert (code, rep["status"], rep.get("objective") or "") == (
        int(row["exit"]),
        row["status"],
        row["objective"],
    )
    assert rep["exit_code"] == code
    if rep["status"] == "error":
        assert rep["error"] and not row["steps"]
    else:
        assert rep["version"]["release"] == row["release"].lstrip("v")
        assert rep["off_policy"]["steps"] == (int(row["steps"]) if row["steps"] else None)
        if rep["status"] == "not modelled":  # loud: never a verdict, always the reason
            assert rep["verdict"].startswith("not modelled: ") and rep["kl_term"] is None
            assert not rep["verdict"].startswith("not modelled: not modelled")
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(rep, schema.JSON_SCHEMA)
