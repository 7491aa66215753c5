"""Where the LSH band keys are grouped: in DuckDB for the local engine (the stage's own path), by a shuffle on
the workers on the ``ray`` engine (:mod:`curation.dedup.distributed`). Both find the candidate pairs of
sorting every key in memory, and on Ray the Jaccards and clusters too, to the bit; the driver never computes
a band key or holds the signatures."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

import curation.dedup.distributed
import curation.dedup.stage
from curation.core.config import ComputeConfig, load_project
from curation.core.parallel import use_engine
from curation.core.warehouse import Warehouse
from curation.dedup.minhash import MinHasher, band_keys, candidate_pairs, signature_column, signature_matrix
from curation.dedup.near import NearConfig, candidates, pair_jaccards
from curation.dedup.stage import run_dedup
from tests.conftest import needs_shared_data


def test_a_bucket_over_max_bucket_pairs_its_members_in_index_order() -> None:
    """Which pairs a big bucket makes must not depend on how a sort broke ties (a shuffle sorts the bucket
    elsewhere, among other rows): its members are paired in index order."""
    rng = np.random.default_rng(7)
    keys = rng.integers(0, 1 << 62, size=(5_000, 1), dtype=np.int64).astype(np.uint64)
    members = np.sort(rng.choice(keys.shape[0], size=300, replace=False))
    keys[members] = np.uint64(42)
    found = {tuple(pair) for pair in candidate_pairs(keys, max_bucket=3).tolist()}
    expected = {(int(members[a]), int(members[b])) for a in range(300) for b in range(a + 1, min(a + 4, 300))}
    assert found == expected


def _signatures(count: int, seed: int) -> tuple[list[str], NearConfig, pa.Table]:
    """Texts in families of near copies (and one family of 40 exact copies, a bucket over ``max_bucket`` in
    every band), with their signatures as the stage stores them (some rows without shingles)."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(400)]
    texts: list[str] = []
    while len(texts) < count:
        base = list(rng.choice(words, size=40))
        for _ in range(int(rng.integers(1, 5))):
            copy = list(base)
            copy[int(rng.integers(0, 40))] = str(rng.choice(words))
            texts.append(" ".join(copy))
    texts = texts[:count]
    for i in rng.choice(count, size=min(40, count // 4), replace=False).tolist():
        texts[i] = "the same forty words " * 10
    for i in rng.choice(count, size=min(5, count // 4), replace=False).tolist():
        texts[i] = "two"  # fewer words than a shingle: no shingles, never a candidate
    config = NearConfig(max_bucket=8, workers=1)
    signatures, shingles = MinHasher(config.num_perm, config.seed, config.shingles).signatures_and_counts(texts)
    table = pa.table(
        {
            "near_index": np.arange(count, dtype=np.int64),
            "signature": signature_column(signatures),
            "shingles": shingles.astype(np.int64),
        }
    )
    return texts, config, table


def _shuffled_here(batches: list[pa.RecordBatch], config: NearConfig, partitions: int) -> tuple[np.ndarray, int]:
    """The shuffle's four steps run in this process, wired as :func:`curation.dedup.distributed.candidates`
    wires them as tasks (so the partitioning is tested without starting Ray)."""
    from curation.dedup.distributed import _band_block, _bucket_pairs, _estimate, _Shuffle, _unique_pairs

    spec = _Shuffle(
        *config.params, config.num_perm, config.max_bucket, config.threshold - config.estimate_margin, partitions
    )

    def listed(result: object) -> list:
        return list(result) if partitions > 1 else [result]  # type: ignore[call-overload]

    blocks = [_band_block(spec, batch) for batch in batches]
    signatures = [[block[partitions + p] for block in blocks] for p in range(partitions)]
    paired = [listed(_bucket_pairs(spec, *[block[p] for block in blocks])) for p in range(partitions)]
    unique = [
        _unique_pairs(spec, len(blocks), *signatures[p], *[part[p] for part in paired]) for p in range(partitions)
    ]
    kept = [_estimate(spec, len(blocks), *signatures[p], *[part[1 + p] for part in unique]) for p in range(partitions)]
    codes = np.sort(np.concatenate(kept))
    return np.stack([codes >> 32, codes & 0xFFFFFFFF], axis=1), sum(part[0] for part in unique)


@pytest.mark.parametrize(("rows", "partitions"), [(1_200, 1), (1_200, 4), (3, 4)])
def test_the_shuffle_steps_find_the_local_candidates(rows: int, partitions: int) -> None:
    _, config, table = _signatures(rows, seed=rows + partitions)
    signatures = signature_matrix(table.column("signature"), config.num_perm)
    local, local_found = candidates(
        band_keys(signatures, *config.params), table.column("shingles").to_numpy(), config, lambda ids: signatures[ids]
    )
    shuffled = table.take(np.random.default_rng(partitions).permutation(table.num_rows))
    cand, found = _shuffled_here(shuffled.to_batches(max_chunksize=500), config, partitions)
    assert found == local_found
    assert np.array_equal(cand, local)
    assert rows < 10 or local_found > len(local) > 100


@pytest.mark.parametrize("rows", [1_200, 3])
def test_band_keys_grouped_in_duckdb_find_the_in_memory_candidates(rows: int) -> None:
    """The local engine keeps band keys in a scratch table, not in memory (144 bytes a row), and pairs only
    the rows whose key another shares: the same pairs (big buckets included) and the same count of pairs
    that shared a band as sorting every key here, whatever order the batches come in."""
    _, config, table = _signatures(rows, seed=rows)
    signatures = signature_matrix(table.column("signature"), config.num_perm)
    local, local_found = candidates(
        band_keys(signatures, *config.params), table.column("shingles").to_numpy(), config, lambda ids: signatures[ids]
    )
    stored = pa.table(
        {
            "near_index": table.column("near_index"),
            "near_key": pa.array([str(i) for i in range(rows)]),
            "signature": table.column("signature"),
        }
    )
    shuffled = table.take(np.random.default_rng(rows).permutation(rows))
    with duckdb.connect() as connection, curation.dedup.stage._scratch(connection, "scratch") as db:
        connection.register("stored", stored)
        connection.execute(f"CREATE TABLE {db.near_rows} AS SELECT near_index, near_key FROM stored")
        connection.execute("CREATE TABLE scratch.signatures AS SELECT near_key AS signature_key, signature FROM stored")
        cand, found = curation.dedup.stage._local_candidates(
            db, config, "scratch.signatures", iter(shuffled.to_batches(max_chunksize=500))
        )
        assert connection.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'near_bands'"
        ).fetchone() == (0,)
    assert found == local_found
    assert np.array_equal(cand, local)
    assert rows < 10 or local_found > len(local) > 100


@pytest.fixture(scope="module")
def ray_engine() -> Iterator[None]:
    import ray

    with use_engine(ComputeConfig(engine="ray", workers=2)):
        yield
    ray.shutdown()  # a Ray started here lives as long as its process: this test worker's


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_the_shuffle_finds_the_local_candidates_and_jaccards(ray_engine: None) -> None:
    texts, config, table = _signatures(3_000, seed=3)
    signatures = MinHasher(config.num_perm, config.seed, config.shingles).signatures_and_counts(texts)[0]
    keys = band_keys(signatures, *config.params)
    shingles = table.column("shingles").to_numpy()
    local, local_found = candidates(keys, shingles, config, lambda ids: signatures[ids])
    assert local_found > len(local) > 1_000  # pairs the estimate dropped, and many it kept

    # Batches of uneven sizes, in no particular order of rows.
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    batches = shuffled.to_batches(max_chunksize=700)
    cand, found = curation.dedup.distributed.candidates(iter(batches), config, partitions=3, in_flight=2)
    assert found == local_found
    assert np.array_equal(cand, local)

    def texts_of(ids: np.ndarray) -> list[str]:
        return [texts[i] for i in ids.tolist()]

    expected = pair_jaccards(config.hasher(), local, texts_of, chunk=256)
    measured = curation.dedup.distributed.pair_jaccards(config, cand, texts_of, workers=2, chunk=256)
    assert np.array_equal(measured, expected)


TABLES = ("deduped", "dedup_clusters", "dedup_signatures")


def _deduped(warehouse_file: Path, project_file: Path) -> dict[str, list[tuple]]:
    config = load_project(project_file)
    warehouse = Warehouse(warehouse_file)
    with warehouse.write("deduped") as staged:
        run_dedup(staged, config.dedup, workers=2)
    with warehouse.connect(read_only=True) as connection:
        tables = {table: connection.execute(f"SELECT * FROM {table}").fetchall() for table in TABLES}
        tables["lineage"] = connection.execute("SELECT * FROM lineage WHERE asset = 'deduped'").fetchall()
        (near,) = connection.execute("SELECT count(*) FROM dedup_clusters WHERE method LIKE 'near:%'").fetchone()
    assert near > 50  # the mix's injected near copies were found
    return {table: sorted(rows, key=repr) for table, rows in tables.items()}


def _not_in_the_driver(*args: object, **kwargs: object) -> None:
    raise AssertionError("the driver computed band keys or read a signature matrix")


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
@needs_shared_data
def test_dedup_on_ray_writes_the_local_tables_without_signatures_in_the_driver(
    ray_engine: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks.scale_mix import build_mix
    from curation.ingest.sources import ingest_sources

    build_mix(tmp_path / "mix", 3_000, seed=3)
    project = tmp_path / "mix" / "distillery.yaml"
    with use_engine(ComputeConfig()), Warehouse(tmp_path / "local.duckdb").write("raw") as staged:
        ingest_sources(load_project(project), staged)
    shutil.copy(tmp_path / "local.duckdb", tmp_path / "ray.duckdb")  # the same raw rows, to the ingestion time
    with use_engine(ComputeConfig()):
        local = _deduped(tmp_path / "local.duckdb", project)
    # On Ray the driver never makes band keys, candidate pairs or a signature matrix (the tasks do, in
    # Ray's worker processes, which these patches do not reach); several partitions are shuffled.
    for module, name in [
        (curation.dedup.stage, "band_keys"),
        (curation.dedup.stage, "signature_matrix"),
        (curation.dedup.stage, "band_pair_codes"),
        (curation.dedup.distributed, "band_keys"),
        (curation.dedup.distributed, "signature_matrix"),
    ]:
        monkeypatch.setattr(module, name, _not_in_the_driver)
    monkeypatch.setattr(curation.dedup.distributed, "ROWS_PER_PARTITION", 1_000)
    on_ray = _deduped(tmp_path / "ray.duckdb", project)
    assert on_ray == local
