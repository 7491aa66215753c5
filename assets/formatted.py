"""formatted: rows rendered with the target model's tokenizer and chat template, decontaminated against
the benchmarks, verified (control tokens, round trip, generation prompt), split into train/eval with
near-duplicates and derived rows kept together, and tagged with nested subsets."""

from dagster import AssetExecutionContext, DataVersion, MaterializeResult, MetadataValue, asset

from assets.metadata import dataset_metadata
from curation.core.freshness import module_code_version
from curation.core.parallel import use_engine
from curation.format.stage import format_rows
from resources import ProjectResource, WarehouseResource
from resources.tokenizer import TokenizerResource
from resources.warehouse import POOL


@asset(
    group_name="datasets",
    pool=POOL,
    deps=["synthetic_mixed"],
    kinds={"duckdb"},
    code_version=module_code_version(__name__),
    owners=["team:data"],
)
def formatted(
    context: AssetExecutionContext, project: ProjectResource, warehouse: WarehouseResource, tokenizer: TokenizerResource
) -> MaterializeResult:
    """Training-ready rows: rendered text, token ids, counts and assistant-only loss masks, split and subset.
    Benchmark matches, unrenderable or over-long rows, rows whose content holds control tokens and rows
    that do not survive a render/parse round trip → `format_rejections` with the reason."""
    config = project.load()
    settings = config.format
    target_tokenizer = tokenizer.load(config)
    with use_engine(config.compute), warehouse.get().write("formatted") as staged:
        result = format_rows(staged, config, target_tokenizer, report=context.log.info)
        metadata = dataset_metadata(staged, "formatted", parents=["synthetic_mixed"])
    context.log.info(result.summary())
    tokens = result.tokens
    metadata |= {
        "dagster/table_name": "warehouse.main.formatted",
        "tokenizer": target_tokenizer.name_or_path,
        "tokenizer_id": tokens.tokenizer_id,
        "template_id": tokens.template_id,
        "max_tokens": settings.max_tokens,
        "length_policy": settings.length_policy,
        "rows_rejected": result.rows_rejected,
        "rows_reused": result.rows_reused,
        "rows_rejected_by_stage": MetadataValue.json(result.rejected_by_stage),
        "rows_truncated": tokens.truncated_rows,
        "tokens_total": tokens.total,
        "tokens_max": tokens.longest,
        "tokens_mean": tokens.mean,
        "tokens_p50": tokens.p50,
        "tokens_p90": tokens.p90,
        "mask_sources": MetadataValue.json(result.mask_sources),
        "splits": MetadataValue.md(result.splits_markdown()),
        "contamination": MetadataValue.md(result.contamination_markdown()),
        "decontamination": MetadataValue.json(result.decontamination),
    }
    return MaterializeResult(metadata=metadata, data_version=DataVersion(metadata["data_version"]))
