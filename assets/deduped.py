"""deduped: one row per group of duplicates (exact, near, same prompt); every removed row points to the row
it duplicates in `dedup_clusters`, with the verified similarity and why that row was kept."""

from collections import Counter

import numpy as np
import pyarrow as pa
from dagster import AssetExecutionContext, DataVersion, MaterializeResult, MetadataValue, asset

from assets.metadata import dataset_metadata
from curation.core.markdown import counts_table, figure_png, markdown_table, png_markdown
from curation.core.provenance import LINEAGE_SCHEMA, lineage_record
from curation.core.schema import derived_id, rows_to_table
from curation.core.warehouse import LINEAGE_DDL, SOURCE_ORDER, canonical_ddl, table_names, table_rows
from curation.dedup.minhash import signature_bytes, signature_from_bytes
from curation.dedup.stages import clusters_table, config_from_settings, dedup_rows, with_license_note
from resources import ProjectResource, WarehouseResource
from resources.warehouse import POOL

CLUSTERS_DDL = ("cluster_id VARCHAR NOT NULL, row_id VARCHAR NOT NULL, kept_row_id VARCHAR NOT NULL, "
                "method VARCHAR NOT NULL, jaccard DOUBLE, matched_row_id VARCHAR, matched_jaccard DOUBLE, "
                "removed BOOLEAN NOT NULL, reason VARCHAR")
SIGNATURES_DDL = "signature_key VARCHAR PRIMARY KEY, signature BLOB NOT NULL, shingles BIGINT NOT NULL"


@asset(group_name="datasets", pool=POOL, deps=["raw"], kinds={"duckdb"}, code_version="deduped-1",
       owners=["team:data"])
def deduped(context: AssetExecutionContext, project: ProjectResource, warehouse: WarehouseResource
            ) -> MaterializeResult:
    """Raw rows without repeated paragraphs and boilerplate (edits → lineage), exact duplicates (normalised
    field set), near duplicates (MinHash LSH, verified by exact Jaccard) and conflicting answers to one prompt.
    Signatures persist in `dedup_signatures`, so unchanged rows are never MinHashed again."""
    settings = project.load().dedup
    config = config_from_settings(settings.exact_fields, settings.lowercase, settings.strip_punctuation,
                                  settings.near, settings.within, settings.boilerplate, settings.conflicts)
    with warehouse.get().write("deduped") as staged:
        connection = staged.connection
        known = {}
        if "dedup_signatures" in table_names(connection) and config.near is not None:
            known = {key: (signature_from_bytes(blob, config.near.num_perm), shingles) for key, blob, shingles
                     in connection.execute("SELECT signature_key, signature, shingles FROM dedup_signatures"
                                           ).fetchall()}
        rows = list(table_rows(connection, "raw", order_by=SOURCE_ORDER))  # ties go to the earlier record
        result = dedup_rows(rows, config, known)
        context.log.info(f"deduped: {len(result.kept)} of {len(rows)} rows kept; MinHash computed for "
                         f"{result.signatures_computed} texts, {len(known)} signatures reused")

        by_id = {r["row_id"]: r for r in rows}
        edited = {e.row_id for e in result.edits}
        kept, edges = [], []
        for row in result.kept:
            row = with_license_note(row, result.members, by_id)
            if row["row_id"] in edited:  # text changed: a new id, and the edge says what was removed
                parent = row["row_id"]
                row = {**row, "row_id": derived_id(row, parent)}
                removed = [e for e in result.edits if e.row_id == parent]
                edges.append(lineage_record(row["row_id"], parent, "deduped", "dedup:" + ",".join(
                    sorted({e.operation for e in removed})), "; ".join(f"{e.location}: removed {e.operation} "
                                                                        f"{e.removed[:60]!r}" for e in removed)))
            kept.append(row)
        staged.append(staged.create("deduped", canonical_ddl()), rows_to_table(kept))
        staged.append(staged.create("dedup_clusters", CLUSTERS_DDL), clusters_table(result.members))
        staged.append_rows(staged.partition("lineage", LINEAGE_DDL), edges, LINEAGE_SCHEMA)
        signatures = staged.create("dedup_signatures", SIGNATURES_DDL)
        if result.signatures is not None:
            unique = dict(zip(result.signature_keys, range(len(result.signature_keys)), strict=True))
            staged.append(signatures, pa.table({
                "signature_key": list(unique),
                "signature": [signature_bytes(result.signatures[i]) for i in unique.values()],
                "shingles": [int(result.shingle_counts[i]) for i in unique.values()]}))
        metadata = dataset_metadata(connection, staged.staging_name("deduped"), parents=["raw"])

    removed = [m for m in result.members if m.removed]
    by_method = Counter(m.method for m in removed)
    by_source = Counter(by_id[m.row_id]["source"] for m in removed)
    sizes = Counter(m.cluster_id for m in result.members)
    largest = sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    metadata |= {
        "dagster/table_name": "warehouse.main.deduped",
        "removed": len(removed), "edited_rows": len(edited),
        "flagged_not_removed": sum(1 for m in result.members if not m.removed and m.row_id != m.kept_row_id),
        "minhash_computed": result.signatures_computed, "signatures_reused": len(known),
        "removed_by_method": MetadataValue.md(counts_table(dict(by_method), "method")),
        "removed_by_source": MetadataValue.md(counts_table(dict(by_source), "source")),
        "largest_clusters": MetadataValue.md(_largest_clusters(result.members, by_id, largest)),
        "cluster_sizes": MetadataValue.md(_histogram(list(sizes.values()))),
        "parameters": MetadataValue.json({
            "exact_fields": settings.exact_fields, "lowercase": settings.lowercase,
            "strip_punctuation": settings.strip_punctuation,
            "near": None if config.near is None else {
                "threshold": config.near.threshold, "lsh_threshold": config.near.lsh_threshold,
                "num_perm": config.near.num_perm, "bands_rows": list(config.near.params), "seed": config.near.seed,
                "shingles": f"{config.near.shingles.unit} {config.near.shingles.n}-grams",
                "fields": config.near.fields},
            "conflicts": config.conflicts.mode}),
    }
    return MaterializeResult(metadata=metadata, data_version=DataVersion(metadata["data_version"]))


def _largest_clusters(members, by_id: dict, largest: list[tuple[str, int]]) -> str:
    rows = []
    for cluster_id, size in largest:
        for member in (m for m in members if m.cluster_id == cluster_id):
            row = by_id[member.row_id]
            first = next((m.get("content") for m in row.get("messages") or [] if m.get("role") == "user"), None)
            rows.append({"cluster": cluster_id[:40], "size": size, "row_id": member.row_id,
                         "kept": "✓" if not member.removed else "", "jaccard": round(member.jaccard, 3),
                         "source": row["source"], "license": row["license"], "prompt": first or row.get("text")})
    return markdown_table(rows, width=50)


def _histogram(sizes: list[int]) -> str:
    """Cluster-size histogram as a PNG inside Markdown (the UI shows it inline)."""
    if not sizes:
        return "_no clusters_"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3))
    bins = np.arange(2, max(sizes) + 2) - 0.5
    axis.hist(sizes, bins=bins, color="#4f6bed")
    axis.set_xlabel("rows per cluster")
    axis.set_ylabel("clusters")
    axis.set_title("Duplicate cluster sizes")
    return png_markdown(figure_png(figure, dpi=100), "cluster sizes")
