"""deduped: one row per group of duplicates; every removed row points to the row it duplicates."""

import pyarrow as pa
from dagster import AssetExecutionContext, DataVersion, MaterializeResult, MetadataValue, asset

from assets.metadata import dataset_metadata
from curation.markdown import counts_table
from curation.normalize import NormalizeOptions, normalize_text
from curation.schema import content_key, make_row_id
from curation.warehouse import canonical_ddl, table_rows
from resources import ProjectResource, WarehouseResource
from resources.warehouse import POOL

CLUSTERS_DDL = ("cluster_id VARCHAR NOT NULL, row_id VARCHAR NOT NULL, kept_row_id VARCHAR NOT NULL, "
                "method VARCHAR NOT NULL, jaccard DOUBLE, reason VARCHAR")
CLUSTERS_SCHEMA = pa.schema([("cluster_id", pa.string()), ("row_id", pa.string()), ("kept_row_id", pa.string()),
                             ("method", pa.string()), ("jaccard", pa.float64()), ("reason", pa.string())])


@asset(group_name="datasets", pool=POOL, deps=["raw"], kinds={"duckdb"}, code_version="deduped-0",
       owners=["team:data"])
def deduped(context: AssetExecutionContext, project: ProjectResource, warehouse: WarehouseResource
            ) -> MaterializeResult:
    """Raw rows without exact duplicates (normalised content). Removed rows → `dedup_clusters`."""
    config = project.load()
    options = NormalizeOptions(lowercase=config.dedup.lowercase, strip_punctuation=config.dedup.strip_punctuation)
    with warehouse.get().write("deduped") as staged:
        first: dict[str, str] = {}
        members: list[dict] = []
        for row in table_rows(staged.connection, "raw"):
            key = normalize_text(content_key(row), options)
            if key in first:
                members.append({"cluster_id": make_row_id("exact", key), "row_id": row["row_id"],
                                "kept_row_id": first[key], "method": "exact", "jaccard": 1.0,
                                "reason": "same normalised content"})
            else:
                first[key] = row["row_id"]
        clusters = staged.create("dedup_clusters", CLUSTERS_DDL)
        staged.append_rows(clusters, members, CLUSTERS_SCHEMA)
        table = staged.create("deduped", canonical_ddl())
        staged.connection.execute(f"INSERT INTO {table} SELECT * FROM raw WHERE row_id NOT IN "
                                  f"(SELECT row_id FROM {clusters})")
        metadata = dataset_metadata(staged.connection, staged.staging_name("deduped"), parents=["raw"])
    metadata |= {"dagster/table_name": "warehouse.main.deduped", "removed": len(members),
                 "removed_by_method": MetadataValue.md(counts_table({"exact": len(members)}, "method"))}
    return MaterializeResult(metadata=metadata, data_version=DataVersion(metadata["data_version"]))
