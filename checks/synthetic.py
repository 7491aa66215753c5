"""Checks that guard synthetic data on its way to training: provenance, the synthetic cap, licence and
teacher terms against the intended use, and tested code."""

import json

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetChecksDefinition, MetadataValue, asset_check

from curation.core.licenses import LicensePolicy
from curation.core.markdown import markdown_table
from curation.core.warehouse import quote
from curation.synth.terms import parse_model_registry, terms_violations
from resources import ProjectResource, WarehouseResource
from resources.warehouse import POOL

SAMPLE = 20
"""Violating rows listed in a check's metadata."""


@asset_check(
    asset="synthetic",
    name="provenance_complete",
    blocking=True,
    pool=POOL,
    description="Every synthetic or augmented row has a provenance record naming its method, teacher "
    "model, revision and licence, with its verification verdicts; every parent it names "
    "exists in filtered and is linked by a lineage edge.",
)
def synthetic_provenance_complete(
    context: AssetCheckExecutionContext, warehouse: WarehouseResource
) -> AssetCheckResult:
    with warehouse.get().connect() as connection:
        (rows,) = connection.execute("SELECT count(*) FROM synthetic").fetchone()
        (missing,) = connection.execute(
            "SELECT count(*) FROM synthetic s LEFT JOIN provenance p USING (row_id) WHERE p.row_id IS NULL "
            "OR p.method IS NULL OR p.teacher_model IS NULL OR p.teacher_revision IS NULL "
            "OR p.teacher_license IS NULL OR p.verification IS NULL"
        ).fetchone()
        (orphans,) = connection.execute(
            "SELECT count(*) FROM provenance p WHERE p.row_id NOT IN (SELECT row_id FROM synthetic) "
            # An ingested model-made row's record belongs to its row in filtered (curation.synth.ingested).
            "AND (p.method <> 'ingested' OR p.row_id NOT IN (SELECT row_id FROM filtered))"
        ).fetchone()
        (no_edge, unknown_parent) = connection.execute(
            "WITH parents AS (SELECT p.row_id, unnest(CAST(p.parent_ids AS VARCHAR[])) AS parent_id FROM provenance p) "
            "SELECT count(*) FILTER (NOT EXISTS (SELECT 1 FROM lineage l WHERE l.asset = 'synthetic' "
            "  AND l.child_id = parents.row_id AND l.parent_id = parents.parent_id)), "
            "count(*) FILTER (parent_id NOT IN (SELECT row_id FROM filtered)) FROM parents"
        ).fetchone()
        sample = [
            r[0]
            for r in connection.execute(
                "SELECT s.row_id FROM synthetic s LEFT JOIN provenance p USING (row_id) WHERE p.row_id IS NULL "
                "ORDER BY 1 LIMIT 5"
            ).fetchall()
        ]
    passed = missing == 0 and orphans == 0 and no_edge == 0 and unknown_parent == 0
    return AssetCheckResult(
        passed=passed,
        metadata={
            "synthetic_rows": int(rows),
            "without_complete_provenance": int(missing),
            "provenance_without_row": int(orphans),
            "parents_without_lineage": int(no_edge),
            "parents_not_in_filtered": int(unknown_parent),
            "sample_without_provenance": MetadataValue.json(sample),
        },
    )


@asset_check(
    asset="synthetic_mixed",
    name="synthetic_share_within_cap",
    blocking=True,
    pool=POOL,
    description="Model-made rows (any origin other than human) are at most mix.synthetic_cap of the mix.",
)
def synthetic_share_within_cap(
    context: AssetCheckExecutionContext, project: ProjectResource, warehouse: WarehouseResource
) -> AssetCheckResult:
    cap = project.load().mix.synthetic_cap
    with warehouse.get().connect() as connection:
        share, model_made, total = connection.execute(
            "SELECT coalesce(avg(CASE WHEN origin <> 'human' THEN 1.0 ELSE 0.0 END), 0), "
            "count(*) FILTER (origin <> 'human'), count(*) FROM synthetic_mixed"
        ).fetchone()
    return AssetCheckResult(
        passed=float(share) <= cap + 1e-9,
        metadata={"synthetic_share": float(share), "cap": cap, "model_made_rows": int(model_made), "rows": int(total)},
    )


def terms_check(asset: str) -> AssetChecksDefinition:
    @asset_check(
        asset=asset,
        name="licence_and_terms_allow_use",
        blocking=True,
        pool=POOL,
        description=f"No {asset} row whose licence, inherited teacher terms, or generating model's "
        "registered terms (policy.teachers) forbid policy.intended_use.",
    )
    def _check(
        context: AssetCheckExecutionContext, project: ProjectResource, warehouse: WarehouseResource
    ) -> AssetCheckResult:
        config = project.load()
        policy = LicensePolicy.with_overrides(config.policy.licenses)
        registry = parse_model_registry(config.policy.teachers)
        use = config.policy.intended_use
        # A verdict depends on a row's licence, generator and recorded terms only: each distinct combination is
        # judged once, by the same rules as row by row, and counts for all its rows (its first ids by
        # `min(row_id, n)`, which keeps n, not a sorted list of all of them).
        with warehouse.get().connect() as connection:
            combinations = connection.execute(
                "SELECT license, generator, CAST(json_extract(extra, '$.terms') AS VARCHAR), count(*), "
                f"min(row_id, {SAMPLE}) FROM {quote(asset)} GROUP BY ALL ORDER BY ALL"
            ).fetchall()
        count, sample = 0, []
        for license_, generator, terms, rows, row_ids in combinations:
            extra = {} if terms is None else {"terms": json.loads(terms)}
            row = {"row_id": row_ids[0], "license": license_, "generator": generator, "extra": extra}
            found, judged = terms_violations([row], registry, policy, use)
            if found:
                count += rows
                sample += [judged[0] | {"row_id": row_id} for row_id in row_ids]
        sample = sorted(sample, key=lambda line: line["row_id"])[:SAMPLE]  # the first violating rows by id
        return AssetCheckResult(
            passed=count == 0,
            metadata={
                "intended_use": use,
                "violations": count,
                "combinations_judged": len(combinations),
                "sample": MetadataValue.md(markdown_table(sample)),
            },
        )

    return _check


@asset_check(
    asset="synthetic",
    name="code_rows_passed_tests",
    blocking=True,
    pool=POOL,
    description="Every synthetic code row passed its unit tests in the sandbox.",
)
def code_rows_passed_tests(context: AssetCheckExecutionContext, warehouse: WarehouseResource) -> AssetCheckResult:
    with warehouse.get().connect() as connection:
        rows, failed = connection.execute(
            "SELECT count(*), count(*) FILTER (coalesce(CAST(json_extract(verification, "
            "'$.method_checks.tests_passed') AS BOOLEAN), false) = false) FROM provenance WHERE method = 'code'"
        ).fetchone()
    return AssetCheckResult(passed=failed == 0, metadata={"code_rows": int(rows), "without_passing_tests": int(failed)})


SYNTHETIC_CHECKS: list[AssetChecksDefinition] = [
    synthetic_provenance_complete,
    synthetic_share_within_cap,
    terms_check("synthetic"),
    terms_check("synthetic_mixed"),
    code_rows_passed_tests,
]
