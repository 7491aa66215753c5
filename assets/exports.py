"""exports: the formatted dataset as JSONL + Parquet folders that `datasets` and TRL trainers read
directly, with a manifest; one immutable folder per data version under $DISTILLERY_HOME/exports."""

from dagster import AssetExecutionContext, DataVersion, MaterializeResult, MetadataValue, asset

from curation.core.home import exports_dir
from curation.core.markdown import markdown_table
from curation.core.warehouse import content_hash
from curation.format.export import CONFIGS, ExportInfo, write_export
from resources import ProjectResource, WarehouseResource
from resources.warehouse import POOL


@asset(group_name="datasets", pool=POOL, deps=["formatted"], kinds={"parquet", "json"},
       code_version="exports-1", owners=["team:data"])
def exports(context: AssetExecutionContext, project: ProjectResource, warehouse: WarehouseResource
            ) -> MaterializeResult:
    """SFT (`messages`, and pre-tokenized `input_ids` + `assistant_masks`), preference (`prompt`/`chosen`/
    `rejected`), prompt, reward and text layouts, train and eval, in JSONL and Parquet, plus `manifest.json`
    (data version, row counts, licences and attribution, teachers, tokenizer and template, project-file
    hash) and a dataset card. An existing version folder is verified and reused, never overwritten."""
    config = project.load()
    settings = config.format
    with warehouse.get().connect(read_only=True) as connection:
        info = ExportInfo(
            project=config.name, project_file_hash=config.file_hash, intended_use=config.policy.intended_use,
            tokenizer=settings.tokenizer, chat_template=settings.chat_template, max_tokens=settings.max_tokens,
            length_policy=settings.length_policy, system_prompt=settings.system_prompt,
            eval_fraction=settings.eval_fraction, seed=settings.seed, benchmarks=[b.name for b in settings.benchmarks],
            formatted_data_version=content_hash(connection, "formatted"), license_overrides=config.policy.licenses)
        result = write_export(connection, exports_dir(), info, batch_rows=config.ingest.batch_rows)
    manifest = result.manifest
    context.log.info(f"exports: data version {result.data_version} at {result.path}"
                     + (" (unchanged, reused)" if result.reused else ""))
    rows = [{"config": c, "split": s, "rows": n, "layout": CONFIGS.get(c, "")}
            for c, splits in manifest["rows"].items() for s, n in splits.items()]
    files = [{"file": name, "rows": entry["rows"], "bytes": entry["bytes"], "sha256": entry["sha256"][:16]}
             for name, entry in {**manifest["files"], **manifest["parquet_files"]}.items()]
    return MaterializeResult(
        data_version=DataVersion(result.data_version),
        metadata={
            "data_version": result.data_version,
            "dagster/uri": MetadataValue.path(str(result.path)),
            "dagster/row_count": int(manifest["rows_total"]),
            "reused_existing_version": result.reused,
            "created_at": manifest["created_at"],
            "rows": MetadataValue.md(markdown_table(rows)),
            "files": MetadataValue.md(markdown_table(files)),
            "licenses": MetadataValue.md(markdown_table(manifest["licenses"])),
            "attribution": MetadataValue.md(markdown_table(manifest["attribution"])),
            "teachers": MetadataValue.md(markdown_table(manifest["teachers"])),
            "tokenizer": MetadataValue.json(manifest["tokenizer"]),
            "manifest": MetadataValue.path(str(result.path / "manifest.json")),
        })
