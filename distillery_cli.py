"""The ``distillery`` command: run the pipeline through Dagster, open the UI, preview filters.

Runs started here use the persistent Dagster instance under ``$DISTILLERY_HOME/dagster``, so they
show up in ``distillery ui`` (or ``dagster dev``) afterwards.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from curation.config import ConfigError, load_project
from curation.home import DEMO_CONFIG, ensure_dagster_home, warehouse_path

PROJECT_ROOT = Path(__file__).resolve().parent


def _set_home(args: argparse.Namespace) -> None:
    """--home / --config win over the environment; everything downstream reads the environment."""
    if getattr(args, "home", None):
        os.environ["DISTILLERY_HOME"] = str(Path(args.home).resolve())
    os.environ.setdefault("DISTILLERY_HOME", str(Path(".distillery").resolve()))
    if getattr(args, "config", None):
        os.environ["DISTILLERY_CONFIG"] = str(Path(args.config).resolve())
    os.environ["DAGSTER_HOME"] = str(ensure_dagster_home())


def _load_config_or_exit() -> None:
    path = os.environ.get("DISTILLERY_CONFIG", str(DEMO_CONFIG))
    try:
        load_project(path)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_run(args: argparse.Namespace) -> int:
    _set_home(args)
    _load_config_or_exit()
    import dagster as dg

    from definitions import ASSETS, CHECKS, RESOURCES

    selection = None
    if args.select:
        known = {a.key.to_user_string() for a in ASSETS}
        names = [name.strip() for name in args.select.split(",") if name.strip()]
        unknown = [name for name in names if name.rstrip("+") not in known]
        if unknown:
            print(f"error: unknown asset(s) {unknown}; known: {sorted(known)}", file=sys.stderr)
            return 2
        selection = dg.AssetSelection.assets(*[n for n in names if not n.endswith("+")])
        downstream = [n.rstrip("+") for n in names if n.endswith("+")]
        if downstream:
            selection = selection | dg.AssetSelection.assets(*downstream).downstream()
    print(f"Distillery home: {os.environ['DISTILLERY_HOME']}\nProject file: "
          f"{os.environ.get('DISTILLERY_CONFIG', DEMO_CONFIG)}", file=sys.stderr)
    result = dg.materialize(
        [*ASSETS, *CHECKS],
        selection=selection,
        instance=dg.DagsterInstance.get(),
        resources=RESOURCES,
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": args.log_level}}}},
        tags={"distillery/cli": "run"},
    )
    _print_summary(result)
    failed_checks = [e for e in result.get_asset_check_evaluations() if not e.passed]
    if not result.success:
        print("\nThe run FAILED; see the errors above (the previous version of every table is intact).",
              file=sys.stderr)
        return 1
    if any(e.severity.value == "ERROR" for e in failed_checks):
        return 1
    return 0


def _print_summary(result: object) -> None:
    materializations = result.get_asset_materialization_events()  # type: ignore[attr-defined]
    print("\nasset             rows     data version")
    for event in materializations:
        materialization = event.materialization
        metadata = materialization.metadata
        rows = metadata.get("dagster/row_count")
        version = metadata.get("data_version")
        print(f"{materialization.asset_key.to_user_string():<16} {rows.value if rows else '-':>6}     "
              f"{version.value if version else '-'}")
    evaluations = result.get_asset_check_evaluations()  # type: ignore[attr-defined]
    passed = sum(1 for e in evaluations if e.passed)
    print(f"\nchecks: {passed} passed, {len(evaluations) - passed} failed")
    for evaluation in evaluations:
        if not evaluation.passed:
            print(f"  FAILED {evaluation.asset_key.to_user_string()}:{evaluation.check_name} "
                  f"({evaluation.severity.value})")
    print(f"warehouse: {warehouse_path()}")


def cmd_ui(args: argparse.Namespace) -> int:
    _set_home(args)
    command = ["dagster", "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"), "-h", args.host, "-p", str(args.port)]
    print(f"DAGSTER_HOME={os.environ['DAGSTER_HOME']} {' '.join(command)}", file=sys.stderr)
    return subprocess.call(command, cwd=PROJECT_ROOT)


def cmd_preview(args: argparse.Namespace) -> int:
    """Run the cleaners and filters on a sample of a table and print what they would do."""
    _set_home(args)
    _load_config_or_exit()
    from assets.filtered import filter_settings
    from curation.filtering import build_cleaners, build_filters, preview, preview_markdown
    from curation.home import project_config_path
    from curation.schema import iter_rows
    from curation.warehouse import Warehouse, quote, read_batches

    config = load_project(project_config_path())
    cleaners = build_cleaners(config.filters.get("cleaners"))
    filters = build_filters(filter_settings(config.filters, config.policy.intended_use, config.policy.licenses))
    warehouse = Warehouse(warehouse_path())
    with warehouse.connect(read_only=True) as connection:
        batches = read_batches(
            connection, f"SELECT * FROM {quote(args.table)} USING SAMPLE reservoir({int(args.sample)} ROWS) "
            "REPEATABLE (0)")
        result = preview(iter_rows(batches), cleaners, filters)
    print(preview_markdown(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distillery", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="materialize the pipeline (or --select a subset) through Dagster")
    run.add_argument("--config", help="project file (default: $DISTILLERY_CONFIG or the bundled demo)")
    run.add_argument("--home", help="state folder (default: $DISTILLERY_HOME or ./.distillery)")
    run.add_argument("--select", help="comma-separated assets, e.g. raw,deduped; filtered+ adds everything downstream")
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.set_defaults(func=cmd_run)

    ui = sub.add_parser("ui", help="start the Dagster UI (webserver + daemon) on this home")
    ui.add_argument("--home")
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default: localhost only)")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(func=cmd_ui)

    prev = sub.add_parser("preview", help="show what the cleaners and filters would do to a sample, writing nothing")
    prev.add_argument("--config")
    prev.add_argument("--home")
    prev.add_argument("--table", default="deduped", help="table to sample (default: deduped)")
    prev.add_argument("--sample", type=int, default=500)
    prev.set_defaults(func=cmd_preview)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
