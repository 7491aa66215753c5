"""Blocking checks on `formatted`, the data that goes to training: token budget, contamination, split
disjointness at cluster level and the template round trip. Each re-derives its answer from the stored
rows (and the project file's tokenizer and benchmarks) rather than trusting what the asset recorded."""

from collections import Counter

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetChecksDefinition, MetadataValue, asset_check

from curation.core.home import exports_dir
from curation.core.markdown import markdown_table
from curation.format.decontam import ContaminationIndex, check_row
from curation.format.export import MANIFEST, verify_export
from curation.format.render_checks import stored_tokens_problem, verify_row
from curation.format.split import split_leaks
from curation.format.stage import load_benchmarks, split_links
from curation.format.table import iter_formatted_rows
from resources import ProjectResource, WarehouseResource
from resources.tokenizer import TokenizerResource
from resources.warehouse import POOL

_SAMPLE = 10  # failing rows shown in the check's metadata


@asset_check(
    asset="formatted",
    name="every_row_within_token_budget",
    blocking=True,
    pool=POOL,
    description="Every formatted row has a token count within format.max_tokens, and for rows with "
    "token ids the count is the number of ids and of loss-mask entries.",
)
def formatted_within_token_budget(
    context: AssetCheckExecutionContext, project: ProjectResource, warehouse: WarehouseResource
) -> AssetCheckResult:
    budget = project.load().format.max_tokens
    with warehouse.get().connect() as connection:
        over, missing, longest, p50, p90, p99, rows = connection.execute(
            "SELECT count(*) FILTER (n_tokens > ?), count(*) FILTER (n_tokens IS NULL), max(n_tokens), "
            "quantile_disc(n_tokens, 0.5), quantile_disc(n_tokens, 0.9), quantile_disc(n_tokens, 0.99), count(*) "
            "FROM formatted",
            [budget],
        ).fetchone()
        (miscounted,) = connection.execute(
            "SELECT count(*) FROM formatted WHERE kind <> 'preference' AND (json_array_length(input_ids) <> n_tokens "
            "OR json_array_length(assistant_mask) <> n_tokens OR input_ids IS NULL)"
        ).fetchone()
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
    description="Scanning every formatted row again against the configured benchmarks finds no match "
    "(exact or n-gram), and no row flagged in `contamination` is still in `formatted`.",
)
def formatted_no_contamination_left(
    context: AssetCheckExecutionContext, project: ProjectResource, warehouse: WarehouseResource
) -> AssetCheckResult:
    config = project.load()
    items = load_benchmarks(config)
    index = ContaminationIndex(items) if items else None
    found, scanned = [], 0
    with warehouse.get().connect() as connection:
        (flagged_left,) = connection.execute(
            "SELECT count(*) FROM formatted f JOIN contamination c ON c.row_id = f.parent_id"
        ).fetchone()
        (removed,) = connection.execute("SELECT count(DISTINCT row_id) FROM contamination").fetchone()
        if index is not None:
            for row in iter_formatted_rows(connection):
                scanned += 1
                for match in check_row(row, index):
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
        passed=flagged_left == 0 and not found,
        metadata={
            "benchmarks": [b.name for b in config.format.benchmarks],
            "benchmark_items": len(items),
            "rows_scanned": scanned,
            "matches_left": len(found),
            "flagged_rows_left": int(flagged_left),
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
        rows = {
            row_id: (parent, split)
            for row_id, parent, split in connection.execute("SELECT row_id, parent_id, split FROM formatted").fetchall()
        }
        edges, clusters = split_links(connection)
    leaks = split_leaks(rows, edges, clusters)
    splits = Counter(split for _, split in rows.values())
    return AssetCheckResult(
        passed=not leaks,
        metadata={
            "rows": len(rows),
            "rows_by_split": MetadataValue.json(dict(splits)),
            "lineage_edges": len(edges),
            "cluster_members": len(clusters),
            "shared_across_splits": len(leaks),
            "leaks_sample": MetadataValue.md(markdown_table(leaks[:_SAMPLE])),
        },
    )


@asset_check(
    asset="formatted",
    name="round_trip_ok",
    blocking=True,
    pool=POOL,
    description="For every formatted row: no control token of the template inside message content; "
    "rendering then parsing back gives the messages; the generation prompt is exactly what "
    "precedes the reply (what inference will send); stored token ids decode to the stored text.",
)
def formatted_round_trip_ok(
    context: AssetCheckExecutionContext,
    project: ProjectResource,
    warehouse: WarehouseResource,
    tokenizer: TokenizerResource,
) -> AssetCheckResult:
    tokenizer = tokenizer.load(project.load())
    failures: Counter[str] = Counter()
    sample: list[dict[str, str]] = []
    levels: Counter[str] = Counter()
    rows = 0
    with warehouse.get().connect() as connection:
        for row in iter_formatted_rows(connection):
            rows += 1
            verification = verify_row(row, tokenizer)
            problems = []
            if verification.leaked_tokens:
                problems.append(("special_tokens_in_content", ", ".join(verification.leaked_tokens)))
            if not verification.round_trip_passed:
                problems.append(("round_trip", verification.round_trip))
            else:
                levels[verification.round_trip] += 1
            if verification.generation_prompt_ok is False:
                problems.append(
                    (
                        "generation_prompt",
                        "render(history, add_generation_prompt=True) is not what "
                        "precedes the reply in render(history + reply)",
                    )
                )
            stored = stored_tokens_problem(row, tokenizer)
            if stored:
                problems.append(("stored_tokens", stored))
            for name, detail in problems:
                failures[name] += 1
                if len(sample) < _SAMPLE:
                    sample.append({"row_id": row["row_id"], "kind": row["kind"], "problem": name, "detail": detail})
    return AssetCheckResult(
        passed=not failures,
        metadata={
            "rows": rows,
            "failures": MetadataValue.json(dict(failures)),
            "round_trip_levels": MetadataValue.json(dict(levels)),
            "tokenizer": tokenizer.name_or_path,
            "failures_sample": MetadataValue.md(markdown_table(sample)),
        },
    )


@asset_check(
    asset="exports",
    name="published_versions_unchanged",
    description="Every export folder still matches its manifest (file hashes, data version = folder name): "
    "a published data version was never edited in place.",
)
def exports_unchanged(context: AssetCheckExecutionContext) -> AssetCheckResult:
    root = exports_dir()
    folders = sorted(p for p in root.iterdir() if (p / MANIFEST).is_file()) if root.is_dir() else []
    problems = [{"version": folder.name, "problem": problem} for folder in folders for problem in verify_export(folder)]
    return AssetCheckResult(
        passed=not problems,
        metadata={
            "exports_dir": str(root),
            "versions": len(folders),
            "problems": MetadataValue.md(markdown_table(problems[:_SAMPLE])),
        },
    )


FORMATTED_CHECKS: list[AssetChecksDefinition] = [
    formatted_within_token_budget,
    formatted_no_contamination_left,
    formatted_splits_disjoint,
    formatted_round_trip_ok,
    exports_unchanged,
]
