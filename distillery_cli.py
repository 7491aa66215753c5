"""The distillery command: run the pipeline through Dagster, open the UI, preview filters, audit a
row's provenance and write the compliance report of a dataset version.

Runs started here use the persistent Dagster instance under $DISTILLERY_HOME/dagster, so they
show up in `distillery ui` (or `dagster dev`) afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from curation.core.config import ConfigError, ProjectConfig, load_project
from curation.core.freshness import (
    Freshness,
    code_fingerprint,
    forget_state,
    project_fingerprint,
    read_state,
    record_state,
    source_fingerprint,
)
from curation.core.home import DEMO_CONFIG, ensure_dagster_home, warehouse_path
from curation.core.parallel import engine_description, use_engine
from curation.core.warehouse import Warehouse

PROJECT_ROOT = Path(__file__).resolve().parent


def _fail(message: str) -> NoReturn:
    """A command-line problem: one line on stderr and exit status 2, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _set_home(args: argparse.Namespace, writable: bool = True) -> None:
    """--home / --config win over the environment; everything downstream reads the environment.

    Commands that only read (``audit``, ``preview``, ``report --out``) pass ``writable=False``: they create
    nothing in the home, so a home on a read-only disk or of another user can still be inspected."""
    if getattr(args, "home", None):
        os.environ["DISTILLERY_HOME"] = str(Path(args.home).resolve())
    os.environ.setdefault("DISTILLERY_HOME", str(Path(".distillery").resolve()))
    if getattr(args, "config", None):
        os.environ["DISTILLERY_CONFIG"] = str(Path(args.config).resolve())
    home = Path(os.environ["DISTILLERY_HOME"])
    if home.is_file():
        _fail(f"the Distillery home {home} is a file, not a folder; pass --home a folder (or set DISTILLERY_HOME)")
    if not writable:
        return
    try:
        os.environ["DAGSTER_HOME"] = str(ensure_dagster_home())
    except OSError as error:
        _fail(
            f"the Distillery home {home} cannot be created or written ({error.strerror or error}); pass --home a "
            "folder this user can write (or set DISTILLERY_HOME)"
        )
    if not os.access(home, os.W_OK | os.X_OK):
        _fail(f"the Distillery home {home} is not writable by this user; pass --home a folder it can write")


def _load_config_or_exit() -> None:
    path = Path(os.environ.get("DISTILLERY_CONFIG", str(DEMO_CONFIG)))
    # Checked before reading: a folder fails with a bare IsADirectoryError, a device (/dev/zero) never ends.
    if path.is_dir():
        inside = path / "distillery.yaml"
        hint = f"; did you mean {inside}?" if inside.is_file() else ""
        _fail(f"--config {path} is a folder, not a project file{hint}")
    if path.exists() and not path.is_file():
        _fail(f"--config {path} is not a regular file (a device or a pipe?); pass the project file (distillery.yaml)")
    try:
        load_project(path)
    except ConfigError as error:
        _fail(str(error))
    except OSError as error:
        _fail(f"{path}: the project file cannot be read ({error.strerror or error})")


def cmd_run(args: argparse.Namespace) -> int:
    _set_home(args)
    _load_config_or_exit()
    from curation.core.home import exclusive_lock, run_lock_path
    from curation.core.ray_engine import EngineUnavailable
    from curation.core.warehouse import WarehouseBusy

    def waiting(holder: str) -> None:
        print(
            f"waiting: {holder}, a `distillery run` writing this home; this run starts when it ends "
            "(Ctrl-C to stop waiting)",
            file=sys.stderr,
        )

    try:
        # One run per home at a time: the second waits here, in plain Python (signals work), instead of
        # inside Dagster's silent slot wait. The kernel frees the lock when its holder dies, even by SIGKILL.
        with exclusive_lock(run_lock_path(), on_wait=waiting):
            return _run_holding_home(args)
    except KeyboardInterrupt:
        print("\ninterrupted (every table keeps its last committed version)", file=sys.stderr)
        return 130
    except (WarehouseBusy, EngineUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _run_holding_home(args: argparse.Namespace) -> int:
    import dagster as dg

    from definitions import ASSETS
    from resources.recovery import open_instance, recover_dead_runs, wait_for_pool

    def say(message: str) -> None:
        print(f"recovery: {message}", file=sys.stderr)

    instance = open_instance()
    recover_dead_runs(instance, say)  # runs killed earlier: failed, their writer slot freed
    from curation.synth.sandbox import sweep_stale_workdirs

    for leftover in sweep_stale_workdirs():  # code sandboxes of a killed run: already dead, their folders not
        say(f"removed {leftover}, the working folder of a code sandbox whose run was killed")
    wait_for_pool(instance, say)  # a live run started elsewhere (the UI) holds the writer slot
    selection: dg.AssetSelection | None = None
    graph = _asset_graph(ASSETS)
    # Read once the home is ours (the file may have changed while this run waited), for the freshness
    # decision and the engine alike.
    config = load_project(os.environ.get("DISTILLERY_CONFIG", str(DEMO_CONFIG)))
    if config.compute.engine == "ray":
        from curation.core.intermediates import sweep
        from curation.core.parallel import intermediates_root

        for leftover in sweep(intermediates_root(config.compute.intermediates)):
            say(f"removed {leftover}, the Parquet intermediates of a run that was killed")
    freshness = _freshness(graph, config)
    if args.select:
        try:
            selection = _parse_select(args.select, set(graph))
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    elif not args.force:
        stale = freshness.stale()
        if not stale:
            print("Every asset is up to date (same code, project file, source files and upstream versions as its")
            print("last materialization with all checks passing); nothing to do. --force runs everything anyway.")
            _print_state(freshness)
            return 0
        if len(stale) < len(graph):
            up_to_date = ", ".join(a for a in graph if a not in stale)
            print(f"Up to date, not run again: {up_to_date}", file=sys.stderr)
            selection = dg.AssetSelection.assets(*stale)
    # Job subsets are asset keys; the checks of the selected assets come with them.
    keys = sorted(selection.resolve(ASSETS)) if selection is not None else None
    running = {key.to_user_string() for key in keys} if keys is not None else set(graph)
    problems = _path_problems(config, running)
    if problems:
        print(f"error: {problems}", file=sys.stderr)
        return 2
    _wait_for_readers()
    print(
        f"Distillery home: {os.environ['DISTILLERY_HOME']}\nProject file: "
        f"{os.environ.get('DISTILLERY_CONFIG', DEMO_CONFIG)}",
        file=sys.stderr,
    )
    compute = config.compute
    from checks.expectations import import_early

    importing = import_early()  # for the suite checks, while the first asset runs
    # Connected (or started) before the run, so a Ray cluster that does not answer is one line before any
    # work; the steps run in this process and find the connection made.
    with use_engine(compute):
        if compute.engine != "local":
            print(f"Compute engine: {engine_description()}", file=sys.stderr)
        result = _execute_distill(
            instance,
            keys,
            run_config={"loggers": {"console": {"config": {"log_level": args.log_level}}}},
            tags={"distillery/cli": "run"},
        )
    importing.join()  # not left running while the interpreter shuts down
    _print_summary(result)
    _record_freshness(freshness, result)
    failed_checks = [e for e in result.get_asset_check_evaluations() if not e.passed]
    if not result.success:
        for reason in _busy_failures(result):
            print(f"error: {reason}", file=sys.stderr)
        print(f"\nThe run FAILED; see the errors above. {_what_changed(freshness, result)}", file=sys.stderr)
        return 1
    if any(e.severity.value == "ERROR" for e in failed_checks):
        return 1
    return 0


def _execute_distill(instance: Any, keys: list[Any] | None, run_config: dict[str, Any], tags: dict[str, str]) -> Any:
    """Run the code location's ``distill`` job (the subset of ``keys``, or all of it) in this process, recorded
    in ``instance`` as the UI records the runs it launches: under that job, with the origin of the workspace's
    code location, so the UI's Re-execute (which finds the job through that origin) works on it. An ad-hoc
    ``materialize`` showed as ``__ephemeral_asset_job__`` with Re-execute disabled, and ``execute_in_process``
    records no origin, which Re-execute refuses.

    No pid tag: a re-execution copies its parent's tags, and recovery would take the new run for this
    process's dead one; the in-process executor records the pid in its first engine event, which
    :func:`resources.recovery.run_pid` reads."""
    import dagster as dg

    # Dagster has no public API that creates a run with its code location's origin outside a code server:
    # these are the calls `dagster job launch` makes (dagster is pinned to one minor version).
    from dagster._core.execution.api import execute_run
    from dagster._core.remote_origin import RemoteJobOrigin, RemoteRepositoryOrigin
    from dagster._core.workspace.load import location_origins_from_yaml_paths

    import definitions

    job = dg.reconstructable(definitions.distill)
    if keys is not None:
        job = job.get_subset(asset_selection=frozenset(keys))  # the checks of those assets come with them
    (location,) = [
        origin
        for origin in location_origins_from_yaml_paths([str(PROJECT_ROOT / "workspace.yaml")])
        if origin.location_name == definitions.CODE_LOCATION
    ]
    run = instance.create_run_for_job(
        job_def=job.get_definition(),
        run_config=run_config,
        tags=tags,
        asset_selection=frozenset(keys) if keys is not None else None,
        remote_job_origin=RemoteJobOrigin(
            RemoteRepositoryOrigin(location, definitions.REPOSITORY), definitions.DISTILL_JOB
        ),
        job_code_origin=job.get_python_origin(),
    )
    return execute_run(job, run, instance)


def _parse_select(text: str, known: set[str]) -> Any:
    """``--select``: comma-separated asset names; ``name+`` adds everything downstream of ``name``,
    ``+name`` everything upstream (what it is made from), ``+name+`` both."""
    import dagster as dg

    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError(f"--select names no asset; known: {sorted(known)}")
    unknown = [item for item in items if item.strip("+") not in known]
    if unknown:
        raise ValueError(f"unknown asset(s) {unknown}; known: {sorted(known)} (name+ adds downstream, +name upstream)")
    selection = None
    for item in items:
        name = item.strip("+")
        part = dg.AssetSelection.assets(name)
        if item.startswith("+"):
            part = part | dg.AssetSelection.assets(name).upstream()
        if item.endswith("+"):
            part = part | dg.AssetSelection.assets(name).downstream()
        selection = part if selection is None else selection | part
    return selection


def _path_problems(config: ProjectConfig, running: set[str]) -> str | None:
    """The message for the files this run would read and cannot (sources for ``raw``, benchmarks for
    ``formatted``), or None: checked before any step, so no table is touched."""
    from curation.core.home import project_config_path
    from curation.core.preflight import benchmark_path_problems, describe, source_path_problems

    problems = source_path_problems(config) if "raw" in running else []
    problems += benchmark_path_problems(config) if "formatted" in running else []
    return describe(project_config_path(), problems) if problems else None


def _what_changed(freshness: Freshness, result: Any) -> str:
    """After a failed run, which assets it replaced (each committed step replaces its tables in one
    transaction and then reports the materialization) and which keep the version they had before."""
    changed: dict[str, str] = {}
    for event in result.get_asset_materialization_events():
        name = event.materialization.asset_key.to_user_string()
        metadata = event.materialization.metadata
        version, rows = metadata.get("data_version"), metadata.get("dagster/row_count")
        before = freshness.state.get(name)
        was = (
            f"was {before.row_count} rows, {before.data_version}"
            if before is not None and before.data_version
            else "was not recorded"
        )
        changed[name] = f"{was}; now {rows.value if rows else '-'} rows, {version.value if version else '-'}"
    if not changed:
        return "No table was changed: every asset keeps its previous version."
    kept = [name for name in freshness.graph if name not in changed]
    lines = ["Replaced by this run:", *(f"  {name} ({what})" for name, what in changed.items())]
    lines.append(f"Not changed by this run (each keeps what it had before): {', '.join(kept) if kept else 'none'}.")
    return "\n".join(lines)


def _say_waiting(message: str) -> None:
    print(f"{message} (Ctrl-C to stop waiting)", file=sys.stderr)


def _wait_for_readers() -> None:
    """Wait here, saying so, while another process has the warehouse open (a notebook, `distillery audit`):
    DuckDB lets one process write or several read, and a step that finds the file held fails in Dagster
    with a traceback. A process still holding it after the wait ends the command with one line
    (:class:`~curation.core.warehouse.WarehouseBusy`, caught by :func:`cmd_run`)."""
    if warehouse_path().exists():
        with Warehouse(warehouse_path()).connect(on_wait=_say_waiting):
            pass


def _busy_failures(result: Any) -> list[str]:
    """The messages of steps that failed because another process held the warehouse, or because the code
    sandbox cannot be set up here: shown again after the run as one line each, not only inside Dagster's
    traceback of the step."""
    reasons = []
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error if event.step_failure_data else None
        while error is not None:
            if error.cls_name in ("WarehouseBusy", "SandboxUnavailable"):
                reasons.append(f"step {event.step_key}: {error.message.strip().partition(f'{error.cls_name}: ')[2]}")
                break
            error = error.cause
    return reasons


def _asset_graph(assets: Sequence[Any]) -> dict[str, list[str]]:
    """``{asset: its upstream assets}``, upstream first."""
    upstream = {a.key.to_user_string(): sorted(k.to_user_string() for k in a.dependency_keys) for a in assets}
    ordered: dict[str, list[str]] = {}
    while len(ordered) < len(upstream):
        for asset, parents in upstream.items():
            if asset not in ordered and all(p in ordered or p not in upstream for p in parents):
                ordered[asset] = [p for p in parents if p in upstream]
    return ordered


def _freshness(graph: dict[str, list[str]], config: ProjectConfig) -> Freshness:
    state = {}
    if warehouse_path().exists():
        with Warehouse(warehouse_path()).connect(read_only=True, on_wait=_say_waiting) as connection:
            state = read_state(connection)
    base = code_fingerprint() + project_fingerprint(config)
    return Freshness(graph, state, base, source_fingerprint(config))


def unverified_assets(result: Any, materialized: set[str], checks: Sequence[Any]) -> set[str]:
    """Assets of the run whose checks did not all pass: a check that failed, or a check (of ``checks``, the
    definitions) of an asset the run materialized that gave no evaluation because it raised (an error is no
    pass)."""
    evaluations = result.get_asset_check_evaluations()
    failed = {e.asset_key.to_user_string() for e in evaluations if not e.passed}
    evaluated = {e.asset_check_key for e in evaluations}
    for definition in checks:
        for key in definition.check_keys:
            if key.asset_key.to_user_string() in materialized and key not in evaluated:
                failed.add(key.asset_key.to_user_string())
    return failed


def _record_freshness(freshness: Freshness, result: Any) -> None:
    """Remember what this run materialized with every check passing, so an unchanged re-run skips it."""
    materialized = {}
    for event in result.get_asset_materialization_events():  # type: ignore[attr-defined]
        metadata = event.materialization.metadata
        version, rows = metadata.get("data_version"), metadata.get("dagster/row_count")
        materialized[event.materialization.asset_key.to_user_string()] = (
            version.value if version else None,
            rows.value if rows else None,
        )
    from definitions import CHECKS

    record, forget = freshness.after_run(materialized, unverified_assets(result, set(materialized), CHECKS))
    if not warehouse_path().exists():
        return
    with Warehouse(warehouse_path()).connect(on_wait=_say_waiting) as connection:
        forget_state(connection, forget)
        record_state(connection, record)


def _print_state(freshness: Freshness) -> None:
    print("\nasset             rows     data version")
    for asset in freshness.graph:
        state = freshness.state[asset]
        rows = "-" if state.row_count is None else state.row_count
        print(f"{asset:<16} {rows:>6}     {state.data_version or '-'}")
    print(f"warehouse: {warehouse_path()}")


def _print_summary(result: object) -> None:
    materializations = result.get_asset_materialization_events()  # type: ignore[attr-defined]
    print("\nasset             rows     data version")
    for event in materializations:
        materialization = event.materialization
        metadata = materialization.metadata
        rows = metadata.get("dagster/row_count")
        version = metadata.get("data_version")
        print(
            f"{materialization.asset_key.to_user_string():<16} {rows.value if rows else '-':>6}     "
            f"{version.value if version else '-'}"
        )
    evaluations = result.get_asset_check_evaluations()  # type: ignore[attr-defined]
    passed = sum(1 for e in evaluations if e.passed)
    print(f"\nchecks: {passed} passed, {len(evaluations) - passed} failed")
    for evaluation in evaluations:
        if not evaluation.passed:
            print(
                f"  FAILED {evaluation.asset_key.to_user_string()}:{evaluation.check_name} "
                f"({evaluation.severity.value})"
            )
    print(f"warehouse: {warehouse_path()}")


def cmd_ui(args: argparse.Namespace) -> int:
    _set_home(args)
    _load_config_or_exit()
    # The dagster script of this interpreter's environment, so `.venv/bin/distillery ui` works unactivated.
    beside = Path(sys.executable).parent / "dagster"
    dagster = str(beside) if beside.exists() else shutil.which("dagster") or "dagster"
    command = [dagster, "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"), "-h", args.host, "-p", str(args.port)]
    # The webserver, the daemon and the code server they start inherit this environment: DISTILLERY_CONFIG
    # (from --config) is the project the code location loads, so runs launched in the UI use it too.
    settings = " ".join(
        f"{name}={os.environ[name]}"
        for name in ("DISTILLERY_HOME", "DISTILLERY_CONFIG", "DAGSTER_HOME")
        if name in os.environ
    )
    print(f"{settings} {' '.join(command)}", file=sys.stderr)
    from resources.recovery import open_instance

    open_instance().dispose()  # the storages exist before the webserver, daemon and code server open them
    return subprocess.call(command, cwd=PROJECT_ROOT)


def cmd_preview(args: argparse.Namespace) -> int:
    """Run the cleaners and filters on a sample of a table and print what they would do."""
    _set_home(args, writable=False)
    _load_config_or_exit()
    import duckdb

    from curation.core.home import project_config_path
    from curation.core.schema import iter_rows
    from curation.core.warehouse import WarehouseBusy, quote, read_batches
    from curation.filter.chain import project_chain
    from curation.filter.runner import preview, preview_markdown

    config = load_project(project_config_path())
    cleaners, filters = project_chain(config)
    try:
        with _open_read_only() as connection:
            batches = read_batches(
                connection,
                f"SELECT * FROM {quote(args.table)} USING SAMPLE reservoir({int(args.sample)} ROWS) REPEATABLE (0)",
            )
            result = preview(iter_rows(batches), cleaners, filters)
    except (FileNotFoundError, WarehouseBusy) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except duckdb.CatalogException:
        print(
            f"error: the warehouse has no table {args.table!r} yet; run `distillery run --select raw,deduped` "
            "first (or pass --table)",
            file=sys.stderr,
        )
        return 2
    print(preview_markdown(result))
    return 0


def _open_read_only(timeout_s: float = 10.0):
    """The warehouse, read-only; a run writing the file is waited on for ``timeout_s`` (or
    ``$DISTILLERY_LOCK_TIMEOUT_S``), saying so, then reported in one line."""
    from curation.core.warehouse import LOCK_TIMEOUT_ENV, Warehouse

    timeout_s = float(os.environ.get(LOCK_TIMEOUT_ENV, timeout_s))
    return Warehouse(warehouse_path(), lock_timeout_s=timeout_s).connect(read_only=True, on_wait=_say_waiting)


def cmd_audit(args: argparse.Namespace) -> int:
    """The full chain of one row (by row_id or file#record) back to the raw records, and where it went."""
    _set_home(args, writable=False)
    from curation.audit.trace import RowNotFound, audit_row
    from curation.core.warehouse import WarehouseBusy

    try:
        with _open_read_only() as connection:
            audits = [audit_row(connection, key) for key in args.row_id]
    except (FileNotFoundError, WarehouseBusy) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RowNotFound as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.json:
        payload = [a.as_dict() for a in audits]
        print(json.dumps(payload[0] if len(payload) == 1 else payload, indent=2, ensure_ascii=False))
    else:
        print("\n\n".join(a.to_text() for a in audits))
    return 0


def _report_use(folder: Path) -> str | None:
    """The intended use the report in ``folder`` was judged for (None: no readable report there)."""
    try:
        return json.loads((folder / "compliance.json").read_text(encoding="utf-8")).get("intended_use")
    except (OSError, ValueError, AttributeError):
        return None


def cmd_report(args: argparse.Namespace) -> int:
    """Write the compliance report of a dataset version (Markdown, HTML, JSON, violations.csv)."""
    _set_home(args, writable=False)  # only the report's folder is written (--out, or reports/ in the home)
    _load_config_or_exit()
    from curation.audit.report import CompliancePolicy, build_report, write_report
    from curation.audit.trace import discover
    from curation.core.home import project_config_path, reports_dir
    from curation.core.warehouse import WarehouseBusy, content_hash

    config = load_project(project_config_path())
    try:
        policy = CompliancePolicy.from_config(config.policy)
    except ValueError as error:
        print(f"error: {project_config_path()}: {error}", file=sys.stderr)
        return 2
    # The project's own use writes where the compliance_report asset does (the same report of the same data);
    # any other use writes beside it, in a folder of its own, so the asset's files (and its metadata, which
    # points at them) keep describing the project's intended use. A report already there for another use (the
    # project file's use changed since) is not written over either.
    other_use = bool(args.intended_use) and args.intended_use != policy.intended_use
    if args.intended_use:
        policy = CompliancePolicy(args.intended_use, policy.licenses, policy.teachers)
    try:
        with _open_read_only() as connection:
            version = content_hash(connection, args.table) if args.table in discover(connection).datasets else ""
            report = build_report(
                connection,
                policy,
                args.table,
                data_version=version,
                project=config.name,
                project_file_hash=config.file_hash,
            )
            default = reports_dir() / version
            if other_use or _report_use(default) not in (None, policy.intended_use):
                default = default / policy.intended_use
            out = Path(args.out) if args.out else default
            paths = write_report(connection, report, out)
    except (FileNotFoundError, WarehouseBusy, LookupError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the report's folder: a home on a read-only disk, or of another user
        where = error.filename or (args.out or reports_dir())
        print(
            f"error: the report cannot be written to {where} ({error.strerror or error}); pass --out a folder "
            "this user can write",
            file=sys.stderr,
        )
        return 2
    print(report.summary_markdown())
    print("\n" + "\n".join(f"{kind}: {path}" for kind, path in paths.items()))
    return 1 if args.check and not report.compliant else 0


def reference_pages() -> dict[str, str]:
    """The reference pages generated from the registries: file name in docs/ → its Markdown."""
    from curation.filter.base import reference_markdown as filters_reference
    from curation.ingest.mappings import mappings_reference
    from curation.synth.methods import methods_reference

    return {
        "filters.md": filters_reference(),
        "mappings.md": mappings_reference(),
        "synthesis-methods.md": methods_reference(),
    }


def cmd_reference(args: argparse.Namespace) -> int:
    folder = Path(args.out) if args.out else PROJECT_ROOT / "docs"
    stale = []
    for name, text in reference_pages().items():
        path = folder / name
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
            continue
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    if stale:
        print(
            f"out of date with the registries: {', '.join(stale)}; regenerate with `distillery reference`",
            file=sys.stderr,
        )
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distillery", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="materialize the pipeline (or --select a subset) through Dagster")
    run.add_argument("--config", help="project file (default: $DISTILLERY_CONFIG or the bundled demo)")
    run.add_argument("--home", help="state folder (default: $DISTILLERY_HOME or ./.distillery)")
    run.add_argument(
        "--select",
        help="comma-separated assets, e.g. raw,deduped; filtered+ adds everything downstream, +formatted "
        "everything upstream",
    )
    run.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="least severe Dagster log lines shown on the terminal (default: INFO)",
    )
    run.add_argument("--force", action="store_true", help="materialize every asset, even those that are up to date")
    run.set_defaults(func=cmd_run)

    ui = sub.add_parser("ui", help="start the Dagster UI (webserver + daemon) on this home")
    ui.add_argument(
        "--config", help="project file runs launched in the UI use (default: $DISTILLERY_CONFIG or the bundled demo)"
    )
    ui.add_argument("--home", help="state folder (default: $DISTILLERY_HOME or ./.distillery)")
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default: localhost only)")
    ui.add_argument("--port", type=int, default=3000, help="port of the UI (default: 3000)")
    ui.set_defaults(func=cmd_ui)

    prev = sub.add_parser("preview", help="show what the cleaners and filters would do to a sample, writing nothing")
    prev.add_argument("--config", help="project file (default: $DISTILLERY_CONFIG or the bundled demo)")
    prev.add_argument("--home", help="state folder (default: $DISTILLERY_HOME or ./.distillery)")
    prev.add_argument("--table", default="deduped", help="table to sample (default: deduped)")
    prev.add_argument("--sample", type=int, default=500, help="rows to sample (default: 500)")
    prev.set_defaults(func=cmd_preview)

    aud = sub.add_parser(
        "audit",
        help="a row's full chain back to its raw records: sources, licences, every "
        "operation, teacher, judge; where it went or why it stopped",
    )
    aud.add_argument("row_id", nargs="+", help="row id (any dataset version) or the file#record it was read from")
    aud.add_argument("--json", action="store_true", help="machine-readable output")
    aud.add_argument("--home", help="state folder to read (default: $DISTILLERY_HOME or ./.distillery)")
    aud.set_defaults(func=cmd_audit)

    rep = sub.add_parser("report", help="compliance report of a dataset version (Markdown, HTML, violations.csv)")
    rep.add_argument("--config", help="project file (default: $DISTILLERY_CONFIG or the bundled demo)")
    rep.add_argument("--home", help="state folder to read (default: $DISTILLERY_HOME or ./.distillery)")
    rep.add_argument("--table", default="formatted", help="dataset version to report on (default: formatted)")
    rep.add_argument(
        "--out",
        help="folder for the report (default: $DISTILLERY_HOME/reports/<data version>, the compliance_report "
        "asset's; for an --intended-use other than the project's, reports/<data version>/<intended use>)",
    )
    rep.add_argument(
        "--intended-use",
        choices=["research", "commercial"],
        help="judge against this use instead of the project file's policy.intended_use",
    )
    rep.add_argument("--check", action="store_true", help="exit with status 1 when any row violates the policy")
    rep.set_defaults(func=cmd_report)

    ref = sub.add_parser(
        "reference",
        help="write the reference pages generated from the registries (filters, "
        "mappings, synthesis methods) into docs/",
    )
    ref.add_argument("--out", help="folder to write them to (default: the docs/ folder beside this program)")
    ref.add_argument("--check", action="store_true", help="write nothing; exit with status 1 when a page is stale")
    ref.set_defaults(func=cmd_reference)
    return parser


def main(argv: list[str] | None = None) -> int:
    # The pipeline needs only transformers' tokenizers; its "PyTorch was not found" advice is noise here.
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # The reader went away (`distillery audit … | head`): stop quietly, as a tool killed by SIGPIPE
        # would, and keep Python from reporting the same broken pipe again while it flushes at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("distillery")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


if __name__ == "__main__":
    raise SystemExit(main())
