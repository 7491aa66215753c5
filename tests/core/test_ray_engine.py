"""The ``ray`` compute engine: the same ordered results as the local engine, errors raised as themselves,
retries after a worker dies, and one clear error for a cluster that is not there."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pytest

from curation.core.config import ComputeConfig
from curation.core.parallel import engine_description, map_ordered, use_engine, workers_for
from curation.core.ray_engine import EngineUnavailable

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

RAY = ComputeConfig(engine="ray", workers=2)

_STATE: dict[str, int] = {}


def _remember(factor: int) -> None:
    _STATE["factor"] = factor


def _scaled_sum(batch: pa.RecordBatch) -> tuple[int, int]:
    return batch.num_rows, sum(batch.column("n").to_pylist()) * _STATE["factor"]


def _reject_odd(batch: pa.RecordBatch) -> int:
    if batch.num_rows % 2:
        raise ValueError(f"odd batch of {batch.num_rows} rows")
    return batch.num_rows


def _slow_unless_retried(batch: pa.RecordBatch) -> tuple[int, int]:
    """Sleeps the first time a worker process sees the marked batch: long enough to be killed."""
    marker = Path(batch.column("marker")[0].as_py())
    if batch.num_rows == 7 and not marker.exists():
        marker.write_text(str(os.getpid()))
        time.sleep(60)
    return batch.num_rows, os.getpid()


def _batches(sizes: range) -> list[pa.RecordBatch]:
    return [pa.record_batch({"n": list(range(size))}) for size in sizes]


@pytest.fixture(scope="module")
def ray_engine() -> Iterator[None]:
    import ray

    with use_engine(RAY):
        yield
    ray.shutdown()  # a Ray started here lives as long as its process: this test worker's


def test_ray_maps_give_the_local_results_in_input_order(ray_engine: None) -> None:
    batches = _batches(range(1, 40))
    on_ray = list(map_ordered(_scaled_sum, batches, workers_for(10, None), _remember, (3,)))
    local = list(map_ordered(_scaled_sum, batches, 1, _remember, (3,)))
    assert on_ray == local == [(n, 3 * n * (n - 1) // 2) for n in range(1, 40)]
    assert engine_description().startswith("ray (started here, 2 CPUs)")
    # A second map with other settings: each worker runs the new initializer before its first batch.
    assert [total for _, total in map_ordered(_scaled_sum, batches[:5], 2, _remember, (5,))] == [
        5 * n * (n - 1) // 2 for n in range(1, 6)
    ]


def test_an_error_in_a_batch_is_raised_as_itself(ray_engine: None) -> None:
    with pytest.raises(ValueError, match="odd batch of 3 rows"):
        list(map_ordered(_reject_odd, _batches(range(2, 9)), 2))


@pytest.mark.parametrize("through", ["object store", "parquet"])
def test_a_killed_worker_is_retried_without_losing_or_repeating_a_batch(
    ray_engine: None, tmp_path: Path, through: str
) -> None:
    marker = tmp_path / "killed"
    batches = [pa.record_batch({"marker": [str(marker)] * size}) for size in range(1, 15)]
    root = tmp_path / "parts"
    settings = ComputeConfig(engine="ray", workers=2, intermediates=str(root) if through == "parquet" else None)
    with use_engine(settings), ThreadPoolExecutor(1) as driver:  # the map submits as it is consumed
        consumed = driver.submit(list, map_ordered(_slow_unless_retried, batches, 2))
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "the marked batch never started"
        os.kill(_wait_for_pid(marker), signal.SIGKILL)
        got = consumed.result(timeout=120)
    assert [rows for rows, _ in got] == list(range(1, 15))  # every batch once, in order
    killed = int(marker.read_text())
    assert dict(got)[7] != killed  # the marked batch was run again by another worker process
    assert not root.exists() or list(root.iterdir()) == []  # the killed attempt's files went with its map


def _wait_for_pid(marker: Path) -> int:
    for _ in range(50):
        text = marker.read_text()
        if text:
            return int(text)
        time.sleep(0.1)
    raise AssertionError("the worker never wrote its pid")


def test_an_unreachable_cluster_is_one_clear_error_before_any_work() -> None:
    started = time.monotonic()
    for address in ("127.0.0.1:9", "ray://127.0.0.1:9"):
        with (
            pytest.raises(EngineUnavailable, match=r"compute.address .*nothing answers at 127.0.0.1:9"),
            use_engine(ComputeConfig(engine="ray", address=address)),
        ):
            pytest.fail("work started without a cluster")
    assert time.monotonic() - started < 30


def test_an_address_needs_the_ray_engine() -> None:
    with pytest.raises(ValueError, match=r"set compute\.engine: ray"):
        ComputeConfig(address="head:6379")


def _summed_table(batch: pa.RecordBatch) -> tuple[pa.Table, int, pa.RecordBatch]:
    """A result with Arrow data among other values, as the stages' results are."""
    numbers = batch.column("n").to_pylist()
    return pa.table({"n": numbers, "twice": [2 * n for n in numbers]}), sum(numbers), batch


@pytest.mark.parametrize("address", ["path", "uri"])
def test_parquet_intermediates_carry_batches_and_results_as_files_duckdb_appends(
    ray_engine: None, tmp_path: Path, address: str
) -> None:
    """`compute.intermediates`: inputs and results are Parquet files in the folder while the map runs, the
    results hold parts that DuckDB appends (with read_parquet from a folder; through pyarrow's file systems
    from a URI, as from an object store), and nothing is left once the map ends."""
    import duckdb

    from curation.core.intermediates import ParquetPart, read_part
    from curation.core.warehouse import insert_from

    root = tmp_path / "parts"
    setting = str(root) if address == "path" else root.as_uri()
    batches = _batches(range(1, 12))
    local = list(map_ordered(_summed_table, batches, 1))
    connection = duckdb.connect()
    connection.execute("CREATE TABLE appended (n BIGINT, twice BIGINT)")
    with use_engine(ComputeConfig(engine="ray", workers=2, intermediates=setting)):
        results = map_ordered(_summed_table, batches, 2, parts=True)
        table, total, echoed = next(results)
        (folder,) = root.iterdir()
        names = sorted(p.name.split("-")[0] for p in folder.iterdir())
        # Three batches still in flight, read by their tasks from files; two tables from each finished task,
        # and a task finishing now may have written one of its two so far.
        assert names.count("in") == 3 and 2 <= names.count("out") <= 8, names
        assert isinstance(table, ParquetPart) and isinstance(echoed, ParquetPart) and total == 0
        assert table.uri.startswith(setting)
        got = [(read_part(table), total, read_part(echoed))]
        insert_from(connection, "INSERT INTO appended SELECT * FROM {rows}", table)
        for table, total, echoed in results:
            got.append((read_part(table), total, read_part(echoed)))
            insert_from(connection, "INSERT INTO appended SELECT * FROM {rows}", table)
        assert not folder.exists()
        assert [(t.to_pylist(), s, e.to_pylist()) for t, s, e in got] == [
            (t.to_pylist(), s, e.to_pylist()) for t, s, e in local
        ]
        assert all(isinstance(e, pa.RecordBatch) for _, _, e in got)
        # Without `parts`, the caller gets the Arrow data back, as on the local engine.
        assert [s for _, s, _ in map_ordered(_summed_table, batches, 2)] == [s for _, s, _ in local]
    expected = [(n, 2 * n) for size in range(1, 12) for n in range(size)]
    assert connection.execute("SELECT * FROM appended").fetchall() == expected
    assert list(root.iterdir()) == []


def test_a_killed_run_leaves_intermediates_the_next_run_removes(tmp_path: Path) -> None:
    """A run killed mid-map cannot delete its folder; the next run on the home deletes the folders whose
    process is gone, and leaves a live process's."""
    import subprocess
    import sys

    from curation.core.intermediates import new_folder, sweep

    root = str(tmp_path / "parts")
    child = subprocess.Popen([sys.executable, "-c", "import sys; print(input())"], stdin=subprocess.PIPE, text=True)
    code = f"from curation.core.intermediates import new_folder; new_folder({root!r}, 'a' * 32)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
    live = new_folder(root, "b" * 32)
    (dead,) = [p for p in Path(root).iterdir() if p.name.startswith("a")]
    (dead / "out-0.parquet").write_bytes(b"partial")
    assert sweep(root) == [str(dead)]
    assert sorted(p.name for p in Path(root).iterdir()) == [Path(live).name]
    child.communicate("done")


def _eight_megabytes(batch: pa.RecordBatch) -> tuple[pa.Table, pa.Array]:
    numbers = pa.array(range(1_000_000), pa.int64())
    return pa.table({"n": numbers}), numbers


def test_results_a_stage_keeps_do_not_stay_pinned_in_the_object_store(ray_engine: None) -> None:
    """`ray.get` reads Arrow data in place from the object store, which pins the object while the data
    lives; a stage that keeps results (ingest gathers 20,000 rows per insert) filled the store at 1M rows and
    Ray spilled every new task's input to disk (raw took 491 s instead of 34). Results are copied out."""
    from ray._private.internal_api import memory_summary

    kept = list(map_ordered(_eight_megabytes, _batches(range(1, 9)), 2))
    assert sum(table.nbytes for table, _ in kept) >= 60 * 1024**2
    import ray

    here = ray.get_runtime_context().gcs_address  # not another test process's Ray on this machine

    def held_mib() -> tuple[int, str]:
        summary = memory_summary(address=here, stats_only=True)
        (usage,) = [line for line in summary.splitlines() if "Plasma memory usage" in line]
        return int(usage.split()[3]), usage

    deadline = time.monotonic() + 20  # the store frees released objects asynchronously
    while held_mib()[0] >= 16 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert held_mib()[0] < 16, held_mib()[1]  # MiB still held: results pinned while the stage keeps them
    assert [table.column("n")[999_999].as_py() for table, _ in kept] == [999_999] * 8
