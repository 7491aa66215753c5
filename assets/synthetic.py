"""synthetic: rows made by the teacher from filtered seeds (or from templates and code problems),
verified, each with a `provenance` record and lineage edges to its parents. Rejected candidates go to
`synthetic_rejections` with the reason and every verdict."""

from dagster import AssetExecutionContext, DataVersion, MaterializeResult, MetadataValue, asset

from assets.metadata import dataset_metadata
from curation.core.freshness import module_code_version
from curation.core.markdown import markdown_table
from curation.core.parallel import use_engine
from curation.core.provenance import LINEAGE_SCHEMA, PROVENANCE_DDL, PROVENANCE_SCHEMA
from curation.core.schema import rows_to_table, utcnow
from curation.core.warehouse import LINEAGE_DDL, canonical_ddl
from curation.synth.ingested import insert_ingested_provenance
from curation.synth.stage import REJECTIONS_DDL, REJECTIONS_SCHEMA, SynthesisPlan, seed_rows
from resources import ProjectResource, WarehouseResource
from resources.teachers import TeacherResource
from resources.warehouse import POOL


@asset(
    group_name="datasets",
    pool=POOL,
    deps=["filtered"],
    kinds={"duckdb"},
    code_version=module_code_version(__name__),
    owners=["team:data"],
)
def synthetic(
    context: AssetExecutionContext, project: ProjectResource, warehouse: WarehouseResource, teacher: TeacherResource
) -> MaterializeResult:
    """The teacher's accepted output. Methods and counts come from the project file's `synthesis`
    section; the procedural teacher (offline, deterministic) is the default."""
    config = project.load()
    plan = SynthesisPlan.from_config(config)
    created_at = utcnow()
    with (
        use_engine(config.compute),  # on ray, the model teacher's requests that miss the cache are Ray tasks
        teacher.open(config.synthesis.teacher, config.synthesis.judge, config.base_dir) as (model, judge),
        warehouse.get().write("synthetic") as staged,
    ):
        seeds = seed_rows(staged.connection, "filtered", plan.methods, plan.seed)
        context.log.info(f"synthetic: {len(seeds):,} seed rows from filtered")
        result = plan.run(model, judge, seeds, created_at, log=context.log.info)
        table = staged.create("synthetic", canonical_ddl())
        provenance = staged.create("provenance", PROVENANCE_DDL)
        rejections = staged.create("synthetic_rejections", REJECTIONS_DDL)
        lineage = staged.partition("lineage", LINEAGE_DDL)
        staged.append(table, rows_to_table(result.rows()))
        staged.append_rows(provenance, result.provenance_records(), PROVENANCE_SCHEMA)
        insert_ingested_provenance(
            staged.connection, staged.staging_name("provenance"), "filtered", plan.registry, created_at
        )
        staged.append_rows(lineage, result.lineage_edges(), LINEAGE_SCHEMA)
        staged.append_rows(rejections, result.rejection_records(), REJECTIONS_SCHEMA)
        metadata = dataset_metadata(staged, "synthetic", parents=["filtered"])
        cache = getattr(model, "cache", None)  # a CachedTeacher: model backends only
        cached_generations = len(cache) if cache is not None else 0
    for warning in result.warnings:
        context.log.warning(warning)
    context.log.info(
        f"synthetic: {len(result.accepted)} accepted, {len(result.rejected)} rejected candidates "
        f"from teacher {result.teacher.model}"
    )
    metadata |= {
        "dagster/table_name": "warehouse.main.synthetic",
        "teacher": MetadataValue.json(result.teacher.as_dict()),
        "judge": MetadataValue.json(judge.info.as_dict()),
        "judge_warnings": MetadataValue.md("\n".join(f"- ⚠️ {w}" for w in result.warnings) or "_(none)_"),
        "rows_by_method": MetadataValue.md(markdown_table(result.counts())),
        "candidates": len(result.accepted) + len(result.rejected),
        "accepted": len(result.accepted),
        "rejected": len(result.rejected),
        "rejections_sample": MetadataValue.md(markdown_table(result.rejections_sample())),
        "cached_generations": cached_generations,
    }
    return MaterializeResult(metadata=metadata, data_version=DataVersion(metadata["data_version"]))
