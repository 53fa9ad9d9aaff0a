"""klnotes audit on the corpus of real launch files and configs (tests/fixtures/corpus/, see its
README).

Each file was taken unchanged from verl, OpenRLHF or TRL at a tagged release; its expected verdict
(exit status, status, on-policy objective, optimizer steps per rollout batch) is in expected.csv,
checked by reading the file's KL settings and that release's code (rule column, file:line).
"""

import csv
import io
import json
from pathlib import Path

import pytest

from klnotes import cli
from klnotes.frameworks import schema

CORPUS = Path(__file__).parent / "fixtures" / "corpus"
EXPECTED = list(csv.DictReader(open(CORPUS / "expected.csv")))


def test_corpus_is_large_and_covers_the_three_frameworks():
    assert len(EXPECTED) >= 40
    by_fw = {
        fw: {r["release"] for r in EXPECTED if r["framework"] == fw}
        for fw in ("verl", "openrlhf", "trl")
    }
    assert all(by_fw.values()) and len(by_fw["trl"]) >= 3
    on_disk = {p.relative_to(CORPUS).as_posix() for p in CORPUS.glob("*/*") if p.name != "LICENSE"}
    assert on_disk == {r["file"] for r in EXPECTED}


@pytest.mark.parametrize("row", EXPECTED, ids=[r["file"] for r in EXPECTED])
def test_corpus_verdict(row):
    path = CORPUS / row["file"]
    argv = ["audit", row["framework"], "--json", "--release", row["release"]]
    argv += [str(path)] if row["framework"] == "trl" else ["--script", str(path)]
    buf = io.StringIO()
    code = cli.main(argv, out=buf)
    rep = json.loads(buf.getvalue())
    assert (code, rep["status"], rep.get("objective") or "") == (
        int(row["exit"]),
        row["status"],
        row["objective"],
    )
    if row["steps"]:
        assert rep["off_policy"]["steps"] == int(row["steps"])
    assert rep["version"]["release"] == row["release"].lstrip("v")
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(rep, schema.JSON_SCHEMA)
