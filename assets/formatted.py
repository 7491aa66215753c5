"""formatted: rows rendered with the target model's tokenizer and chat template, decontaminated against
the benchmarks, verified (control tokens, round trip, generation prompt), split into train/eval with
near-duplicates and derived rows kept together, and tagged with nested subsets."""


import pyarrow as pa
from dagster import AssetExecutionContext, DataVersion, MaterializeResult, MetadataValue, asset

from assets.metadata import dataset_metadata
from curation.core.markdown import counts_table
from curation.core.progress import reported
from curation.core.provenance import LINEAGE_SCHEMA, lineage_record
from curation.core.schema import COLUMNS, encode_row
from curation.core.warehouse import LINEAGE_DDL, canonical_ddl, quote, table_names, table_rows
from curation.format.decontam import (
    ContaminationIndex,
    FlaggedRow,
    check_row,
    contamination_report,
    load_benchmark,
    render_report_markdown,
)
from curation.format.records import (
    CONTAMINATION_DDL,
    FORMAT_REJECTIONS_DDL,
    FORMATTED_COLUMNS,
    formatted_record,
    split_groups,
    verify_row,
)
from curation.format.render import format_row
from curation.format.split import assign_splits, nested_subsets
from resources import ProjectResource, WarehouseResource
from resources.tokenizer import TokenizerResource
from resources.warehouse import POOL


@asset(group_name="datasets", pool=POOL, deps=["synthetic_mixed"], kinds={"duckdb"},
       code_version="formatted-2", owners=["team:data"])
def formatted(context: AssetExecutionContext, project: ProjectResource, warehouse: WarehouseResource,
              tokenizer: TokenizerResource) -> MaterializeResult:
    """Training-ready rows: rendered text, token ids, counts and assistant-only loss masks, split and subset.
    Benchmark matches, unrenderable or over-long rows, rows whose content holds control tokens and rows
    that do not survive a render/parse round trip → `format_rejections` with the reason."""
    config = project.load()
    settings = config.format
    tokenizer = tokenizer.load(config)
    benchmarks = [item for b in settings.benchmarks
                  for item in load_benchmark(config.resolve(b.path), b.name, b.text_fields, b.id_field)]
    index = ContaminationIndex(benchmarks) if benchmarks else None
    with warehouse.get().write("formatted") as staged:
        connection = staged.connection
        tables = table_names(connection)
        keys = connection.execute("SELECT row_id, kind, source FROM synthetic_mixed").fetchall()
        edges = connection.execute("SELECT child_id, parent_id FROM lineage WHERE asset <> 'formatted'").fetchall()
        clusters = dict(connection.execute("SELECT row_id, cluster_id FROM dedup_clusters").fetchall()
                        ) if "dedup_clusters" in tables else {}
        groups = split_groups([k[0] for k in keys], edges, clusters)
        splits = assign_splits([{"row_id": r, "kind": k, "source": s} for r, k, s in keys], settings.eval_fraction,
                               settings.seed, group_key=groups)
        subsets = nested_subsets([k[0] for k in keys], seed=settings.seed)

        table = staged.create("formatted", canonical_ddl(FORMATTED_COLUMNS))
        rejections = staged.create("format_rejections", FORMAT_REJECTIONS_DDL)
        contamination = staged.create("contamination", CONTAMINATION_DDL)
        lineage = staged.partition("lineage", LINEAGE_DDL)
        flagged: list[FlaggedRow] = []
        records, edges_out, rejected = [], [], []
        for row in reported(table_rows(connection, "synthetic_mixed"), context.log.info, "formatting", len(keys)):
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
            verification = verify_row(record, tokenizer)
            if verification.problem:
                stage, why = verification.problem
                rejected.append((row["row_id"], stage, why, ", ".join(verification.leaked_tokens) or None))
                continue
            record.update(round_trip=verification.round_trip, generation_prompt_ok=verification.generation_prompt_ok)
            records.append(record)
            edges_out.append(lineage_record(record["row_id"], row["row_id"], "formatted", "format",
                                            f"template {rendered.template_id}, {rendered.n_tokens} tokens"
                                            + (f"; {rendered.truncation}" if rendered.truncation else "")))
            if len(records) >= config.ingest.batch_rows:
                _flush(staged, table, records)
        _flush(staged, table, records)
        staged.append_rows(lineage, edges_out, LINEAGE_SCHEMA)
        if rejected:
            connection.executemany(f"INSERT INTO {rejections} VALUES (?, ?, ?, ?)", [list(r) for r in rejected])
        for item in flagged:
            for match in item.records():
                connection.execute(f"INSERT INTO {contamination} VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                   [match["row_id"], match.get("source"), match["benchmark"], match["item_id"],
                                    match["kind"], match["overlap"], match["ratio"], match["n"]])
        staging = quote(staged.staging_name("formatted"))
        metadata = dataset_metadata(connection, staged.staging_name("formatted"), parents=["synthetic_mixed"])
        split_counts = dict(connection.execute(f"SELECT split, count(*) FROM {staging} GROUP BY 1").fetchall())
        tokens = connection.execute(
            f"SELECT sum(n_tokens), max(n_tokens), avg(n_tokens), quantile_disc(n_tokens, 0.5), "
            f"quantile_disc(n_tokens, 0.9), count(*) FILTER (truncation IS NOT NULL), "
            f"any_value(template_id), any_value(tokenizer_id) FROM {staging}").fetchone()
        mask_sources = dict(connection.execute(f"SELECT mask_source, count(*) FROM {staging} GROUP BY 1").fetchall())
    by_stage: dict[str, int] = {}
    for _, stage, _, _ in rejected:
        by_stage[stage] = by_stage.get(stage, 0) + 1
    report = contamination_report(flagged, index) if index else {}
    context.log.info(f"formatted: {len(keys) - len(rejected)} rows, {len(rejected)} rejected {by_stage}")
    metadata |= {
        "dagster/table_name": "warehouse.main.formatted",
        "tokenizer": tokenizer.name_or_path,
        "tokenizer_id": tokens[7] or "",
        "template_id": tokens[6] or "",
        "max_tokens": settings.max_tokens,
        "length_policy": settings.length_policy,
        "rows_rejected": len(rejected),
        "rows_rejected_by_stage": MetadataValue.json(by_stage),
        "rows_truncated": int(tokens[5] or 0),
        "tokens_total": int(tokens[0] or 0), "tokens_max": int(tokens[1] or 0), "tokens_mean": float(tokens[2] or 0),
        "tokens_p50": int(tokens[3] or 0), "tokens_p90": int(tokens[4] or 0),
        "mask_sources": MetadataValue.json(mask_sources),
        "splits": MetadataValue.md(counts_table(split_counts, "split")),
        "contamination": MetadataValue.md(render_report_markdown(report) if report else "_no benchmarks configured_"),
    }
    return MaterializeResult(metadata=metadata, data_version=DataVersion(metadata["data_version"]))


def _flush(staged, table: str, records: list[dict]) -> None:
    if records:
        staged.append(table, pa.Table.from_pylist(_encode(records)))
        records.clear()


def _encode(records: list[dict]) -> list[dict]:
    """Canonical columns encoded like every other dataset table; the formatting columns as they are."""
    return [encode_row(r) | {k: v for k, v in r.items() if k not in COLUMNS} for r in records]
