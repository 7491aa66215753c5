"""formatted: rows rendered with the target model's tokenizer and chat template, decontaminated against
the benchmarks, split into train/eval and tagged with nested subsets."""

import pyarrow as pa
from dagster import AssetExecutionContext, DataVersion, MaterializeResult, MetadataValue, asset

from assets.metadata import dataset_metadata
from curation.chat_format import format_row, load_tokenizer
from curation.decontam import (
    ContaminationIndex,
    FlaggedRow,
    check_row,
    contamination_report,
    load_benchmark,
    render_report_markdown,
)
from curation.formatting import (
    CONTAMINATION_DDL,
    FORMAT_REJECTIONS_DDL,
    FORMATTED_COLUMNS,
    formatted_record,
    root_ancestors,
    split_groups,
)
from curation.markdown import counts_table
from curation.provenance import LINEAGE_SCHEMA, lineage_record
from curation.split import assign_splits, nested_subsets
from curation.warehouse import LINEAGE_DDL, canonical_ddl, quote, table_rows
from resources import ProjectResource, WarehouseResource
from resources.warehouse import POOL


@asset(group_name="datasets", pool=POOL, deps=["synthetic_mixed"], kinds={"duckdb"},
       code_version="formatted-1", owners=["team:data"])
def formatted(context: AssetExecutionContext, project: ProjectResource, warehouse: WarehouseResource
              ) -> MaterializeResult:
    """Training-ready rows: rendered text, token counts and assistant-only loss masks, split and subset.
    Rows over the token budget or unrenderable → `format_rejections`; benchmark matches → `contamination`."""
    config = project.load()
    settings = config.format
    local = config.resolve(settings.tokenizer)
    tokenizer = load_tokenizer(local if local.is_dir() else settings.tokenizer, settings.chat_template)
    benchmarks = [item for b in settings.benchmarks
                  for item in load_benchmark(config.resolve(b.path), b.name, b.text_fields, b.id_field)]
    index = ContaminationIndex(benchmarks) if benchmarks else None
    with warehouse.get().write("formatted") as staged:
        connection = staged.connection
        keys = connection.execute("SELECT row_id, kind, source FROM synthetic_mixed").fetchall()
        edges = connection.execute("SELECT child_id, parent_id FROM lineage WHERE asset IN ('filtered', 'synthetic')"
                                   ).fetchall() if "lineage" in _tables(connection) else []
        clusters = dict(connection.execute("SELECT row_id, cluster_id FROM dedup_clusters").fetchall()
                        ) if "dedup_clusters" in _tables(connection) else {}
        groups = split_groups([k[0] for k in keys], root_ancestors(edges), clusters)
        splits = assign_splits([{"row_id": r, "kind": k, "source": s} for r, k, s in keys], settings.eval_fraction,
                               settings.seed, group_key=groups)
        subsets = nested_subsets([k[0] for k in keys], seed=settings.seed)

        table = staged.create("formatted", canonical_ddl(FORMATTED_COLUMNS))
        rejections = staged.create("format_rejections", FORMAT_REJECTIONS_DDL)
        contamination = staged.create("contamination", CONTAMINATION_DDL)
        lineage = staged.partition("lineage", LINEAGE_DDL)
        flagged: list[FlaggedRow] = []
        records, edges_out, rejected = [], [], []
        for row in table_rows(connection, "synthetic_mixed"):
            matches = check_row(row, index) if index else []
            if matches:
                flagged.append(FlaggedRow(row["row_id"], row["source"], matches))
                rejected.append((row["row_id"], "decontamination", "matches a benchmark item",
                                 f"{matches[0].benchmark}:{matches[0].item_id}"))
                continue
            rendered, reason = format_row(row, tokenizer, max_tokens=settings.max_tokens,
                                          policy=settings.length_policy, system_prompt=settings.system_prompt)
            if rendered is None:
                rejected.append((row["row_id"], "length" if reason.startswith("dropped") else "render", reason, None))
                continue
            record = formatted_record(row, rendered, splits[row["row_id"]], subsets[row["row_id"]])
            records.append(record)
            edges_out.append(lineage_record(record["row_id"], row["row_id"], "formatted", "format",
                                            f"template {rendered.template_id}, {rendered.n_tokens} tokens"))
            if len(records) >= config.ingest.batch_rows:
                _flush(staged, table, records)
        _flush(staged, table, records)
        staged.append_rows(lineage, edges_out, LINEAGE_SCHEMA)
        for row_id, stage, reason, detail in rejected:
            connection.execute(f"INSERT INTO {rejections} VALUES (?, ?, ?, ?)", [row_id, stage, reason, detail])
        for item in flagged:
            for match in item.records():
                connection.execute(f"INSERT INTO {contamination} VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                   [match["row_id"], match.get("source"), match["benchmark"], match["item_id"],
                                    match["kind"], match["overlap"], match["ratio"], match["n"]])
        staging = staged.staging_name("formatted")
        metadata = dataset_metadata(connection, staging, parents=["synthetic_mixed"])
        split_counts = dict(connection.execute(f"SELECT split, count(*) FROM {quote(staging)} GROUP BY 1").fetchall())
        tokens = connection.execute(f"SELECT sum(n_tokens), max(n_tokens), avg(n_tokens) FROM {quote(staging)}"
                                    ).fetchone()
    report = contamination_report(flagged, index) if index else {}
    context.log.info(f"formatted: {len(keys) - len(rejected)} rows, {len(rejected)} rejected")
    metadata |= {
        "dagster/table_name": "warehouse.main.formatted",
        "tokenizer": tokenizer.name_or_path,
        "template_id": records[0]["template_id"] if records else "",
        "rows_rejected": len(rejected),
        "tokens_total": int(tokens[0] or 0), "tokens_max": int(tokens[1] or 0), "tokens_mean": float(tokens[2] or 0),
        "splits": MetadataValue.md(counts_table(split_counts, "split")),
        "contamination": MetadataValue.md(render_report_markdown(report) if report else "_no benchmarks configured_"),
    }
    return MaterializeResult(metadata=metadata, data_version=DataVersion(metadata["data_version"]))


def _tables(connection) -> set[str]:
    return {r[0] for r in connection.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()}


def _flush(staged, table: str, records: list[dict]) -> None:
    if records:
        staged.append(table, pa.Table.from_pylist(_encode(records)))
        records.clear()


def _encode(records: list[dict]) -> list[dict]:
    import json

    from curation.schema import JSON_COLUMNS
    return [{k: (json.dumps(v) if k in JSON_COLUMNS and v is not None and not isinstance(v, str) else v)
             for k, v in r.items()} for r in records]
