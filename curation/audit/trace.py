"""The audit of one row: its full chain back to the raw records, and where it went (docs/architecture.md §4).

The walk is generic over the warehouse's tables, so stages added later are covered without
changes here:

* **edges** come from ``lineage`` (every derivation that changed an id), from
  ``provenance.parent_ids`` (a generator's declared parents) and from ``dedup_clusters`` (a kept
  row *absorbs* the duplicates removed in its favour: a merged row's licence obligations come
  from every copy, so the copies are part of its history);
* **where a row lives**: every table holding the canonical row columns (``raw`` … ``formatted``
  and any dataset added later) is searched for each id on the chain;
* **what happened to it**: every other table with a ``row_id`` column (``filter_rejections``,
  ``mix_excluded``, ``format_rejections``, ``contamination``, …) contributes its records as notes,
  so a removed row says where and why it stopped.

Each step looks up a whole frontier of ids at once, by the key column alone, so DuckDB answers
with probes of the ART index every asset write creates on it
(:data:`curation.core.warehouse.LOOKUP_COLUMNS`): an audit costs a few dozen index probes whatever
the table sizes, tens of milliseconds on a million-row warehouse (``benchmarks/audit_scale.py``;
a warehouse without the indexes is still read correctly, by scans). The
audit only reads, and never shows row content: the parents of a redacted row still hold the
secret that was redacted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from typing import Any

import duckdb

from curation.core.schema import COLUMNS
from curation.core.warehouse import is_bookkeeping, quote

STAGE_ORDER: tuple[str, ...] = ("raw", "deduped", "filtered", "synthetic", "synthetic_mixed", "formatted")
"""The spine's dataset tables in the order rows move through them (others sort after, by name)."""

STOPPED_AT: dict[str, str] = {
    "quarantine": "raw",
    "dedup_clusters": "deduped",
    "filter_rejections": "filtered",
    "synthetic_rejections": "synthetic",
    "mix_excluded": "synthetic_mixed",
    "format_rejections": "formatted",
    "contamination": "formatted",
}
"""Side tables that record a row's removal, and the stage that removed it."""

INFO_COLUMNS: tuple[str, ...] = (
    "kind",
    "source",
    "source_uri",
    "license",
    "origin",
    "generator",
    "annotator",
    "ingested_at",
    "split",
    "template_id",
    "tokenizer_id",
    "n_tokens",
    "truncation",
)
"""What the audit shows of a row: where it came from and under which terms, never its content."""

_JSON_FIELDS = ("generation_params", "parent_ids", "verification")
_SKIP_TABLES = {"lineage", "provenance", "dedup_clusters", "quarantine"}
_KEY_COLUMNS = ("row_id", "candidate_id")  # how side tables name the row (a rejected candidate never was a row)
_CONTENT_COLUMNS = {
    "messages",
    "chosen",
    "rejected",
    "text",
    "candidate",
    "raw_text",
    "prompt_text",
    "chosen_text",
    "rejected_text",
}
"""Columns holding row content: never shown (a redacted row's parents still hold the secret)."""
MAX_ROWS = 5_000
"""Stop a walk after this many rows (a seed row can have many generated descendants)."""


@dataclass(frozen=True)
class Edge:
    """``child`` comes from ``parent``. ``relation`` is ``derived`` (a new row made from the parent)
    or ``absorbed`` (the parent was removed as a duplicate of the child)."""

    child_id: str
    parent_id: str
    asset: str
    operation: str
    detail: str | None
    relation: str = "derived"


@dataclass
class AuditedRow:
    row_id: str
    tables: list[str] = field(default_factory=list)  # dataset tables holding this id, in stage order
    info: dict[str, Any] = field(default_factory=dict)  # INFO_COLUMNS found for it
    provenance: dict[str, Any] | None = None
    notes: list[dict[str, Any]] = field(default_factory=list)  # side-table records: {"table", "removed_at", ...}

    @property
    def stopped(self) -> list[dict[str, Any]]:
        return [n for n in self.notes if n.get("removed_at")]


@dataclass
class Audit:
    """Everything the warehouse knows about one row and its relatives."""

    query: str
    row_id: str | None
    rows: dict[str, AuditedRow]
    upstream: list[Edge]  # edges walked from the row back to its origins
    downstream: list[Edge]  # edges walked from the row forward to what it became
    quarantine: list[dict[str, Any]] = field(default_factory=list)  # when the query named a quarantined record
    truncated: bool = False

    def parents(self, row_id: str) -> list[Edge]:
        return [e for e in self.upstream if e.child_id == row_id]

    def children(self, row_id: str) -> list[Edge]:
        return [e for e in self.downstream if e.parent_id == row_id]

    def origins(self) -> list[AuditedRow]:
        """The sources the queried row comes from: raw rows (including duplicates it absorbed), and rows made
        without parents from a file outside raw (a code problem set, a seed pool: their ``source_uri`` names
        the file, their licence its licence). Rows a teacher wrote from nothing (``teacher:`` URIs) are none."""
        ids = {e.parent_id for e in self.upstream} | ({self.row_id} if self.row_id else set())
        with_parents = {e.child_id for e in self.upstream}

        def is_origin(row: AuditedRow) -> bool:
            if "raw" in row.tables:
                return True
            uri = str(row.info.get("source_uri") or "")
            return row.row_id not in with_parents and bool(uri) and not uri.startswith("teacher:")

        return [self.rows[i] for i in sorted(ids) if i in self.rows and is_origin(self.rows[i])]

    def licenses(self) -> list[str]:
        """Every licence on the chain: the rows' own, and the teachers' recorded in provenance."""
        ids = {e.parent_id for e in self.upstream} | ({self.row_id} if self.row_id else set())
        rows = [self.rows[i] for i in ids if i in self.rows]
        found = {row.info.get("license") for row in rows}
        found |= {row.provenance.get("teacher_license") for row in rows if row.provenance}
        return sorted(x for x in found if x)

    def teachers(self) -> list[str]:
        ids = {e.parent_id for e in self.upstream} | ({self.row_id} if self.row_id else set())
        found: set[str] = set()
        for i in ids:
            row = self.rows.get(i)
            if row is None:
                continue
            if row.info.get("origin") not in (None, "human") and row.info.get("generator"):
                found.add(row.info["generator"])
            if row.provenance:
                models = (row.provenance.get("teacher_model"), row.provenance.get("judge_model"))
                found |= {model for model in models if model is not None}
        return sorted(found)

    def status(self) -> str:
        """Where the queried row is now, or where and why it stopped."""
        if self.row_id is None:
            return "; ".join(f"quarantined at raw: {q.get('error')}" for q in self.quarantine) or "not found"
        return row_status(self, self.row_id)

    def as_dict(self) -> dict[str, Any]:
        return _jsonable(
            {
                "query": self.query,
                "row_id": self.row_id,
                "status": self.status(),
                "licenses": self.licenses(),
                "teachers": self.teachers(),
                "origins": [
                    {"row_id": r.row_id, **{k: r.info.get(k) for k in ("source", "source_uri", "license")}}
                    for r in self.origins()
                ],
                "rows": {k: asdict(v) for k, v in self.rows.items()},
                "upstream": [asdict(e) for e in self.upstream],
                "downstream": [asdict(e) for e in self.downstream],
                "quarantine": self.quarantine,
                "truncated": self.truncated,
            }
        )

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, ensure_ascii=False)

    def to_text(self) -> str:
        return render_text(self)


class RowNotFound(LookupError):
    """No table of the warehouse knows the id."""


# --- discovery ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WarehouseTables:
    datasets: tuple[str, ...]  # tables with the canonical columns, in stage order
    notes: tuple[str, ...]  # other tables keyed by a row id (_KEY_COLUMNS)
    columns: dict[str, tuple[str, ...]]

    def has(self, table: str) -> bool:
        return table in self.columns

    def key_column(self, table: str) -> str:
        return next(c for c in _KEY_COLUMNS if c in self.columns[table])


def discover(connection: duckdb.DuckDBPyConnection) -> WarehouseTables:
    """The tables an audit reads, found from the catalog so new stages are covered."""
    columns: dict[str, list[str]] = {}
    for table, column in connection.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'main' "
        "AND table_catalog = current_database() ORDER BY table_name, ordinal_position"
    ).fetchall():
        if not table.startswith("_stage_"):  # a write in progress (or a crashed one): not data
            columns.setdefault(table, []).append(column)
    canonical = set(COLUMNS)
    datasets = sorted(
        (t for t, cols in columns.items() if canonical <= set(cols)),
        key=lambda t: (STAGE_ORDER.index(t) if t in STAGE_ORDER else len(STAGE_ORDER), t),
    )
    notes = sorted(
        t
        for t, cols in columns.items()
        if set(_KEY_COLUMNS) & set(cols)
        and t not in datasets
        and t not in _SKIP_TABLES
        and not is_bookkeeping(t)  # a stage's reuse bookkeeping (digests, keys), not something done to the row
    )
    return WarehouseTables(tuple(datasets), tuple(notes), {t: tuple(c) for t, c in columns.items()})


# --- the walk ----------------------------------------------------------------------------------


_PROBE_IDS = 32
"""Ids per lookup query: DuckDB answers ``column = ANY(list)`` with ART index probes up to ~50
values (the lookup indexes of :data:`curation.core.warehouse.LOOKUP_COLUMNS`) and scans the
column beyond, so a large frontier is looked up in chunks."""
_PROBE_QUERIES = 32
"""Beyond this many chunks one scan per table is cheaper (~40 ms per million rows) than the probes."""


def _lookup(
    connection: duckdb.DuckDBPyConnection, table: str, key: str, ids: Iterable[str], columns: str = "*"
) -> list[dict[str, Any]]:
    """Rows of ``table`` whose ``key`` is one of ``ids``. The key is the only condition in SQL: DuckDB
    probes the index only when nothing else filters the scan, so callers filter the few rows found."""
    return _lookup_sql(connection, f"SELECT {columns} FROM {quote(table)} WHERE {quote(key)} = ANY($ids)", ids)


def _lookup_sql(connection: duckdb.DuckDBPyConnection, sql: str, ids: Iterable[str]) -> list[dict[str, Any]]:
    """The records of ``sql``, a query whose only parameter is the list ``$ids``, over ``ids`` in chunks
    that DuckDB answers with index probes."""
    wanted = sorted(ids)
    size = _PROBE_IDS if len(wanted) <= _PROBE_IDS * _PROBE_QUERIES else len(wanted)
    found: list[dict[str, Any]] = []
    for i in range(0, len(wanted), size):
        cursor = connection.execute(sql, {"ids": wanted[i : i + size]})
        names = [d[0] for d in cursor.description]
        found += [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
    return found


def _lineage(connection: duckdb.DuckDBPyConnection, key: str, ids: set[str]) -> list[Edge]:
    records = _lookup(connection, "lineage", key, ids, "child_id, parent_id, asset, operation, detail")
    other = "parent_id" if key == "child_id" else "child_id"
    records.sort(key=lambda r: (r["asset"], r[key], r[other]))
    return [Edge(r["child_id"], r["parent_id"], r["asset"], r["operation"], r["detail"]) for r in records]


def _absorbed_duplicates(connection: duckdb.DuckDBPyConnection, key: str, ids: set[str]) -> list[Edge]:
    """Edges from kept rows to the duplicates removed in their favour, found by ``key`` (``kept_row_id``
    going up from a kept row, ``row_id`` going down from a removed one)."""
    records = [
        r for r in _lookup(connection, "dedup_clusters", key, ids) if r["removed"] and r["kept_row_id"] != r["row_id"]
    ]
    records.sort(key=lambda r: (r["kept_row_id"], r["row_id"]))
    return [_absorbed(r) for r in records]


def _edges_up(connection: duckdb.DuckDBPyConnection, tables: WarehouseTables, ids: set[str]) -> list[Edge]:
    edges: list[Edge] = []
    if tables.has("lineage"):
        edges += _lineage(connection, "child_id", ids)
    if tables.has("provenance"):  # parents a generator declared, in case a stage wrote no lineage edge
        for r in _lookup(connection, "provenance", "row_id", ids, "row_id, method, parent_ids"):
            for parent in json.loads(r["parent_ids"] or "[]"):
                edges.append(Edge(r["row_id"], str(parent), "synthetic", r["method"], "provenance.parent_ids"))
    for table in tables.notes:  # a rejected candidate names its would-be parents in its side table
        if "parent_ids" in tables.columns[table]:
            key = tables.key_column(table)
            method = "method" if "method" in tables.columns[table] else "NULL"
            for r in _lookup(connection, table, key, ids, f"{quote(key)} AS id, {method} AS method, parent_ids"):
                for parent in json.loads(r["parent_ids"] or "[]"):
                    edges.append(
                        Edge(
                            r["id"],
                            str(parent),
                            STOPPED_AT.get(table, table),
                            r["method"] or table,
                            f"{table}.parent_ids",
                        )
                    )
    if tables.has("dedup_clusters"):  # the duplicates a kept row stands for
        edges += _absorbed_duplicates(connection, "kept_row_id", ids)
    return edges


def _edges_down(connection: duckdb.DuckDBPyConnection, tables: WarehouseTables, ids: set[str]) -> list[Edge]:
    edges: list[Edge] = []
    if tables.has("lineage"):
        edges += _lineage(connection, "parent_id", ids)
    if tables.has("dedup_clusters"):  # a removed duplicate lives on in the row that was kept
        edges += _absorbed_duplicates(connection, "row_id", ids)
    return edges


def _absorbed(record: dict[str, Any]) -> Edge:
    jaccard = record.get("jaccard")
    detail = ", ".join(
        x
        for x in (
            f"cluster {record.get('cluster_id')}",
            f"jaccard {jaccard:.3f}" if jaccard is not None else "",
            record.get("reason") or "",
        )
        if x
    )
    return Edge(record["kept_row_id"], record["row_id"], "deduped", f"dedup:{record.get('method')}", detail, "absorbed")


def _walk(
    connection: duckdb.DuckDBPyConnection, tables: WarehouseTables, start: str, up: bool, limit: int
) -> tuple[list[Edge], bool]:
    seen, frontier, edges, known = {start}, {start}, [], set()
    step = _edges_up if up else _edges_down
    while frontier:
        found = step(connection, tables, frontier)
        frontier = set()
        for edge in found:  # lineage first, so a parent that provenance repeats is not listed twice
            key = (edge.child_id, edge.parent_id, edge.relation)
            if key in known:
                continue
            known.add(key)
            edges.append(edge)
            nxt = edge.parent_id if up else edge.child_id
            if nxt not in seen:
                seen.add(nxt)
                frontier.add(nxt)
        if len(seen) > limit:
            return edges, True
    return edges, False


def _datasets_holding(
    connection: duckdb.DuckDBPyConnection, tables: WarehouseTables, ids: Iterable[str]
) -> list[dict[str, Any]]:
    """The :data:`INFO_COLUMNS` of every dataset row whose id is one of ``ids``, with its table (key
    ``#table``), in stage order. One query for all the dataset tables: its branches probe their indexes in
    parallel, where one query per table waited for each table's first pages in turn (half the time of an
    audit on a connection that had not read them yet)."""
    shown = [c for c in INFO_COLUMNS if any(c in tables.columns[t] for t in tables.datasets)]
    branches = [
        f'SELECT {position} AS "#position", row_id, '
        + ", ".join(quote(c) if c in tables.columns[table] else f"NULL AS {quote(c)}" for c in shown)
        + f" FROM {quote(table)} WHERE row_id = ANY($ids)"
        for position, table in enumerate(tables.datasets)
    ]
    if not branches:
        return []
    found = _lookup_sql(connection, " UNION ALL ".join(branches), ids)
    found.sort(key=lambda record: record["#position"])
    for record in found:
        record["#table"] = tables.datasets[record.pop("#position")]
    return found


def _describe(connection: duckdb.DuckDBPyConnection, tables: WarehouseTables, ids: set[str]) -> dict[str, AuditedRow]:
    rows = {i: AuditedRow(i) for i in ids}
    for record in _datasets_holding(connection, tables, ids):
        table = record.pop("#table")
        row = rows[record.pop("row_id")]
        row.tables.append(table)
        for key, value in record.items():  # the earliest table wins; later ones add their own columns
            if key in tables.columns[table]:
                row.info.setdefault(key, value)
    if tables.has("provenance"):
        for record in _lookup(connection, "provenance", "row_id", ids):
            for key in _JSON_FIELDS:
                if isinstance(record.get(key), str):
                    record[key] = json.loads(record[key])
            rows[record["row_id"]].provenance = record
    for table in tables.notes:
        key = tables.key_column(table)
        shown = [c for c in tables.columns[table] if c not in _CONTENT_COLUMNS]
        select = ", ".join(quote(c) for c in shown)
        for record in _lookup(connection, table, key, ids, select):
            rows[record.pop(key)].notes.append({"table": table, "removed_at": STOPPED_AT.get(table), **record})
    return rows


def resolve(
    connection: duckdb.DuckDBPyConnection, tables: WarehouseTables, key: str
) -> tuple[str | None, list[dict[str, Any]]]:
    """The row id a query names: a row id, or a ``file#record`` source_uri (which may name a
    quarantined record). Returns (row_id or None, quarantine records)."""
    key = key.strip()
    keyed = [(t, "row_id") for t in tables.datasets] + [("lineage", "child_id"), ("dedup_clusters", "row_id")]
    keyed += [(t, tables.key_column(t)) for t in tables.notes]
    # One query: its branches probe their indexes in parallel (see _datasets_holding).
    branches = [
        f"(SELECT 1 FROM {quote(table)} WHERE {quote(column)} = $key LIMIT 1)"
        for table, column in keyed
        if tables.has(table)
    ]
    if (
        branches
        and connection.execute(f"SELECT 1 FROM ({' UNION ALL '.join(branches)}) LIMIT 1", {"key": key}).fetchall()
    ):
        return key, []
    if "raw" in tables.datasets:
        matches = [
            r[0]
            for r in connection.execute(
                "SELECT row_id FROM raw WHERE source_uri = ? OR source_uri LIKE ? ORDER BY source_uri LIMIT 10",
                [key, key.replace("%", "\\%") + "/%"],
            ).fetchall()
        ]
        if len(matches) == 1:
            return matches[0], []
        if matches:
            raise RowNotFound(
                f"{key!r} names several rows (a multi-row record): {', '.join(matches)}; audit one of these row ids"
            )
    if tables.has("quarantine"):
        cursor = connection.execute(
            "SELECT source, source_uri, file, record_no, line_no, error, ingested_at "
            "FROM quarantine WHERE source_uri = ? ORDER BY record_no",
            [key],
        )
        names = [d[0] for d in cursor.description]
        found = [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
        if found:
            return None, found
    looked = ", ".join([*tables.datasets, "lineage", "dedup_clusters", *tables.notes, "quarantine"])
    raise RowNotFound(
        f"no row {key!r} in the warehouse (looked in {looked}); give a row_id or a source_uri like file.jsonl#12"
    )


def audit_row(connection: duckdb.DuckDBPyConnection, key: str, limit: int = MAX_ROWS) -> Audit:
    """The audit of the row ``key`` (a row id, or the ``file#record`` it was read from)."""
    tables = discover(connection)
    row_id, quarantined = resolve(connection, tables, key)
    if row_id is None:
        return Audit(key, None, {}, [], [], quarantined)
    upstream, cut_up = _walk(connection, tables, row_id, up=True, limit=limit)
    downstream, cut_down = _walk(connection, tables, row_id, up=False, limit=limit)
    ids = {row_id} | {e.parent_id for e in upstream} | {e.child_id for e in upstream}
    ids |= {e.parent_id for e in downstream} | {e.child_id for e in downstream}
    return Audit(key, row_id, _describe(connection, tables, ids), upstream, downstream, truncated=cut_up or cut_down)


# --- rendering ---------------------------------------------------------------------------------


def row_status(audit: Audit, row_id: str) -> str:
    row = audit.rows.get(row_id)
    if row is None:
        return "unknown"
    if row.stopped:
        note = row.stopped[0]
        why = note.get("reason") or note.get("error") or ""
        label = note.get("filter") or note.get("stage") or note.get("benchmark") or note.get("method") or ""
        return f"stopped at {note['removed_at']} ({note['table']}: {label}{' - ' if label and why else ''}{why})"
    absorbed = [e for e in audit.downstream if e.parent_id == row_id and e.relation == "absorbed"]
    if absorbed:
        return f"removed at deduped as a duplicate of {absorbed[0].child_id} ({absorbed[0].operation})"
    if row.tables and row.tables[-1] == "formatted":
        split = row.info.get("split")
        return "in formatted" + (f" (split {split})" if split else "")
    children = [e for e in audit.downstream if e.parent_id == row_id and e.relation == "derived"]
    replaced = [e for e in children if e.asset not in ("synthetic",)]
    if replaced:
        return f"continued as {replaced[0].child_id} ({replaced[0].operation} in {replaced[0].asset})"
    if row.tables:
        return f"last in {row.tables[-1]}"
    return "only in lineage (its tables were rebuilt since)"


def _row_line(row: AuditedRow | None, row_id: str) -> str:
    if row is None or not row.tables:
        return f"{row_id}  [in no dataset table]"
    info = row.info
    parts = [row_id, f"[{', '.join(row.tables)}]"]
    parts += [f"{info.get('kind') or '?'}", f"origin {info.get('origin') or '?'}"]
    if info.get("source"):
        parts.append(f"source {info['source']} {info.get('source_uri') or ''}".rstrip())
    parts.append(f"licence {info.get('license') or 'missing'}")
    if info.get("generator"):
        parts.append(f"generator {info['generator']}")
    if info.get("annotator"):
        parts.append(f"annotator {info['annotator']}")
    if info.get("template_id"):
        parts.append(
            f"split {info.get('split')}, template {info['template_id']}, tokenizer "
            f"{info.get('tokenizer_id')}, {info.get('n_tokens')} tokens"
        )
    return "  ".join(parts)


def _provenance_lines(provenance: dict[str, Any]) -> list[str]:
    p = provenance
    lines = [
        f"generated by {p.get('teacher_model')} rev {p.get('teacher_revision') or '-'} "
        f"({p.get('teacher_backend')}, licence {p.get('teacher_license') or 'not declared'}, "
        f"terms {p.get('teacher_terms') or '-'})"
        f" via {p.get('method')}"
    ]
    lines.append(f"template {p.get('prompt_template') or '-'}  params {json.dumps(p.get('generation_params'))}")
    if p.get("judge_model") or p.get("judge_score") is not None:
        lines.append(
            f"judged by {p.get('judge_model')} with score {p.get('judge_score')} "
            f"(rev {p.get('judge_revision') or '-'}, licence {p.get('judge_license') or 'not declared'}, "
            f"terms {p.get('judge_terms') or '-'})"
        )
    if p.get("verification"):
        lines.append(f"verification {json.dumps(p['verification'], ensure_ascii=False)}")
    return lines


def _note_line(note: dict[str, Any]) -> str:
    fields = {k: v for k, v in note.items() if k not in ("table", "removed_at") and v is not None}
    return f"{note['table']}: " + ", ".join(f"{k}={v}" for k, v in fields.items())


def render_text(audit: Audit) -> str:
    """The audit as an indented tree: the row, then each parent under the operation that made it."""
    if audit.row_id is None:
        lines = [f"{audit.query}: never became a row"]
        lines += [f"  quarantined ({q['source']}, line {q.get('line_no')}): {q['error']}" for q in audit.quarantine]
        return "\n".join(lines)
    lines = [f"Row {audit.row_id}: {audit.status()}", ""]
    printed: set[str] = set()

    def emit(row_id: str, depth: int) -> None:
        pad = "  " * depth
        row = audit.rows.get(row_id)
        if row_id in printed:
            lines.append(f"{pad}{row_id} (shown above)")
            return
        printed.add(row_id)
        lines.append(pad + _row_line(row, row_id))
        if row and row.provenance:
            lines.extend(f"{pad}    {line}" for line in _provenance_lines(row.provenance))
        for note in row.notes if row else []:
            lines.append(f"{pad}    {_note_line(note)}")
        for edge in audit.parents(row_id):
            verb = "absorbed duplicate" if edge.relation == "absorbed" else "from"
            lines.append(
                f"{pad}  <- {edge.operation} in {edge.asset}{': ' + edge.detail if edge.detail else ''} ({verb})"
            )
            emit(edge.parent_id, depth + 2)

    lines.append("Chain (the row, then what it was made from):")
    emit(audit.row_id, 1)
    if audit.downstream:
        lines += ["", "What it became:"]
        for edge in audit.downstream:
            lines.append(
                f"  {edge.parent_id} -> {edge.child_id}  {edge.operation} in {edge.asset}: "
                f"{row_status(audit, edge.child_id)}"
            )
    lines += ["", "Origins:"]
    lines += [
        f"  {r.row_id}  {r.info.get('source')}  {r.info.get('source_uri')}  {r.info.get('license')}"
        for r in audit.origins()
    ] or ["  (none: generated from scratch)"]
    lines.append(f"Licences on the chain: {', '.join(audit.licenses()) or '-'}")
    lines.append(f"Models on the chain: {', '.join(audit.teachers()) or '-'}")
    if audit.truncated:
        lines.append(f"(walk stopped after {MAX_ROWS} rows; use --json for what was found)")
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value
