"""`distillery preview`: run the filters on a sample and show what would be removed and why, writing
nothing, so settings can be tried before a full run. Tested as a user runs it, through the command."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from tests.conftest import REPO, SHARED_DATA, require_shared_data, run_cli
from tests.filter.test_filtered_checks import materialize

pytestmark = pytest.mark.slow

LLMS_PREFERENCE = SHARED_DATA / "llms-from-scratch-preference" / "instruction-data-with-preference.json"
QA = [
    {"instruction": "List three primary colours.", "output": ""},
    {
        "instruction": "Tell me about the printing press.",
        "output": "I'm sorry, but as an AI language model I cannot provide information about that topic.",
    },
    {"instruction": "Name a planet with rings.", "output": "Saturn has the most visible rings."},
]


def counts_table(markdown: str) -> dict[str, tuple[int, int | None]]:
    """step → (seen, rejected) from the preview's `| step | seen | rejected | edits |` table."""
    found = {}
    for step, seen, rejected in re.findall(r"^\| (\w+) \| (\d+) \| (\d*) \| \d* \|$", markdown, re.MULTILINE):
        found[step] = (int(seen), int(rejected) if rejected else None)
    return found


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def staged_project(tmp_path: Path) -> tuple[Path, Path]:
    """A project with llms-from-scratch and a small Q&A file, ingested and deduplicated (not yet filtered)."""
    require_shared_data(LLMS_PREFERENCE)
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in QA))
    config = tmp_path / "distillery.yaml"
    config.write_text(f"""\
sources:
  - {{name: qa, path: qa.jsonl, mapping: alpaca, license: MIT}}
  - name: llms_pref
    path: {LLMS_PREFERENCE}
    mapping: preference
    fields: {{prompt: [instruction, input]}}
    license: Apache-2.0
    origin: synthetic
    generator: Llama-3.1-70B
format: {{tokenizer: {REPO / "demo" / "tokenizer"}}}
""")
    home = tmp_path / "home"
    # Staged in-process (raw and deduped only, with their checks) so the test depends on those assets alone.
    staged = materialize(config, home / "warehouse.duckdb", selection=dg.AssetSelection.assets("raw", "deduped"))
    assert staged.success
    return config, home


def test_preview_shows_what_would_be_removed_and_why_and_writes_nothing(staged_project) -> None:
    config, home = staged_project
    warehouse = home / "warehouse.duckdb"
    before = sha256(warehouse)

    shown = run_cli("preview", "--config", str(config), "--sample", "5000", home=home)
    assert shown.returncode == 0, shown.stderr[-3000:]
    out = shown.stdout
    assert "### Would be removed" in out
    assert re.search(r"^\| empty \| `\w+` \| empty response \|", out, re.MULTILINE)
    assert re.search(r"^\| refusal \| `\w+` \| boilerplate refusal \|", out, re.MULTILINE)
    assert re.search(r"^\| chosen_equals_rejected \| `\w+` \| chosen identical to rejected \|", out, re.MULTILINE)
    # README: 6 degenerate pairs in llms-from-scratch; plus the empty and the refusal answer of qa.jsonl.
    counts = counts_table(out)
    assert counts["chosen_equals_rejected"][1] == 6 and counts["empty"][1] == 1 and counts["refusal"][1] == 1
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as db:
        (deduped,) = db.execute("SELECT count(*) FROM deduped").fetchone()
    assert f"**{deduped}** rows in" in out  # the whole table: under the sample size

    assert sha256(warehouse) == before  # nothing written
    with duckdb.connect(str(warehouse), read_only=True) as db:
        tables = {r[0] for r in db.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert "filtered" not in tables and "filter_rejections" not in tables


def test_preview_on_the_whole_table_predicts_the_real_run(staged_project) -> None:
    config, home = staged_project
    shown = run_cli("preview", "--config", str(config), "--sample", "100000", home=home)
    assert shown.returncode == 0, shown.stderr[-3000:]
    predicted = {step: rejected for step, (_, rejected) in counts_table(shown.stdout).items() if rejected}

    ran = materialize(config, home / "warehouse.duckdb", selection=dg.AssetSelection.assets("filtered"))
    assert ran.success
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as db:
        actual = dict(db.execute("SELECT filter, count(*) FROM filter_rejections GROUP BY 1").fetchall())
    assert predicted == actual == {"empty": 1, "refusal": 1, "chosen_equals_rejected": 6}


def test_preview_of_a_small_sample_reads_only_that_many_rows(staged_project) -> None:
    config, home = staged_project
    shown = run_cli("preview", "--config", str(config), "--sample", "40", home=home)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "**40** rows in" in shown.stdout
    assert all(seen <= 40 for seen, _ in counts_table(shown.stdout).values())


def test_preview_before_any_run_says_what_to_do(tmp_path: Path) -> None:
    shown = run_cli("preview", home=tmp_path / "empty-home")
    assert shown.returncode != 0
    assert "distillery run" in shown.stderr
