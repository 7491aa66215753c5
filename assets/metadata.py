"""Metadata every dataset asset reports, so the Dagster UI shows schema, counts, lineage and data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb
from dagster import (
    AssetKey,
    DagsterInstance,
    MetadataValue,
    TableColumn,
    TableColumnDep,
    TableColumnLineage,
    TableSchema,
)

from curation.core.markdown import counts_table, markdown_table
from curation.core.schema import COLUMN_SPECS
from curation.core.warehouse import content_hash, count_by, count_rows, sample_records, table_columns

PREVIEW_COLUMNS = ("row_id", "kind", "source", "license", "origin", "messages")
_DAGSTER_TYPES = {
    "VARCHAR": "string",
    "JSON": "json",
    "DOUBLE": "float",
    "TIMESTAMP": "timestamp",
    "BIGINT": "int",
    "INTEGER": "int",
    "BOOLEAN": "bool",
}


def table_schema(connection: duckdb.DuckDBPyConnection, table: str) -> TableSchema:
    """The table's real columns, described from the canonical spec where they are canonical."""
    descriptions = {name: description for name, _, description in COLUMN_SPECS}
    columns = table_columns(connection, table)
    return TableSchema(
        columns=[
            TableColumn(
                name=name, type=_DAGSTER_TYPES.get(sql_type, sql_type.lower()), description=descriptions.get(name)
            )
            for name, sql_type in columns
        ]
    )


def column_lineage(parents: Sequence[str], columns: Sequence[str] | None = None) -> TableColumnLineage:
    """Each canonical column of a derived dataset comes from the same column of its parents."""
    names = columns or [name for name, _, _ in COLUMN_SPECS]
    return TableColumnLineage(
        deps_by_column={
            name: [TableColumnDep(asset_key=AssetKey(parent), column_name=name) for parent in parents] for name in names
        }
    )


def dataset_metadata(
    connection: duckdb.DuckDBPyConnection,
    table: str,
    parents: Sequence[str] = (),
) -> dict[str, Any]:
    """Row count, schema, column lineage, breakdowns and a preview for a canonical dataset table."""
    rows = count_rows(connection, table)
    metadata: dict[str, Any] = {
        "dagster/row_count": int(rows),
        "dagster/table_name": f"warehouse.main.{table}",
        "dagster/column_schema": table_schema(connection, table),
        "data_version": content_hash(connection, table),
    }
    if parents:
        metadata["dagster/column_lineage"] = column_lineage(parents)
    summary = []
    for column in ("kind", "source", "license", "origin"):
        counts = count_by(connection, table, column)
        metadata[f"rows_by_{column}"] = MetadataValue.json(counts)
        summary.append(f"**by {column}**\n\n{counts_table(counts, column, rows)}")
    metadata["summary"] = MetadataValue.md("\n\n".join(summary))
    sample = sample_records(connection, table, PREVIEW_COLUMNS, limit=8)
    metadata["preview"] = MetadataValue.md(markdown_table(sample, width=60))
    return metadata


def latest_data_version(instance: DagsterInstance, asset: str) -> str:
    """The data version ``asset``'s latest materialization reported ("" before the first): what
    :func:`dataset_metadata` hashed, read back instead of hashing every row again."""
    event = instance.get_latest_materialization_event(AssetKey(asset))
    value = event.asset_materialization.metadata.get("data_version") if event and event.asset_materialization else None
    return str(value.value) if value is not None else ""
