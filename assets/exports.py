"""exports: the formatted dataset as JSONL + Parquet folders that `datasets` and TRL trainers read
directly, with a manifest; one immutable folder per data version under $DISTILLERY_HOME/exports."""

from dagster import AssetExecutionContext, DataVersion, Failure, MaterializeResult, MetadataValue, asset

from assets.metadata import reported_data_version
from curation.audit.report import export_refusal
from curation.core.freshness import module_code_version
from curation.core.home import exclusive_lock, exports_dir, remove_dead_export_temps, reports_dir
from curation.core.markdown import markdown_table
from curation.core.parallel import engine_is_local, use_engine, workers_for
from curation.core.warehouse import SCAN_MEMORY_LIMIT, count_rows
from curation.format.export import ExportInfo, write_export
from resources import ProjectResource, WarehouseResource
from resources.warehouse import POOL

LOCAL_EXPORT_WORKERS = 1
"""Processes encoding the export's lines on the local engine unless ``compute.workers`` is set: this one,
beside its writing thread (hashing, file and Parquet writes release the GIL, so the step already keeps
two cores busy). Exporting the 1M benchmark's ``formatted`` took 57–67 s in this process and 71 s with
two worker processes, which raised the process tree's peak from 1,009 to 1,975 MiB: reading the ranges
and handing batches over, not encoding, bounds the step."""


@asset(
    group_name="datasets",
    pool=POOL,
    # After the compliance report: its blocking checks (checks/compliance.py) stop a version that may not be
    # used for the intended use before anything is exported, and the asset itself refuses a version whose
    # report is missing or finds a violation (a run that selects exports alone).
    deps=["formatted", "compliance_report"],
    kinds={"parquet", "json"},
    code_version=module_code_version(__name__),
    owners=["team:data"],
)
def exports(
    context: AssetExecutionContext, project: ProjectResource, warehouse: WarehouseResource
) -> MaterializeResult:
    """SFT (`messages`, and pre-tokenized `input_ids` + `assistant_masks`), preference (`prompt`/`chosen`/
    `rejected`), prompt, reward and text layouts, train and eval, in JSONL and Parquet, plus `manifest.json`
    (data version, row counts, licences and attribution, teachers, tokenizer and template, project-file
    hash) and a dataset card. An existing version folder is verified and reused, never overwritten."""
    config = project.load()
    root = exports_dir()
    # Every export is written holding this lock, so a temp folder found while holding it is a dead run's.
    with (
        use_engine(config.compute),
        exclusive_lock(root.parent / "exports.lock", on_wait=context.log.info),
        warehouse.get().connect(read_only=True, memory_limit=SCAN_MEMORY_LIMIT) as connection,
    ):
        for leftover in remove_dead_export_temps(root):
            context.log.warning(f"exports: removed {leftover.name}, the unfinished export of a crashed run")
        # The version `formatted` reported, as the compliance report names it.
        formatted_version = reported_data_version(context.instance, connection, "formatted")
        info = ExportInfo.from_config(config, formatted_data_version=formatted_version)
        version = info.formatted_data_version
        refusal = export_refusal(reports_dir() / version, version, config.policy.intended_use)
        if refusal:  # e.g. `--select exports` after the compliance checks failed: nothing is written
            raise Failure(description=f"exports: {refusal}")
        exported_rows = count_rows(connection, "formatted")
        workers = (
            (config.compute.workers or LOCAL_EXPORT_WORKERS)
            if engine_is_local()
            else workers_for(exported_rows, config.compute.workers)
        )
        result = write_export(
            connection, root, info, batch_rows=config.ingest.batch_rows, workers=workers, log=context.log.info
        )
    manifest = result.manifest
    context.log.info(
        f"exports: data version {result.data_version} at {result.path}"
        + (" (unchanged, reused)" if result.reused else "")
    )
    return MaterializeResult(
        data_version=DataVersion(result.data_version),
        metadata={
            "data_version": result.data_version,
            "dagster/uri": MetadataValue.path(str(result.path)),
            # Rows of `formatted` exported, each written once per layout: `rows_written` counts the lines.
            "dagster/row_count": int(exported_rows),
            "rows_written": int(manifest["rows_total"]),
            "reused_existing_version": result.reused,
            # Shard files hard-linked from the previous version: their rows did not change.
            "files_taken_over": result.files_taken_over,
            "created_at": manifest["created_at"],
            "rows": MetadataValue.md(result.rows_markdown()),
            "files": MetadataValue.md(result.files_markdown()),
            "licenses": MetadataValue.md(markdown_table(manifest["licenses"])),
            "attribution": MetadataValue.md(markdown_table(manifest["attribution"])),
            "teachers": MetadataValue.md(markdown_table(manifest["teachers"])),
            "tokenizer": MetadataValue.json(manifest["tokenizer"]),
            "manifest": MetadataValue.path(str(result.path / "manifest.json")),
        },
    )
