"""The compliance report of a dataset version (docs/architecture.md §4): what is in it, under which terms, and
every row that breaks the policy for the intended use, with the reason.

The report answers a reviewer who signs off a training set:

* rows by licence, origin, source and teacher;
* the licences' obligations: who must be credited (every contributing source under an
  attribution licence, including the duplicates a kept row absorbed: a merged row owes what every
  copy owes), which licences are share-alike or non-commercial;
* every row that violates the policy, and why: its own licence does not allow the intended use or
  is unknown; a row it was derived from carries such a licence; a teacher (a model that wrote any
  part of it) has terms or a licence that forbid the use, by today's registry or by the terms
  synthesis recorded in the row (``extra.terms``);
* the teachers' terms as declared in the project file's ``policy.teachers`` registry
  (``{model: {license, terms, forbids: [intended uses]}}``, parsed by
  :func:`curation.synth.terms.parse_model_registry`);
* the data version and project-file hash it describes.

All set work runs in DuckDB (a recursive walk of ``lineage`` and ``provenance.parent_ids`` from
every row of the table); only the few distinct licences and teachers are judged in Python, by
:class:`~curation.core.licenses.LicensePolicy`, so the verdicts are the same as the licence filter's.
The full violation list is streamed to a CSV; the Markdown and HTML show counts and a sample.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import jinja2
import pyarrow as pa
import pyarrow.csv as pa_csv

from curation.audit.trace import discover
from curation.core.licenses import LicensePolicy, license_ids
from curation.core.markdown import counts_table, markdown_table
from curation.core.provenance import LINEAGE_WALK_DEPTH
from curation.core.schema import utcnow
from curation.core.warehouse import quote, source_file_sql
from curation.synth.terms import ModelTerms, parse_model_registry

# --- the policy: licences and the teachers' registry -------------------------------------------


@dataclass(frozen=True)
class CompliancePolicy:
    """What the report judges rows against: the intended use, the licence table, the teachers."""

    intended_use: str = "research"
    licenses: LicensePolicy = field(default_factory=LicensePolicy)
    teachers: Mapping[str, ModelTerms] = field(default_factory=dict)

    @classmethod
    def from_config(cls, policy: Any) -> CompliancePolicy:
        """From the project file's ``policy`` section (``curation.core.config.PolicyConfig``)."""
        # Entries may be plain dicts or typed models, should the project file type them later.
        teachers = {k: (v.model_dump() if hasattr(v, "model_dump") else v) for k, v in (policy.teachers or {}).items()}
        return cls(policy.intended_use, LicensePolicy.with_overrides(policy.licenses), parse_model_registry(teachers))

    def license_problems(self, expression: str | None) -> list[tuple[str, str]]:
        """Every (rule, reason) for which rows under the licence expression may not be used, one per id:
        each unknown id (always flagged, whatever the use), each id whose terms refuse the intended use."""
        ids = license_ids(expression)
        unknown = self.licenses.unknown_ids(expression) if ids else ["(missing)"]
        problems = [
            ("unknown-licence", f"licence {license_id} is unknown: declare its terms under policy.licenses")
            for license_id in unknown
        ]
        problems += [("licence", why) for why in self.licenses.refusals(expression, self.intended_use, unknown=False)]
        return problems

    def teacher_problem(self, model: str, recorded_license: str | None) -> tuple[str, str] | None:
        """(rule, reason) when data written by ``model`` may not be used for the intended use."""
        entry = self.teachers.get(model)
        if entry and self.intended_use in entry.forbids:
            return "teacher-terms", (
                f"teacher {model}: its terms ({entry.terms or 'see policy.teachers'}) forbid "
                f"{self.intended_use} use of its outputs"
            )
        license_ = (entry.license if entry else None) or recorded_license
        if license_:
            problems = self.license_problems(license_)
            if problems:
                return "teacher-licence", f"teacher {model}: " + "; ".join(reason for _, reason in problems)
            return None
        if entry is None and self.intended_use == "commercial":
            return "teacher-undeclared", (
                f"teacher {model} has no recorded licence and is not declared under policy.teachers"
            )
        return None


# --- the report --------------------------------------------------------------------------------


@dataclass
class ComplianceReport:
    project: str
    table: str
    data_version: str
    project_file_hash: str
    intended_use: str
    generated_at: datetime
    rows: int
    by_license: dict[str, int]
    by_origin: dict[str, int]
    by_source: dict[str, int]
    by_teacher: dict[str, int]
    attribution: list[dict[str, Any]]  # license, source, files, source_rows (raw rows that reached the table)
    share_alike: list[dict[str, Any]]
    non_commercial: list[dict[str, Any]]
    teachers: list[dict[str, Any]]
    violations_by_rule: list[dict[str, Any]]  # rule, reason, rows
    violations: list[dict[str, Any]]  # the first `sample` violations, by row_id
    violating_rows: int
    violations_total: int  # a row breaking several rules counts once per rule here
    unknown_licenses: list[str]

    @property
    def compliant(self) -> bool:
        return self.violating_rows == 0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["generated_at"] = self.generated_at.isoformat()
        data["compliant"] = self.compliant
        return data

    def summary_markdown(self) -> str:
        """The short version for asset metadata: verdict, counts, violations by rule."""
        verdict = (
            "**compliant**" if self.compliant else f"**{self.violating_rows} of {self.rows} rows violate the policy**"
        )
        return "\n\n".join(
            [
                f"`{self.table}` version `{self.data_version}`, project file `{self.project_file_hash}`, "
                f"intended use **{self.intended_use}**: {verdict}",
                "**by licence**\n\n" + counts_table(self.by_license, "license", self.rows),
                "**by teacher**\n\n" + counts_table(self.by_teacher, "teacher", self.rows),
                "**violations**\n\n" + markdown_table(self.violations_by_rule, width=120),
            ]
        )

    def to_markdown(self) -> str:
        return _render(MARKDOWN_TEMPLATE, self, autoescape=False)

    def to_html(self) -> str:
        return _render(HTML_TEMPLATE, self, autoescape=True)


def build_report(
    connection: duckdb.DuckDBPyConnection,
    policy: CompliancePolicy,
    table: str = "formatted",
    *,
    data_version: str = "",
    project: str = "",
    project_file_hash: str = "",
    sample: int = 200,
) -> ComplianceReport:
    """Judge every row of ``table``. Leaves temp table ``_report_violations`` on ``connection`` for
    :func:`write_violations_csv`."""
    tables = discover(connection)
    if table not in tables.datasets:
        raise LookupError(
            f"no dataset table {table!r} in the warehouse (have: {', '.join(tables.datasets) or 'none'})"
            "; run `distillery run` first"
        )
    target = quote(table)
    _ancestry(connection, tables, table)
    run = connection.execute

    # Judge the few distinct licences and teachers in Python, with the same rules as the licence filter.
    licences = [
        r[0]
        for r in run(
            f"SELECT DISTINCT license FROM _report_rows UNION SELECT DISTINCT license FROM {target}"
        ).fetchall()
    ]
    # One verdict row per (licence expression, problem): an expression is judged id by id.
    no_problem: list[tuple[str | None, str | None]] = [(None, None)]
    verdicts = [(lic, *problem) for lic in licences for problem in policy.license_problems(lic) or no_problem]
    _register(connection, "_report_lic", ["license", "rule", "reason"], verdicts)
    teachers = run("SELECT teacher, any_value(teacher_license) FROM _report_teachers GROUP BY 1").fetchall()
    teacher_verdicts = [(t, *(policy.teacher_problem(t, lic) or (None, None))) for t, lic in teachers]
    _register(connection, "_report_teacher_verdict", ["teacher", "rule", "reason"], teacher_verdicts)

    run(f"""CREATE OR REPLACE TEMP TABLE _report_violations AS
        SELECT DISTINCT * FROM (
          SELECT t.row_id, t.source, t.source_uri, t.license, v.rule, v.reason
          FROM {target} t JOIN _report_lic v ON v.license IS NOT DISTINCT FROM t.license WHERE v.rule IS NOT NULL
          UNION ALL
          SELECT t.row_id, t.source, t.source_uri, t.license, 'inherited-' || v.rule,
                 'derived from ' || count(DISTINCT a.ancestor) || ' row(s) under ' || coalesce(r.license, '(missing)')
                 || ' (e.g. ' || min(a.ancestor) || ' from ' || coalesce(min(r.source), '?') || '): ' || v.reason
          FROM {target} t JOIN _report_anc a ON a.row_id = t.row_id AND a.ancestor <> t.row_id
          JOIN _report_rows r ON r.row_id = a.ancestor
          JOIN _report_lic v ON v.license IS NOT DISTINCT FROM r.license
          WHERE v.rule IS NOT NULL AND r.license IS DISTINCT FROM t.license
            -- an ancestor's problem the row's own licence expression already carries is reported once, as its own
            AND NOT EXISTS (SELECT 1 FROM _report_lic o WHERE o.license IS NOT DISTINCT FROM t.license
                            AND o.reason = v.reason)
          GROUP BY t.row_id, t.source, t.source_uri, t.license, r.license, v.rule, v.reason
          UNION ALL
          SELECT t.row_id, t.source, t.source_uri, t.license, v.rule, v.reason
          FROM {target} t JOIN _report_teachers m ON m.row_id = t.row_id
          JOIN _report_teacher_verdict v ON v.teacher = m.teacher WHERE v.rule IS NOT NULL)""")

    # Restrictions synthesis carried into the row itself (extra.terms, curation.synth.terms.inherited_terms):
    # they hold even when the registry that produced them has changed since.
    run(
        f"""INSERT INTO _report_violations
        SELECT t.row_id, t.source, t.source_uri, t.license, 'recorded-terms',
               'the row records terms of ' || coalesce(array_to_string(CAST(json_extract_string(t.extra,
               '$.terms.models[*]') AS VARCHAR[]), ', '), 'a teacher') || ' that forbid ' || $use || ' use'
        FROM {target} t
        WHERE list_contains(CAST(json_extract_string(t.extra, '$.terms.forbids[*]') AS VARCHAR[]), $use)
          AND t.row_id NOT IN (SELECT row_id FROM _report_violations WHERE rule = 'teacher-terms')""",
        {"use": policy.intended_use},
    )
    (rows,) = run(f"SELECT count(*) FROM {target}").fetchall()[0]
    by_teacher = _counts(connection, "SELECT teacher, count(DISTINCT row_id) FROM _report_teachers GROUP BY 1")
    (no_teacher,) = run(
        f"SELECT count(*) FROM {target} WHERE row_id NOT IN (SELECT row_id FROM _report_teachers)"
    ).fetchall()[0]
    if no_teacher:
        by_teacher["(none: human-written)"] = int(no_teacher)
    # Whom the rows owe: every source row that reached the table (raw rows, the duplicates they absorbed) and
    # every parentless row made from a seed pool or problem set outside raw, by licence id: a row under
    # "A AND B" owes what A and B each require.
    origins = _dicts(
        connection,
        f"""
        SELECT license, source, list(DISTINCT file ORDER BY file) AS files, count(DISTINCT row_id) AS source_rows
        FROM (SELECT r.row_id, r.license, r.source, {source_file_sql("r.source_uri")} AS file
              FROM _report_rows r
              WHERE r.in_raw OR r.row_id NOT IN (SELECT child_id FROM _report_edges WHERE parent_id IS NOT NULL))
        GROUP BY 1, 2""",
    )
    by_id: dict[tuple[str, str], dict[str, Any]] = {}
    for item in origins:
        for license_id in license_ids(item["license"]) or ("(missing)",):
            owed = by_id.setdefault((license_id, item["source"]), {"files": set(), "source_rows": 0})
            owed["files"].update(item["files"])
            owed["source_rows"] += int(item["source_rows"])
    attribution, share_alike, non_commercial = [], [], []
    for (license_id, source), owed in sorted(by_id.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        row = {
            "license": license_id,
            "source": source,
            "files": ", ".join(sorted(owed["files"])),
            "source_rows": owed["source_rows"],
        }
        terms = policy.licenses.lookup(license_id)
        if terms and terms.attribution:
            attribution.append(row)
        if terms and terms.share_alike:
            share_alike.append(row)
        if terms and not terms.commercial:
            non_commercial.append(row)
    teacher_rows = []
    recorded = {
        r["teacher"]: r
        for r in _dicts(
            connection,
            """
        SELECT m.teacher, count(DISTINCT m.row_id) AS rows, string_agg(DISTINCT m.teacher_license, ', ') AS licenses,
               v.rule, v.reason
        FROM _report_teachers m JOIN _report_teacher_verdict v USING (teacher) GROUP BY m.teacher, v.rule, v.reason""",
        )
    }
    for model in sorted(set(recorded) | set(policy.teachers)):
        entry = policy.teachers.get(model)
        found = recorded.get(model, {})
        teacher_rows.append(
            {
                "teacher": model,
                "rows": int(found.get("rows") or 0),
                "declared": entry is not None,
                "license": (entry.license if entry else None) or found.get("licenses"),
                "terms": entry.terms if entry else "",
                "forbids": ", ".join(entry.forbids) if entry else "",
                "verdict": found.get("reason") or ("ok" if found else "not used in this version"),
            }
        )
    return ComplianceReport(
        project=project,
        table=table,
        data_version=data_version,
        project_file_hash=project_file_hash,
        intended_use=policy.intended_use,
        generated_at=utcnow(),
        rows=int(rows),
        by_license=_counts(connection, f"SELECT license, count(*) FROM {target} GROUP BY 1"),
        by_origin=_counts(connection, f"SELECT origin, count(*) FROM {target} GROUP BY 1"),
        by_source=_counts(connection, f"SELECT source, count(*) FROM {target} GROUP BY 1"),
        by_teacher=by_teacher,
        attribution=attribution,
        share_alike=share_alike,
        non_commercial=non_commercial,
        teachers=teacher_rows,
        violations_by_rule=_dicts(
            connection,
            "SELECT rule, reason, count(DISTINCT row_id) AS rows FROM "
            "_report_violations GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2",
        ),
        violations=_dicts(
            connection, "SELECT * FROM _report_violations ORDER BY row_id, rule, reason LIMIT ?", [int(sample)]
        ),
        violating_rows=int(run("SELECT count(DISTINCT row_id) FROM _report_violations").fetchall()[0][0]),
        violations_total=int(run("SELECT count(*) FROM _report_violations").fetchall()[0][0]),
        unknown_licenses=sorted(
            {i for lic in licences for i in (policy.licenses.unknown_ids(lic) if license_ids(lic) else ["(missing)"])}
        ),
    )


def _ancestry(connection: duckdb.DuckDBPyConnection, tables: Any, target_table: str) -> None:
    """Temp tables: every (row, ancestor) pair of ``target_table`` along derivations (the row itself
    included), the duplicates those rows absorbed, the source and licence of all of them, and the
    models that wrote any part of each row."""
    run = connection.execute
    target = quote(target_table)
    edges = ["SELECT child_id, parent_id FROM lineage"] if tables.has("lineage") else []
    if tables.has("provenance"):
        edges.append(
            "SELECT row_id, unnest(CAST(json_extract_string(parent_ids, '$[*]') AS VARCHAR[])) FROM provenance"
        )
    edge_sql = " UNION ".join(edges) or "SELECT NULL::VARCHAR, NULL::VARCHAR WHERE false"
    # Duplicate edges cost nothing: the UNION of the edge sources drops them, the walk's DISTINCT repeated pairs.
    run(f"CREATE OR REPLACE TEMP TABLE _report_edges AS SELECT * FROM ({edge_sql}) e(child_id, parent_id)")
    # UNION ALL, deduplicated afterwards, and bounded in depth (see LINEAGE_WALK_DEPTH).
    run(f"""CREATE OR REPLACE TEMP TABLE _report_anc AS
        WITH RECURSIVE anc(row_id, ancestor, depth) AS (
          SELECT row_id, row_id, 0 FROM {target}
          UNION ALL SELECT a.row_id, e.parent_id, a.depth + 1 FROM anc a
          JOIN _report_edges e ON e.child_id = a.ancestor WHERE a.depth < {LINEAGE_WALK_DEPTH})
        SELECT DISTINCT row_id, ancestor FROM anc""")
    # A kept row stands for the duplicates removed in its favour: their licences add obligations
    # (credit every copy's source), not restrictions (the kept copy's own licence grants the use).
    absorbed = (
        "SELECT DISTINCT a.row_id, d.row_id AS duplicate FROM _report_anc a JOIN dedup_clusters d "
        "ON d.kept_row_id = a.ancestor AND d.removed AND d.row_id <> d.kept_row_id"
        if tables.has("dedup_clusters")
        else "SELECT NULL::VARCHAR AS row_id, NULL::VARCHAR AS duplicate WHERE false"
    )
    run(f"CREATE OR REPLACE TEMP TABLE _report_absorbed AS {absorbed}")
    run(
        "CREATE OR REPLACE TEMP TABLE _report_wanted AS SELECT ancestor AS row_id FROM _report_anc "
        "UNION SELECT duplicate FROM _report_absorbed"
    )
    # Same id, same row: its fields are the same in every table that holds it, so take them from the
    # first that does: raw (which says the row is a source row), then the reported table (all of its rows
    # are wanted), then the others. Each table is semi-joined with the ids still missing, which then
    # shrink by an anti-join: much cheaper than grouping every copy of every id.
    run(
        "CREATE OR REPLACE TEMP TABLE _report_rows (row_id VARCHAR, license VARCHAR, source VARCHAR, "
        "source_uri VARCHAR, origin VARCHAR, generator VARCHAR, in_raw BOOLEAN)"
    )
    run("CREATE OR REPLACE TEMP TABLE _report_missing AS SELECT row_id FROM _report_wanted")
    first = [t for t in ("raw", target_table) if t in tables.datasets]
    for table in first + [t for t in tables.datasets if t not in first]:
        run(f"""INSERT INTO _report_rows SELECT row_id, license, source, source_uri, origin, generator,
                {"true" if table == "raw" else "false"} FROM {quote(table)} SEMI JOIN _report_missing USING (row_id)""")
        run(
            "CREATE OR REPLACE TEMP TABLE _report_missing AS SELECT row_id FROM _report_missing "
            f"ANTI JOIN {quote(table)} USING (row_id)"
        )
    teachers = [
        "SELECT a.row_id, r.generator AS teacher, NULL::VARCHAR AS teacher_license FROM _report_anc a "
        "JOIN _report_rows r ON r.row_id = a.ancestor WHERE r.origin <> 'human' AND r.generator IS NOT NULL"
    ]
    if tables.has("provenance"):
        teachers.append(
            "SELECT a.row_id, p.teacher_model, p.teacher_license FROM _report_anc a "
            "JOIN provenance p ON p.row_id = a.ancestor WHERE p.teacher_model IS NOT NULL"
        )
    run(f"CREATE OR REPLACE TEMP TABLE _report_teachers AS SELECT DISTINCT * FROM ({' UNION ALL '.join(teachers)})")


def _register(
    connection: duckdb.DuckDBPyConnection, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    data = pa.table({c: pa.array([r[i] for r in rows], pa.string()) for i, c in enumerate(columns)})
    connection.register("_report_incoming", data)
    try:
        connection.execute(f"CREATE OR REPLACE TEMP TABLE {quote(name)} AS SELECT * FROM _report_incoming")
    finally:
        connection.unregister("_report_incoming")


def _counts(connection: duckdb.DuckDBPyConnection, sql: str) -> dict[str, int]:
    return {("(missing)" if k is None else str(k)): int(n) for k, n in connection.execute(sql).fetchall()}


def _dicts(connection: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    cursor = connection.execute(sql, list(params))
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]


def write_violations_csv(connection: duckdb.DuckDBPyConnection, path: Path) -> int:
    """Stream every violation left by :func:`build_report` to ``path``; returns the number of lines."""
    written = 0
    schema = pa.schema([(c, pa.string()) for c in ("row_id", "source", "source_uri", "license", "rule", "reason")])
    with pa_csv.CSVWriter(str(path), schema) as writer:
        # Temp tables belong to this connection, so no cursor of its own here (unlike read_batches).
        relation = connection.sql("SELECT * FROM _report_violations ORDER BY row_id, rule, reason")
        for batch in relation.to_arrow_reader(2_000):
            writer.write_batch(batch.cast(schema))
            written += batch.num_rows
    return written


def write_report(connection: duckdb.DuckDBPyConnection, report: ComplianceReport, out_dir: Path) -> dict[str, Path]:
    """compliance.md, compliance.html, compliance.json and violations.csv under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out_dir / "compliance.md",
        "html": out_dir / "compliance.html",
        "json": out_dir / "compliance.json",
        "violations": out_dir / "violations.csv",
    }
    paths["markdown"].write_text(report.to_markdown(), encoding="utf-8")
    paths["html"].write_text(report.to_html(), encoding="utf-8")
    paths["json"].write_text(json.dumps(report.as_dict(), indent=2, default=str), encoding="utf-8")
    write_violations_csv(connection, paths["violations"])
    return paths


# --- rendering ---------------------------------------------------------------------------------


def report_mismatches(report: Mapping[str, Any], version: str, intended_use: str) -> list[str]:
    """Why a written report (its ``compliance.json``) does not speak for ``formatted`` at ``version`` under
    ``intended_use``: another table or version, another use."""
    problems = []
    if report.get("table") != "formatted" or report.get("data_version") != version:
        problems.append(
            f"the report describes {report.get('table')} version {report.get('data_version')}, not formatted {version}"
        )
    if report.get("intended_use") != intended_use:
        problems.append(f"the report judges {report.get('intended_use')} use, the project's is {intended_use}")
    return problems


def export_refusal(report_dir: Path, version: str, intended_use: str) -> str | None:
    """Why ``formatted`` at ``version`` may not be exported for ``intended_use``, or None: the compliance
    report written for that version (``report_dir/compliance.json``, the ``compliance_report`` asset's) must
    exist, judge that use, and find no violating row. The ``exports`` asset asks before writing anything, so
    a run that selects ``exports`` alone cannot export what the compliance checks would stop."""
    path = report_dir / "compliance.json"
    if not path.is_file():
        return (
            f"formatted version {version} has no compliance report ({path} is missing): materialize "
            "compliance_report first (`distillery run --select compliance_report+`)"
        )
    report = json.loads(path.read_text(encoding="utf-8"))
    problems = report_mismatches(report, version, intended_use)
    violating = int(report.get("violating_rows", 0))
    if violating:
        problems.append(
            f"{violating} rows violate the {intended_use} policy (see {report_dir / 'violations.csv'}): "
            "fix the sources or the policy, then run again"
        )
    return f"formatted version {version} may not be exported: {'; '.join(problems)}" if problems else None


def _render(template: str, report: ComplianceReport, autoescape: bool) -> str:
    environment = jinja2.Environment(
        autoescape=autoescape, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined
    )
    environment.filters["md"] = lambda rows, width=100: markdown_table(rows, width=width)
    environment.filters["counts"] = lambda counts, key: counts_table(counts, key, report.rows)
    environment.filters["pct"] = lambda n: f"{n / report.rows:.1%}" if report.rows else "-"
    return environment.from_string(template).render(r=report)


MARKDOWN_TEMPLATE = """\
# Compliance report: {{ r.project or 'dataset' }} / `{{ r.table }}`

| | |
|---|---|
| data version | `{{ r.data_version or '-' }}` |
| project file hash | `{{ r.project_file_hash or '-' }}` |
| intended use | **{{ r.intended_use }}** |
| rows | {{ r.rows }} |
| rows violating the policy | **{{ r.violating_rows }}** |
| generated | {{ r.generated_at.isoformat() }} UTC |

## Rows by licence

{{ r.by_license | counts('license') }}

## Rows by origin

{{ r.by_origin | counts('origin') }}

## Rows by source

{{ r.by_source | counts('source') }}

## Rows by teacher (models that wrote any part of a row)

{{ r.by_teacher | counts('teacher') }}

## Obligations

### Attribution (credit these sources)

{{ r.attribution | md }}

### Share-alike (derived data must be shared under the same licence)

{{ r.share_alike | md }}

### Non-commercial sources

{{ r.non_commercial | md }}

## Teachers and their terms

{{ r.teachers | md }}

## Violations of the {{ r.intended_use }} policy

{% if r.violating_rows == 0 %}
None: every row's licence, ancestry and teachers allow {{ r.intended_use }} use.
{% else %}
{{ r.violations_by_rule | md(160) }}

The first {{ r.violations | length }} of {{ r.violations_total }} violations ({{ r.violating_rows }} rows); \
every one is in `violations.csv`.

{{ r.violations | md(60) }}
{% endif %}
{% if r.unknown_licenses %}

Unknown licences (declare them under `policy.licenses`): {{ r.unknown_licenses | join(', ') }}
{% endif %}
"""

HTML_TEMPLATE = """\
<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Compliance report: {{ r.project }} / {{ r.table }} {{ r.data_version }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; color: #222; }
table { border-collapse: collapse; margin: .5rem 0 1.5rem; font-size: .9rem; }
th, td { border: 1px solid #ccc; padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.n { text-align: right; }
.bad { color: #a00; font-weight: bold; } .ok { color: #070; font-weight: bold; }
code { background: #f6f6f6; padding: 0 .2rem; }
</style></head><body>
<h1>Compliance report: {{ r.project or 'dataset' }} / <code>{{ r.table }}</code></h1>
<table>
<tr><th>data version</th><td><code>{{ r.data_version or '-' }}</code></td></tr>
<tr><th>project file hash</th><td><code>{{ r.project_file_hash or '-' }}</code></td></tr>
<tr><th>intended use</th><td>{{ r.intended_use }}</td></tr>
<tr><th>rows</th><td>{{ r.rows }}</td></tr>
<tr><th>rows violating the policy</th>
<td class="{{ 'ok' if r.compliant else 'bad' }}">{{ r.violating_rows }}</td></tr>
<tr><th>generated</th><td>{{ r.generated_at.isoformat() }} UTC</td></tr>
</table>
{% macro counts(title, data, key) %}
<h2>{{ title }}</h2>
<table><tr><th>{{ key }}</th><th>rows</th><th>share</th></tr>
{% for k, n in data | dictsort(by='value', reverse=true) %}
<tr><td>{{ k }}</td><td class="n">{{ n }}</td><td class="n">{{ n | pct }}</td></tr>
{% endfor %}
</table>
{% endmacro %}
{% macro rows_table(rows) %}
{% if rows %}
<table><tr>{% for c in rows[0].keys() %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in rows %}<tr>{% for v in row.values() %}<td>{{ '' if v is none else v }}</td>{% endfor %}</tr>
{% endfor %}
</table>
{% else %}<p><em>(none)</em></p>{% endif %}
{% endmacro %}
{{ counts('Rows by licence', r.by_license, 'license') }}
{{ counts('Rows by origin', r.by_origin, 'origin') }}
{{ counts('Rows by source', r.by_source, 'source') }}
{{ counts('Rows by teacher (models that wrote any part of a row)', r.by_teacher, 'teacher') }}
<h2>Obligations</h2>
<h3>Attribution (credit these sources)</h3>
{{ rows_table(r.attribution) }}
<h3>Share-alike (derived data must be shared under the same licence)</h3>
{{ rows_table(r.share_alike) }}
<h3>Non-commercial sources</h3>
{{ rows_table(r.non_commercial) }}
<h2>Teachers and their terms</h2>
{{ rows_table(r.teachers) }}
<h2>Violations of the {{ r.intended_use }} policy</h2>
{% if r.violating_rows == 0 %}
<p class="ok">None: every row's licence, ancestry and teachers allow {{ r.intended_use }} use.</p>
{% else %}
{{ rows_table(r.violations_by_rule) }}
<p>The first {{ r.violations | length }} of {{ r.violations_total }} violations ({{ r.violating_rows }} rows);
every one is in
<a href="violations.csv">violations.csv</a>.</p>
{{ rows_table(r.violations) }}
{% endif %}
{% if r.unknown_licenses %}
<p class="bad">Unknown licences (declare them under <code>policy.licenses</code>):
{{ r.unknown_licenses | join(', ') }}</p>
{% endif %}
</body></html>
"""
