"""The whole pipeline at scale, run the way a user runs it: ``distillery run`` in a subprocess.

For each size the mix of :mod:`benchmarks.scale_mix` (SFT, chat and preference rows from the shared
datasets, ~10% exact and ~5% near duplicates with known pairs, several licences, human and
model-generated rows, a few malformed records) is built once and cached under ``--workdir``, then:

* the first run, raw → formatted and every check: wall seconds, peak RSS and CPU seconds of the whole
  process tree (sampled from /proc every 0.2 s), warehouse size, and per step seconds and rows/s read
  from the Dagster event log, with the tree's CPU seconds and cores busy while each step ran (how far
  from the machine's cores a step is, and the least wall time the run's CPU allows); checks' share of
  the step time;
* the output verified: every record is a raw row or a quarantine entry, every known exact pair and
  (reported as a rate) every known near pair collapsed to one row, all checks passed;
* a re-run on unchanged input and a re-run after appending 1% new rows, as shares of the first run;
* on the largest size, ``audit`` of sampled rows in-process (ms per row) and as a command, and
  ``report`` as a command.

Ratios are against baselines measured in the same run (the smaller size, the first run); nothing here
is a timed test. Results are printed as Markdown and written to ``<workdir>/results.json``.

    .venv/bin/python -m benchmarks.pipeline_scale                          # 250k, 500k, 1M
    .venv/bin/python -m benchmarks.pipeline_scale --rows 20000 50000       # a quick look
    .venv/bin/python -m benchmarks.pipeline_scale --rows 100000 --engine ray --no-reruns  # ray vs local
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import psutil

from benchmarks.scale_mix import REPO, build_mix, point_at_checkout

CHECK_SEPARATOR = "_"


@dataclass
class RunFigures:
    wall_s: float
    peak_rss_mib: float
    returncode: int
    peak_pss_mib: float = 0.0
    """Peak of the tree's proportional set size: each page shared between processes (a worker forked from
    its fork server, shared libraries) counted once, as the kernel charges memory; RSS counts it per process."""
    steps: dict[str, float] = field(default_factory=dict)  # step key -> seconds
    step_peak_mib: dict[str, float] = field(default_factory=dict)  # step key -> peak tree RSS while it ran
    output_tail: str = ""
    samples: list[tuple[float, int]] = field(default_factory=list)  # (epoch seconds, tree RSS bytes)
    peak_driver_mib: float = 0.0
    """Peak RSS of the command's own process (the Dagster run: on Ray, the driver)."""
    cpu_s: float = 0.0
    """CPU seconds (user + system) of the whole tree: what the run costs however many cores it has."""
    cpu_samples: list[tuple[float, float]] = field(default_factory=list)  # (epoch seconds, tree CPU s so far)
    step_cpu_s: dict[str, float] = field(default_factory=dict)  # step key -> tree CPU seconds while it ran


def _tree_memory(members: list[psutil.Process], *, proportional: bool) -> tuple[int, int]:
    """RSS and (when ``proportional``, else 0) PSS of the processes of a tree, in bytes."""
    rss = pss = 0
    for member in members:
        with contextlib.suppress(psutil.Error):  # a step process may exit between listing and reading
            if proportional:
                info = member.memory_full_info()  # /proc/PID/smaps_rollup
                rss, pss = rss + info.rss, pss + info.pss
            else:
                rss += member.memory_info().rss
    return rss, pss


class _TreeCpu:
    """CPU seconds used so far by a process tree: each process's own user + system time as last seen, kept after
    it exits (what it used in its last sampling interval is missed: a slight undercount)."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, float], float] = {}

    def sample(self, members: list[psutil.Process]) -> float:
        for member in members:
            with contextlib.suppress(psutil.Error):
                times = member.cpu_times()
                self.seen[member.pid, member.create_time()] = times.user + times.system
        return sum(self.seen.values())


def run_command(args: list[str], env: dict[str, str]) -> RunFigures:
    """Run a command, sampling the RSS and CPU time (every 0.2 s) and PSS (every second) of its whole process
    tree (Dagster runs each step in a child, and stages start worker processes)."""
    start = time.perf_counter()
    popen = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = peak_pss = peak_driver = 0
    samples: list[tuple[float, int]] = []
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(popen.stdout or []), daemon=True)
    reader.start()
    process = psutil.Process(popen.pid)
    cpu = _TreeCpu()
    cpu_samples: list[tuple[float, float]] = []
    tick = 0
    while popen.poll() is None:
        with contextlib.suppress(psutil.Error):
            members = [process, *process.children(recursive=True)]  # listed once for both samples
            rss, pss = _tree_memory(members, proportional=tick % 5 == 0)
            peak, peak_pss = max(peak, rss), max(peak_pss, pss)
            peak_driver = max(peak_driver, process.memory_info().rss)
            now = time.time()
            samples.append((now, rss))
            cpu_samples.append((now, cpu.sample(members)))
        tick += 1
        time.sleep(0.2)
    reader.join()
    wall = time.perf_counter() - start
    return RunFigures(
        wall,
        peak / 2**20,
        popen.returncode,
        peak_pss_mib=peak_pss / 2**20,
        peak_driver_mib=peak_driver / 2**20,
        output_tail="".join(output)[-3000:],
        samples=samples,
        cpu_s=cpu_samples[-1][1] if cpu_samples else 0.0,
        cpu_samples=cpu_samples,
    )


def _cpu_at(samples: list[tuple[float, float]], moment: float) -> float:
    """Tree CPU seconds used by ``moment`` (the last sample taken at or before it)."""
    at = bisect.bisect_right(samples, moment, key=lambda sample: sample[0])
    return samples[at - 1][1] if at else 0.0


def _environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTILLERY_", "DAGSTER_"))}
    return env | {"DISTILLERY_HOME": str(home)}


def distillery(*args: str, home: Path) -> RunFigures:
    return run_command([sys.executable, "-m", "distillery_cli", *args, "--home", str(home)], _environment(home))


def step_intervals(home: Path) -> dict[str, tuple[float, float]]:
    """(start, end) epoch seconds of each step of the home's latest run, from the Dagster event log."""
    code = (
        "import json, sys\n"
        "from dagster import DagsterEventType, DagsterInstance\n"
        "instance = DagsterInstance.get()\n"
        "run = instance.get_runs(limit=1)[0]\n"
        "start, seconds = {}, {}\n"
        "for record in instance.all_logs(run.run_id):\n"
        "    event = record.dagster_event\n"
        "    if event is None: continue\n"
        "    if event.event_type == DagsterEventType.STEP_START: start[event.step_key] = record.timestamp\n"
        "    elif event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):\n"
        "        seconds[event.step_key] = (start[event.step_key], record.timestamp)\n"
        "print(json.dumps(seconds))\n"
    )
    env = _environment(home) | {"DAGSTER_HOME": str(home / "dagster")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout)


def asset_names() -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", "from definitions import ASSETS\nfor a in ASSETS: print(a.key.to_user_string())"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return set(out.stdout.split())


def verify(home: Path, mix: Path) -> dict[str, Any]:
    """Rows conserved, known duplicate pairs collapsed, from the warehouse itself."""
    info = json.loads((mix / "duplicates.json").read_text("utf-8"))
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as connection:
        (raw_rows,) = connection.execute("SELECT count(*) FROM raw").fetchone() or (0,)
        (quarantined,) = connection.execute("SELECT count(*) FROM quarantine").fetchone() or (0,)

        def collapsed(pairs: list[list[Any]]) -> float:
            if not pairs:
                return 1.0
            connection.execute("CREATE OR REPLACE TEMP TABLE pairs (a VARCHAR, b VARCHAR)")
            connection.executemany(
                "INSERT INTO pairs VALUES (?, ?)", [(f"{a}#{i}", f"{b}#{j}") for a, i, b, j in pairs]
            )
            (together,) = connection.execute(
                "SELECT count(*) FROM pairs p JOIN raw ra ON ra.source_uri = p.a JOIN raw rb ON rb.source_uri = p.b "
                "WHERE NOT EXISTS "
                "(SELECT 1 FROM dedup_clusters c WHERE c.removed AND c.row_id IN (ra.row_id, rb.row_id))"
            ).fetchone() or (0,)
            return 1 - together / len(pairs)

        return {
            "records": info["records"],
            "raw_rows": raw_rows,
            "quarantined": quarantined,
            "conserved": raw_rows + quarantined == info["records"],
            "exact_pairs_collapsed": collapsed(info["exact_pairs"]),
            "near_pairs_collapsed": collapsed(info["near_pairs"]),
        }


_APPENDED = "appended.json"
"""Written before rows are appended to a mix's SFT file: its size before, so that a benchmark killed before
cutting the rows off again has its next invocation do it (else that one measures another mix than its
``duplicates.json`` describes, and rows do not add up)."""


def restore_mix(mix: Path) -> None:
    """Cut the SFT file back to its size before :func:`append_rows`, if rows appended are still there."""
    marker = mix / _APPENDED
    if not marker.exists():
        return
    size = json.loads(marker.read_text("utf-8"))["sft_bytes"]
    with (mix / "sft_alpaca.jsonl").open("r+b") as handle:
        handle.truncate(size)
    marker.unlink()


def append_rows(mix: Path, share: float, seed: int) -> int:
    """Append ``share`` new rows (another seed's records) to the mix's SFT file; returns how many.
    :func:`restore_mix` takes them off again."""
    (mix / _APPENDED).write_text(json.dumps({"sft_bytes": (mix / "sft_alpaca.jsonl").stat().st_size}), "utf-8")
    fresh = mix.parent / f"{mix.name}-append"
    records = [line for line in (mix / "sft_alpaca.jsonl").read_text("utf-8").splitlines() if line.startswith("{")]
    count = max(1, int(len(records) / 0.4 * share))  # the SFT file holds ~40% of the rows
    build_mix(fresh, count * 3, seed=seed + 1)
    new = [line for line in (fresh / "sft_alpaca.jsonl").read_text("utf-8").splitlines() if line.endswith("}")]
    with (mix / "sft_alpaca.jsonl").open("a", encoding="utf-8") as handle:
        handle.writelines(line + "\n" for line in new[:count])
    shutil.rmtree(fresh)
    return min(count, len(new))


def time_audits(home: Path, samples: int = 20) -> dict[str, float]:
    """ms per ``audit_row`` in-process (a warm connection, as the UI or a notebook holds one) and seconds
    of ``distillery audit`` as a command."""
    from curation.audit.trace import audit_row

    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as connection:
        (total,) = connection.execute("SELECT count(*) FROM formatted").fetchone() or (0,)
        rng = random.Random(0)
        offsets = sorted(rng.randrange(total) for _ in range(samples))
        ids = [connection.execute("SELECT row_id FROM formatted LIMIT 1 OFFSET ?", [o]).fetchone()[0] for o in offsets]
        audit_row(connection, ids[0])  # first call pays for table discovery and caches
        timings = []
        for row_id in ids:
            start = time.perf_counter()
            audit_row(connection, row_id)
            timings.append((time.perf_counter() - start) * 1000)
    command = distillery("audit", ids[0], home=home)
    return {
        "audit_ms_median": statistics.median(timings),
        "audit_ms_max": max(timings),
        "audit_command_s": command.wall_s,
    }


def measure_size(rows: int, workdir: Path, seed: int, reruns: bool) -> dict[str, Any]:
    mix = workdir / f"mix-{rows}"
    if not (mix / "duplicates.json").exists():
        started = time.perf_counter()
        build_mix(mix, rows, seed)
        print(f"built the {rows:,}-row mix in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    restore_mix(mix)
    point_at_checkout(mix)
    home = workdir / f"home-{rows}"
    shutil.rmtree(home, ignore_errors=True)
    config = str(mix / "distillery.yaml")
    first = distillery("run", "--config", config, home=home)
    if first.returncode != 0:  # its times would be of part of the pipeline, and the re-runs of nothing
        print(first.output_tail, file=sys.stderr)
        raise SystemExit(f"the first run of the {rows:,}-row mix failed (exit {first.returncode}); see above")
    intervals = step_intervals(home)
    first.steps = {key: end - begin for key, (begin, end) in intervals.items()}
    first.step_peak_mib = {
        key: max((rss for at, rss in first.samples if begin <= at <= end), default=0) / 2**20
        for key, (begin, end) in intervals.items()
    }
    first.step_cpu_s = {
        key: _cpu_at(first.cpu_samples, end) - _cpu_at(first.cpu_samples, begin)
        for key, (begin, end) in intervals.items()
    }
    result: dict[str, Any] = {
        "rows": rows,
        "first": first.__dict__ | {"output_tail": None, "samples": None, "cpu_samples": None},
        "warehouse_mib": (home / "warehouse.duckdb").stat().st_size / 2**20,
        "verified": verify(home, mix),
        "rows_per_asset": asset_rows(home),
    }
    print(
        f"{rows:,} rows: first run {first.wall_s:.0f} s, peak RSS {first.peak_rss_mib:.0f} MiB "
        f"(PSS {first.peak_pss_mib:.0f} MiB)",
        file=sys.stderr,
    )
    if reruns:
        again = distillery("run", "--config", config, home=home)
        result["rerun_unchanged"] = {"wall_s": again.wall_s, "returncode": again.returncode}
        try:
            added = append_rows(mix, 0.01, seed)
            more = distillery("run", "--config", config, home=home)
        finally:  # the cached mix stays the one its duplicates.json describes
            restore_mix(mix)
        steps = {key: end - begin for key, (begin, end) in step_intervals(home).items()}
        result["rerun_plus_1pct"] = {
            "wall_s": more.wall_s,
            "returncode": more.returncode,
            "rows_added": added,
            "steps": steps,
            "peak_rss_mib": more.peak_rss_mib,
            "peak_pss_mib": more.peak_pss_mib,
        }
    return result


DATASETS = ("raw", "deduped", "filtered", "synthetic", "synthetic_mixed", "formatted")


def data_versions(home: Path) -> dict[str, str]:
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as connection:
        return dict(connection.execute("SELECT asset, data_version FROM asset_state").fetchall())


def measure_ray(rows: int, workdir: Path, local_wall_s: float, intermediates: bool = False) -> dict[str, Any]:
    """The same mix on ``compute.engine: ray`` (a Ray of this machine's cores started by the run), from a
    project file beside the local one (same paths, so the same row ids): wall time against the local
    engine's first run of this invocation, per-step seconds, memory of the whole tree and of the driver,
    and whether every dataset's data version equals the local run's. ``intermediates``: the tasks exchange
    batches as Parquet files in the home (``compute.intermediates``) instead of through the object store."""
    mix, home = workdir / f"mix-{rows}", workdir / f"home-ray-{rows}"
    shutil.rmtree(home, ignore_errors=True)
    config = mix / "distillery-ray.yaml"
    compute = "\ncompute:\n  engine: ray\n" + ("  intermediates: parts\n" if intermediates else "")
    config.write_text((mix / "distillery.yaml").read_text() + compute)
    run = distillery("run", "--config", str(config), home=home)
    if run.returncode != 0:
        print(run.output_tail, file=sys.stderr)
    local, ray = data_versions(workdir / f"home-{rows}"), data_versions(home)
    return {
        "intermediates": "parquet" if intermediates else "object store",
        "steps": {key: end - begin for key, (begin, end) in step_intervals(home).items()},
        "wall_s": run.wall_s,
        "overhead": run.wall_s / local_wall_s,
        "peak_rss_mib": run.peak_rss_mib,
        "peak_pss_mib": run.peak_pss_mib,
        "peak_driver_mib": run.peak_driver_mib,
        "returncode": run.returncode,
        "same_versions": all(local.get(name) == ray.get(name) for name in DATASETS),
    }


def asset_rows(home: Path) -> dict[str, int]:
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as connection:
        tables = {r[0] for r in connection.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        names = ("raw", "deduped", "filtered", "synthetic", "synthetic_mixed", "formatted")
        return {
            name: connection.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in names if name in tables
        }


def markdown(results: list[dict[str, Any]], assets: set[str]) -> str:
    lines = [
        "| rows | wall s | peak RSS MiB | peak PSS MiB | warehouse MiB | checks share | re-run | re-run +1% "
        "| conserved | exact pairs | near pairs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        first = r["first"]
        steps = first["steps"]
        checks = sum(s for k, s in steps.items() if k not in assets)
        share = checks / max(sum(steps.values()), 1e-9)
        rerun = r.get("rerun_unchanged", {}).get("wall_s")
        plus = r.get("rerun_plus_1pct", {}).get("wall_s")
        rerun_share = "" if rerun is None else f"{rerun / first['wall_s']:.0%}"
        plus_share = "" if plus is None else f"{plus / first['wall_s']:.0%}"
        v = r["verified"]
        lines.append(
            f"| {r['rows']:,} | {first['wall_s']:.0f} | {first['peak_rss_mib']:.0f} | "
            f"{first.get('peak_pss_mib', 0):.0f} | {r['warehouse_mib']:.0f} | "
            f"{share:.0%} | {rerun_share} | {plus_share} | {v['conserved']} | "
            f"{v['exact_pairs_collapsed']:.1%} | {v['near_pairs_collapsed']:.1%} |"
        )
    if len(results) > 1:
        a, b = results[-2], results[-1]
        lines.append(
            f"\ntime({b['rows']:,}) / time({a['rows']:,}) = {b['first']['wall_s'] / a['first']['wall_s']:.2f} "
            f"for {b['rows'] / a['rows']:.1f}x the rows"
        )
    last = results[-1]
    first = last["first"]
    cores = os.cpu_count() or 1
    if first.get("cpu_s"):
        lines.append(
            f"\nCPU of the {last['rows']:,}-row first run: {first['cpu_s']:,.0f} s over the process tree, "
            f"{first['cpu_s'] / first['wall_s']:.2f} of {cores} cores busy on average; at this CPU the run "
            f"takes at least {first['cpu_s'] / cores:,.0f} s on {cores} cores."
        )
    lines.append(
        f"\nSteps of the {last['rows']:,}-row run (seconds, rows/s of the asset's output, CPU seconds of the "
        "process tree and cores busy while the step ran, peak RSS of the tree):\n"
    )
    lines.append("| step | s | rows/s | CPU s | cores busy | peak RSS MiB |")
    lines.append("|---|---|---|---|---|---|")
    peaks = first.get("step_peak_mib", {})
    cpu = first.get("step_cpu_s", {})
    for key, seconds in sorted(first["steps"].items(), key=lambda kv: -kv[1]):
        rows = last["rows_per_asset"].get(key)
        rate = "" if not rows else f"{rows / seconds:,.0f}"
        used = cpu.get(key)
        busy = "" if used is None else f"{used / max(seconds, 1e-9):.2f}"
        lines.append(
            f"| {key} | {seconds:.1f} | {rate} | {'' if used is None else f'{used:.1f}'} | {busy} | "
            f"{peaks.get(key, 0):.0f} |"
        )
    plus = last.get("rerun_plus_1pct", {}).get("steps")
    if plus:
        rerun = last["rerun_plus_1pct"]
        lines.append(
            f"\nSlowest steps of the re-run after appending 1% rows (seconds; its peak RSS of the tree "
            f"{rerun.get('peak_rss_mib', 0):.0f} MiB, PSS {rerun.get('peak_pss_mib', 0):.0f} MiB):\n"
        )
        lines += ["| step | s |", "|---|---|"]
        lines += [f"| {key} | {seconds:.1f} |" for key, seconds in sorted(plus.items(), key=lambda kv: -kv[1])[:12]]
    if any("ray" in r for r in results):
        lines.append(
            "\nThe ray engine (a Ray of this machine's cores started by the run), against the local runs above:\n"
        )
        lines.append(
            "| rows | wall s | × local | peak RSS MiB (tree) | peak PSS MiB | driver peak RSS MiB | same versions |"
        )
        lines.append("|---|---|---|---|---|---|---|")
        for r in results:
            if "ray" in r:
                ray = r["ray"]
                lines.append(
                    f"| {r['rows']:,} | {ray['wall_s']:.0f} | {ray['overhead']:.2f} | {ray['peak_rss_mib']:.0f} | "
                    f"{ray['peak_pss_mib']:.0f} | {ray['peak_driver_mib']:.0f} | {ray['same_versions']} |"
                )
        ray_steps = last.get("ray", {}).get("steps")
        if ray_steps:
            local_steps = last["first"]["steps"]
            lines.append(f"\nSteps of the {last['rows']:,}-row run on each engine (seconds):\n")
            lines += ["| step | local | ray | ray / local |", "|---|---|---|---|"]
            for key in sorted(set(local_steps) | set(ray_steps), key=lambda k: -local_steps.get(k, 0)):
                here, there = local_steps.get(key), ray_steps.get(key)
                ratio = f"{there / here:.2f}" if here and there else ""
                lines.append(f"| {key} | {here or 0:.1f} | {there or 0:.1f} | {ratio} |")
    for name in ("audit_ms_median", "audit_ms_max", "audit_command_s", "report_command_s"):
        if name in last:
            lines.append(f"\n{name}: {last[name]:.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[250_000, 500_000, 1_000_000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/distillery-scale"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-reruns", action="store_true", help="skip the re-runs (unchanged, +1%%)")
    parser.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="ray: after each size's local run, run the same mix on the ray engine and compare",
    )
    parser.add_argument(
        "--intermediates",
        action="store_true",
        help="with --engine ray: the tasks exchange batches as Parquet files (compute.intermediates)",
    )
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for rows in args.rows:
        result = measure_size(rows, args.workdir, args.seed, not args.no_reruns)
        if args.engine == "ray":
            result["ray"] = measure_ray(rows, args.workdir, result["first"]["wall_s"], args.intermediates)
        results.append(result)
        (args.workdir / "results.json").write_text(json.dumps(results, indent=1), "utf-8")
    largest = results[-1]
    home = args.workdir / f"home-{largest['rows']}"
    largest |= time_audits(home)
    config = args.workdir / f"mix-{largest['rows']}" / "distillery.yaml"
    report = distillery("report", "--config", str(config), home=home)
    largest["report_command_s"] = report.wall_s
    (args.workdir / "results.json").write_text(json.dumps(results, indent=1), "utf-8")
    print(markdown(results, asset_names()))


if __name__ == "__main__":
    main()
