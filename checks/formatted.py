"""Blocking checks on `formatted`, the data that goes to training: token budget, contamination, split
disjointness at cluster level, the template round trip and the loss masks. Each verifies what the asset
recorded in SQL, over every row, and where independence needs a second computation (re-rendering,
re-scanning against the benchmarks) repeats it on a fixed sample of rows, whatever the table's size; the
metadata says how many."""

from collections import Counter

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetChecksDefinition, MetadataValue, asset_check

from curation.core.home import exports_dir
from curation.core.markdown import markdown_table
from curation.core.warehouse import count_rows, fetch_one, sample_sql, table_names
from curation.format.decontam import check_row, index_for
from curation.format.export import ROTATION_BYTES, verify_published
from curation.format.render_checks import MASKED_KINDS, stored_tokens_problem, verify_rows
from curation.format.split import split_leaks
from curation.format.stage import load_benchmarks
from curation.format.table import iter_formatted_rows
from resources import ProjectResource, WarehouseResource
from resources.tokenizer import TokenizerResource
from resources.warehouse import POOL

_SAMPLE = 10  # failing rows shown in the check's metadata
RESCANNED_ROWS = 2_000
"""Rows the contamination and round-trip checks compute again from scratch (the same rows every run)."""
COUNTED_ROWS = 100_000
"""Rows whose token ids and loss-mask entries are counted again against ``n_tokens`` (the same rows every run):
parsing every row's two JSON lists took 2.4 s of a 1M-row run, the budget over every row's count 0.1 s."""


_NO_LOSS_TOKEN = (
    f"kind IN ({', '.join(repr(kind) for kind in MASKED_KINDS)}) AND NOT coalesce(contains(assistant_mask, '1'), false)"
)
"""An sft/chat row with no 1 in its ``assistant_mask`` (a JSON list of 0/1, so a text search is exact and
spares parsing a million lists): nothing to learn from it; the asset rejects such a row (``loss_mask``), so
none should be stored."""


def _sampled(scanned: int, total: int) -> str:
    return f"sampled {scanned} of {total}" if scanned < total else f"all {total}"


@asset_check(
    asset="formatted",
    name="every_row_within_token_budget",
    blocking=True,
    pool=POOL,
    description="Every formatted row has a token count within format.max_tokens, and for rows with "
    f"token ids the count is the number of ids and of loss-mask entries (on a sample of {COUNTED_ROWS:,} rows).",
)
def formatted_within_token_budget(
    context: AssetCheckExecutionContext, project: ProjectResource, warehouse: WarehouseResource
) -> AssetCheckResult:
    budget = project.load().format.max_tokens
    with warehouse.get().connect() as connection:
        over, missing, longest, p50, p90, p99, rows = fetch_one(
            connection,
            "SELECT count(*) FILTER (n_tokens > ?), count(*) FILTER (n_tokens IS NULL), max(n_tokens), "
            "quantile_disc(n_tokens, 0.5), quantile_disc(n_tokens, 0.9), quantile_disc(n_tokens, 0.99), count(*) "
            "FROM formatted",
            [budget],
        )
        counted_rows = sample_sql(
            "formatted", COUNTED_ROWS, columns=("kind", "n_tokens", "input_ids", "assistant_mask")
        )
        miscounted, counted = fetch_one(
            connection,
            "SELECT count(*) FILTER (kind <> 'preference' AND (json_array_length(input_ids) <> n_tokens "
            f"OR json_array_length(assistant_mask) <> n_tokens OR input_ids IS NULL)), count(*) FROM ({counted_rows})",
        )
        worst = connection.execute(
            "SELECT row_id, kind, n_tokens, truncation FROM formatted WHERE n_tokens > ? OR n_tokens IS NULL "
            "ORDER BY n_tokens DESC NULLS FIRST LIMIT ?",
            [budget, _SAMPLE],
        ).fetchall()
    return AssetCheckResult(
        passed=over == 0 and missing == 0 and miscounted == 0,
        metadata={
            "rows": int(rows),
            "max_tokens": budget,
            "over_budget": int(over),
            "without_count": int(missing),
            "count_differs_from_ids_or_mask": int(miscounted),
            "ids_and_mask_counted": _sampled(int(counted), int(rows)),
            "longest": int(longest or 0),
            "tokens_p50": int(p50 or 0),
            "tokens_p90": int(p90 or 0),
            "tokens_p99": int(p99 or 0),
            "over_budget_sample": MetadataValue.md(
                markdown_table([{"row_id": r, "kind": k, "n_tokens": n, "truncation": t} for r, k, n, t in worst])
            ),
        },
    )


@asset_check(
    asset="formatted",
    name="no_contamination_left",
    blocking=True,
    pool=POOL,
    description="No row flagged in `contamination` is still in `formatted`, every decontamination rejection "
    "has its benchmark matches recorded, and scanning a fixed sample of formatted rows again against the "
    "configured benchmarks finds no match (exact or n-gram).",
)
def formatted_no_contamination_left(
    context: AssetCheckExecutionContext, project: ProjectResource, warehouse: WarehouseResource
) -> AssetCheckResult:
    config = project.load()
    items = load_benchmarks(config)
    settings = config.format.decontamination
    index = index_for(items, settings) if items else None
    found, scanned = [], 0
    with warehouse.get().connect() as connection:
        (flagged_left,) = fetch_one(
            connection, "SELECT count(*) FROM formatted f JOIN contamination c ON c.row_id = f.parent_id"
        )
        (removed,) = fetch_one(connection, "SELECT count(DISTINCT row_id) FROM contamination")
        (unexplained,) = fetch_one(
            connection,
            "SELECT count(*) FROM format_rejections r WHERE stage = 'decontamination' "
            "AND NOT EXISTS (SELECT 1 FROM contamination c WHERE c.row_id = r.row_id)",
        )
        total = count_rows(connection, "formatted")
        if index is not None:
            for row in iter_formatted_rows(connection, sample=RESCANNED_ROWS):
                scanned += 1
                for match in check_row(row, index, settings.fields):
                    found.append(
                        {
                            "row_id": row["row_id"],
                            "benchmark": match.benchmark,
                            "item_id": match.item_id,
                            "kind": match.kind,
                            "ratio": round(match.ratio, 3),
                        }
                    )
    return AssetCheckResult(
        passed=flagged_left == 0 and unexplained == 0 and not found,
        metadata={
            "benchmarks": [b.name for b in config.format.benchmarks],
            "benchmark_items": len(items),
            "fields": settings.fields,
            "rows_scanned": scanned,
            "rescanned": _sampled(scanned, total) if index is not None else "no benchmarks configured",
            "matches_left": len(found),
            "flagged_rows_left": int(flagged_left),
            "rejections_without_matches": int(unexplained),
            "contaminated_rows_removed": int(removed),
            "matches_sample": MetadataValue.md(markdown_table(found[:_SAMPLE])),
        },
    )


@asset_check(
    asset="formatted",
    name="splits_disjoint_by_cluster",
    blocking=True,
    pool=POOL,
    description="No near-duplicate cluster and no common ancestor (lineage) is shared by a train row "
    "and an eval row: derived rows and near-duplicates never straddle the split.",
)
def formatted_splits_disjoint(context: AssetCheckExecutionContext, warehouse: WarehouseResource) -> AssetCheckResult:
    with warehouse.get().connect() as connection:
        splits = dict(connection.execute("SELECT split, count(*) FROM formatted GROUP BY 1 ORDER BY 1").fetchall())
        (edges,) = fetch_one(connection, "SELECT count(*) FROM lineage WHERE asset <> 'formatted'")
        members = count_rows(connection, "dedup_clusters") if "dedup_clusters" in table_names(connection) else 0
        leaks, sample = split_leaks(connection, "formatted", _SAMPLE)
    return AssetCheckResult(
        passed=leaks == 0,
        metadata={
            "rows": sum(splits.values()),
            "rows_by_split": MetadataValue.json(splits),
            "lineage_edges": int(edges),
            "cluster_members": members,
            "shared_across_splits": leaks,
            "leaks_sample": MetadataValue.md(markdown_table(sample)),
        },
    )


@asset_check(
    asset="formatted",
    name="round_trip_ok",
    blocking=True,
    pool=POOL,
    description="Every formatted row recorded a passed round trip and a generation prompt that matches; on "
    "a fixed sample, rendered again: no control token of the template inside message content, rendering "
    "then parsing back gives the messages, the generation prompt is exactly what precedes the reply (what "
    "inference will send), the stored token ids decode to the stored text, and (sft/chat) the tokens under the loss "
    "mask decode to each assistant content plus the template's end-of-turn marker. Over every row: each sft/chat "
    "row has at least one loss token.",
)
def formatted_round_trip_ok(
    context: AssetCheckExecutionContext,
    project: ProjectResource,
    warehouse: WarehouseResource,
    tokenizer: TokenizerResource,
) -> AssetCheckResult:
    target = tokenizer.load(project.load())
    failures: Counter[str] = Counter()
    sample: list[dict[str, str]] = []

    def failed(row_id: str, kind: str, name: str, detail: str, rows: int = 1) -> None:
        failures[name] += rows
        if len(sample) < _SAMPLE:
            sample.append({"row_id": row_id, "kind": kind, "problem": name, "detail": detail})

    with warehouse.get().connect() as connection:
        levels = dict(connection.execute("SELECT round_trip, count(*) FROM formatted GROUP BY 1 ORDER BY 1").fetchall())
        # What the asset recorded for every row (it rejects a failed round trip, so none should be stored).
        recorded = {
            "recorded_round_trip": "round_trip IS NULL OR NOT starts_with(round_trip, 'ok')",
            "recorded_generation_prompt": "generation_prompt_ok = false",
            "no_loss_token": _NO_LOSS_TOKEN,
        }
        for name, condition in recorded.items():
            found = connection.execute(
                f"SELECT row_id, kind, round_trip, count(*) OVER () FROM formatted WHERE {condition} "
                "ORDER BY row_id LIMIT 1"
            ).fetchall()
            for row_id, kind, round_trip, rows in found:
                detail = (
                    "no 1 in assistant_mask" if name == "no_loss_token" else f"round trip recorded as {round_trip!r}"
                )
                failed(row_id, kind, name, detail, rows=int(rows))
        total = count_rows(connection, "formatted")
        sampled = list(iter_formatted_rows(connection, sample=RESCANNED_ROWS))
        for row, verification in zip(sampled, verify_rows(sampled, target), strict=True):
            if verification.leaked_tokens:
                failed(row["row_id"], row["kind"], "special_tokens_in_content", ", ".join(verification.leaked_tokens))
            if not verification.round_trip_passed:
                failed(row["row_id"], row["kind"], "round_trip", verification.round_trip)
            if verification.generation_prompt_ok is False:
                failed(
                    row["row_id"],
                    row["kind"],
                    "generation_prompt",
                    "render(history, add_generation_prompt=True) is not what precedes the reply in "
                    "render(history + reply)",
                )
            stored = stored_tokens_problem(row, target)
            if stored:
                failed(row["row_id"], row["kind"], "stored_tokens", stored)
            # Compared only once the tokens decode to the text and the messages are what was rendered (the
            # stage's order too): otherwise the mask problem is a consequence of the one already reported.
            clean = not stored and verification.round_trip_passed and not verification.leaked_tokens
            if verification.loss_mask and clean:
                failed(row["row_id"], row["kind"], "loss_mask", verification.loss_mask)
    return AssetCheckResult(
        passed=not failures,
        metadata={
            "rows": total,
            "rendered_again": _sampled(len(sampled), total),
            "failures": MetadataValue.json(dict(failures)),
            "round_trip_levels": MetadataValue.json({str(level): int(n) for level, n in levels.items()}),
            "tokenizer": target.name_or_path,
            "failures_sample": MetadataValue.md(markdown_table(sample)),
        },
    )


@asset_check(
    asset="exports",
    name="published_versions_unchanged",
    description="Every export folder still matches its manifest (file hashes, data version = folder name): "
    "a published data version was never edited in place. A file whose size and times are those it had when it "
    "last matched is not hashed again, except in rotation: each check hashes again up to "
    f"{ROTATION_BYTES >> 20} MiB of files, those hashed longest ago first.",
)
def exports_unchanged(context: AssetCheckExecutionContext) -> AssetCheckResult:
    root = exports_dir()
    found = verify_published(root)
    return AssetCheckResult(
        passed=not found.problems,
        metadata={
            "exports_dir": str(root),
            "versions": found.versions,
            "files_hashed": found.files_hashed,
            "files_hashed_in_rotation": found.files_rotated,
            "files_unchanged_since_hashed": found.files_trusted,
            "bytes_hashed": found.bytes_hashed,
            "checks_since_oldest_hash": found.checks_since_oldest_hash,
            "problems": MetadataValue.md(markdown_table(found.problems[:_SAMPLE])),
        },
    )


FORMATTED_CHECKS: list[AssetChecksDefinition] = [
    formatted_within_token_budget,
    formatted_no_contamination_left,
    formatted_splits_disjoint,
    formatted_round_trip_ok,
    exports_unchanged,
]
