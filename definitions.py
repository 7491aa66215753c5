"""The Dagster code location: every asset, check, sensor, schedule and resource of Distillery."""

from dagster import AssetSelection, Definitions, JobDefinition, define_asset_job, in_process_executor

from assets.compliance import compliance_report
from assets.deduped import deduped
from assets.exports import exports
from assets.filtered import filtered
from assets.formatted import formatted
from assets.inspection import inspection
from assets.raw import raw
from assets.sources import source_files
from assets.synthetic import synthetic
from assets.synthetic_mixed import synthetic_mixed
from checks import ALL_CHECKS
from resources import ProjectResource, WarehouseResource
from resources.teachers import TeacherResource
from resources.tokenizer import TokenizerResource
from sensors import landing_files_sensor, nightly_schedule, run_failure_alert

DATASETS = [raw, deduped, filtered, synthetic, synthetic_mixed, formatted]
ASSETS = [*DATASETS, exports, compliance_report, inspection]
"""What runs materialize: every asset of the `distill` job. Not the observable ``source_files`` (observed, never
materialized), which `distillery run`'s up-to-date decision reads directly (``source_fingerprint``)."""
SOURCES = [source_files]
CHECKS = ALL_CHECKS
RESOURCES = {
    "project": ProjectResource(),
    "warehouse": WarehouseResource(),
    "teacher": TeacherResource(),
    "tokenizer": TokenizerResource(),
}

# In one process, as `distillery run` runs: every step writes the one DuckDB file in turn anyway, and a
# process per step (Dagster's default) made a UI run of the demo cost minutes of imports for seconds of work.
CODE_LOCATION = "distillery"
"""The code location's name in workspace.yaml; Dagster names the repository of a ``Definitions`` object
``__repository__``. Runs of ``distillery run`` carry both, as the UI's do."""
REPOSITORY = "__repository__"
DISTILL_JOB = "distill"
"""The job of every asset and check: what `distillery run` executes (a subset of it for a selection), so its
runs are this job's runs in the UI and can be re-executed there."""

distill_job = define_asset_job(
    DISTILL_JOB,
    selection=AssetSelection.all(),
    description="Materialize every dataset version, the exports and the compliance report.",
    executor_def=in_process_executor,
)

defs = Definitions(
    assets=[*SOURCES, *ASSETS],
    asset_checks=CHECKS,
    jobs=[distill_job],
    schedules=[nightly_schedule],
    sensors=[landing_files_sensor, run_failure_alert],
    resources=RESOURCES,
    # The jobs the UI builds for its Materialize and Observe buttons run in one process too, like `distill`.
    executor=in_process_executor,
)


def distill() -> JobDefinition:
    """The ``distill`` job with its resources bound, importable for Dagster's Python APIs that rebuild a job
    from its module: ``execute_job(reconstructable(distill), instance, reexecution_options=...)`` re-executes a
    run of ``distillery run`` (or of the UI) from Python, as the UI's Re-execute does."""
    return defs.resolve_job_def(DISTILL_JOB)
