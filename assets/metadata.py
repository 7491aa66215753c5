"""Metadata every dataset asset reports, so the Dagster UI shows schema, counts, lineage and data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
from curation.core.parallel import engine_description
from curation.core.schema import COLUMN_SPECS, COLUMNS
from curation.core.warehouse import (
    StagedWrite,
    content_hash,
    count_by,
    count_rows,
    sample_records,
    table_columns,
)

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


@dataclass(frozen=True)
class ColumnDep:
    """One column of a parent dataset that a column is made from. ``copied``: the value is that column of
    the parent row, unchanged (the row a row comes from: same ``row_id``, its ``lineage`` edge, or
    ``formatted.parent_id``); the pipeline tests check every copied dependency against a demo run."""

    asset: str
    column: str
    copied: bool = False


def _copied(parent: str, columns: Sequence[str]) -> dict[str, tuple[ColumnDep, ...]]:
    return {column: (ColumnDep(parent, column, copied=True),) for column in columns}


def _made_from(parent: str, *columns: str) -> tuple[ColumnDep, ...]:
    return tuple(ColumnDep(parent, column) for column in columns)


_CONTENT = ("kind", "messages", "chosen", "rejected", "score", "text")
"""What a derived row id hashes besides its parent's id (:func:`curation.core.schema.derived_id`)."""
_RENDERED = ("kind", "messages", "chosen", "rejected", "text")
"""What the chat template renders (:mod:`curation.format.render`)."""
_PASSED_ON = ("kind", "score", "source", "source_uri", "license", "origin", "generator", "annotator", "ingested_at")
"""Columns dedup and the filters pass on as they are."""

COLUMN_LINEAGE: Mapping[str, Mapping[str, tuple[ColumnDep, ...]]] = {
    # Edited rows (repeats, boilerplate removed) get an id derived from the parent's and the new content;
    # a kept row lists the copies it absorbed (their id, source, licence, place) in extra.dedup_sources.
    "deduped": {
        "row_id": _made_from("raw", "row_id", *_CONTENT),
        **{column: _made_from("raw", column) for column in ("messages", "chosen", "rejected", "text")},
        "extra": _made_from("raw", "extra", "row_id", "source", "license", "source_uri"),
        **_copied("raw", _PASSED_ON),
    },
    # Cleaners edit the texts in place; an edited row gets a derived id.
    "filtered": {
        "row_id": _made_from("deduped", "row_id", *_CONTENT),
        **{column: _made_from("deduped", column) for column in ("messages", "chosen", "rejected", "text")},
        **_copied("deduped", (*_PASSED_ON, "extra")),
    },
    # From seed rows where a method has them (templates and code problems have none). `generator` and `origin`
    # name the teacher and the method, not a column: no dependency. Perturbation and reverse instruction keep
    # the seed's kind, source, place, annotator and extra; the licence combines the seeds' with the teacher's.
    "synthetic": {
        "row_id": _made_from("filtered", "row_id", "messages"),
        "messages": _made_from("filtered", "messages", "text"),
        "chosen": _made_from("filtered", "messages"),
        "rejected": _made_from("filtered", "messages"),
        "license": _made_from("filtered", "license"),
        "extra": _made_from("filtered", "extra"),
        **{column: _made_from("filtered", column) for column in ("kind", "source", "source_uri", "annotator")},
    },
    # Real rows and accepted synthetic rows, each unchanged.
    "synthetic_mixed": {
        column: (ColumnDep("filtered", column, copied=True), ColumnDep("synthetic", column, copied=True))
        for column in COLUMNS
    },
    # A formatted row is its input row rendered: a new id, the input's id in parent_id.
    "formatted": {
        "row_id": _made_from("synthetic_mixed", "row_id"),
        "parent_id": (ColumnDep("synthetic_mixed", "row_id", copied=True),),
        "messages": _made_from("synthetic_mixed", "messages"),  # as rendered: system prompt, dropped turns
        "split": _made_from("synthetic_mixed", "row_id", "kind", "source"),
        "subset": _made_from("synthetic_mixed", "row_id"),
        **{
            column: _made_from("synthetic_mixed", *_RENDERED)
            for column in (
                "text",
                "prompt_text",
                "chosen_text",
                "rejected_text",
                "n_tokens",
                "input_ids",
                "assistant_mask",
                "mask_source",
                "truncation",
                "round_trip",
                "generation_prompt_ok",
            )
        },
        **_copied("synthetic_mixed", ("chosen", "rejected", "extra", *_PASSED_ON)),
    },
}
"""Where each column of each dataset comes from, as each stage makes it; a column left out has no parent
column (``raw``'s come from files, ``template_id`` from the tokenizer, ``synthetic.generator`` from the
teacher). Reported as ``dagster/column_lineage``."""


def column_lineage(asset: str, parents: Sequence[str]) -> TableColumnLineage | None:
    """:data:`COLUMN_LINEAGE` of ``asset`` over the ``parents`` its caller reads (None when none is declared)."""
    declared = {
        column: [TableColumnDep(asset_key=AssetKey(d.asset), column_name=d.column) for d in deps if d.asset in parents]
        for column, deps in COLUMN_LINEAGE.get(asset, {}).items()
    }
    deps_by_column = {column: deps for column, deps in declared.items() if deps}
    return TableColumnLineage(deps_by_column=deps_by_column) if deps_by_column else None


def dataset_metadata(staged: StagedWrite, dataset: str, parents: Sequence[str] = ()) -> dict[str, Any]:
    """Row count, schema, data version (:meth:`StagedWrite.data_version`), column lineage, breakdowns and a
    preview for the canonical dataset table an asset has staged, once its rows are all written. ``parents``:
    the assets it is made from; the column lineage reported is what :data:`COLUMN_LINEAGE` declares for the
    table over those."""
    connection = staged.connection
    table = staged.staging_name(dataset)
    rows = count_rows(connection, table)
    metadata: dict[str, Any] = {
        "dagster/row_count": int(rows),
        "dagster/table_name": f"warehouse.main.{dataset}",
        "dagster/column_schema": table_schema(connection, table),
        "data_version": staged.data_version(dataset),
        # Where the row-wise work ran (the dataset is the same on either engine; the timing is not).
        "compute": engine_description(),
    }
    lineage = column_lineage(dataset, parents)
    if lineage is not None:
        metadata["dagster/column_lineage"] = lineage
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


def reported_data_version(instance: DagsterInstance, connection: duckdb.DuckDBPyConnection, asset: str) -> str:
    """:func:`latest_data_version` of ``asset``, hashed from its table only when it never reported one (a
    copied warehouse): hashing a million rendered rows again costs ~6 s."""
    return latest_data_version(instance, asset) or content_hash(connection, asset)
