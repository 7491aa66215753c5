"""synthetic: rows made by the teacher from filtered seeds (or from templates), each with a
`provenance` record and lineage edges to its parents."""

from dagster import AssetExecutionContext, DataVersion, MaterializeResult, MetadataValue, asset

from assets.metadata import dataset_metadata
from curation.licenses import LicensePolicy
from curation.markdown import counts_table
from curation.provenance import LINEAGE_SCHEMA, PROVENANCE_DDL, PROVENANCE_SCHEMA
from curation.schema import rows_to_table, utcnow
from curation.synth import perturbation_rows, template_problem_rows
from curation.teachers import ProceduralTeacher
from curation.warehouse import LINEAGE_DDL, canonical_ddl, table_rows
from resources import ProjectResource, WarehouseResource
from resources.warehouse import POOL


@asset(group_name="datasets", pool=POOL, deps=["filtered"], kinds={"duckdb"}, code_version="synthetic-1",
       owners=["team:data"])
def synthetic(context: AssetExecutionContext, project: ProjectResource, warehouse: WarehouseResource
              ) -> MaterializeResult:
    """The teacher's accepted output. Methods and counts come from the project file's `synthesis`
    section; the procedural teacher (offline, deterministic) is the default."""
    config = project.load()
    synthesis = config.synthesis
    teacher = ProceduralTeacher(seed=synthesis.seed)
    policy = LicensePolicy.with_overrides(config.policy.licenses)
    created_at = utcnow()
    with warehouse.get().write("synthetic") as staged:
        seeds = list(table_rows(staged.connection, "filtered"))
        produced = []
        methods = synthesis.methods
        if "perturbation" in methods:
            produced += perturbation_rows(seeds, teacher.info, int(methods["perturbation"].get("count", 0)),
                                          synthesis.seed, created_at, policy)
        for method in ("arithmetic", "units"):
            if method in methods:
                produced += template_problem_rows(teacher, method, int(methods[method].get("count", 0)),
                                                  synthesis.seed, created_at)
        table = staged.create("synthetic", canonical_ddl())
        provenance = staged.create("provenance", PROVENANCE_DDL)
        lineage = staged.partition("lineage", LINEAGE_DDL)
        staged.append(table, rows_to_table(p.row for p in produced))
        staged.append_rows(provenance, [p.provenance.as_record() for p in produced], PROVENANCE_SCHEMA)
        staged.append_rows(lineage, [edge for p in produced for edge in p.lineage], LINEAGE_SCHEMA)
        metadata = dataset_metadata(staged.connection, staged.staging_name("synthetic"), parents=["filtered"])
    by_method: dict[str, int] = {}
    for p in produced:
        by_method[p.provenance.method] = by_method.get(p.provenance.method, 0) + 1
    context.log.info(f"synthetic: {len(produced)} rows from teacher {teacher.info.model}")
    metadata |= {
        "dagster/table_name": "warehouse.main.synthetic",
        "teacher": MetadataValue.json(teacher.info.as_dict()),
        "rows_by_method": MetadataValue.md(counts_table(by_method, "method")),
    }
    return MaterializeResult(metadata=metadata, data_version=DataVersion(metadata["data_version"]))
