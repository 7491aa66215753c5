"""The whole pipeline on a realistic 20k-row mix (benchmarks/scale_mix.py), run as a user runs it: every
record accounted for, every known duplicate pair collapsed, every check green. Its time is measured by
benchmarks/pipeline_scale.py, not here."""

from pathlib import Path

import duckdb
import pytest

from benchmarks.pipeline_scale import verify
from benchmarks.scale_mix import build_mix
from tests.conftest import needs_shared_data, run_cli

pytestmark = [
    pytest.mark.slow,
    needs_shared_data,  # the mix is built from ../shared/data
]


DATASETS = ("raw", "deduped", "filtered", "synthetic", "synthetic_mixed", "formatted")


def _versions(home: Path) -> dict[str, str]:
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as connection:
        return dict(connection.execute("SELECT asset, data_version FROM asset_state").fetchall())


def test_a_20k_row_mix_runs_clean_end_to_end(tmp_path: Path) -> None:
    mix = build_mix(tmp_path / "mix", 20_000, seed=3)
    home = tmp_path / "home"
    result = run_cli("run", "--config", str(tmp_path / "mix" / "distillery.yaml"), home=home, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " 0 failed" in result.stdout

    verified = verify(home, tmp_path / "mix")
    assert verified["conserved"], verified
    assert verified["quarantined"] == mix.malformed
    assert verified["exact_pairs_collapsed"] == 1.0
    # A near copy differs in one word; a few fall below the 0.8 word 5-gram Jaccard of the default settings
    # when the changed word is followed by digits or code that the shingles skip.
    assert verified["near_pairs_collapsed"] >= 0.97

    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as connection:
        counts = dict(
            connection.execute(
                "SELECT 'raw', count(*) FROM raw UNION ALL SELECT 'deduped', count(*) FROM deduped "
                "UNION ALL SELECT 'filtered', count(*) FROM filtered UNION ALL SELECT 'formatted', count(*) "
                "FROM formatted"
            ).fetchall()
        )
    assert counts["raw"] == mix.rows
    # ~15% duplicates go in dedup; filters and the token budget take a few percent more, not most of the data.
    assert 0.80 * mix.rows <= counts["deduped"] <= 0.87 * mix.rows
    assert counts["formatted"] >= 0.9 * counts["deduped"]

    again = run_cli("run", "--config", str(tmp_path / "mix" / "distillery.yaml"), home=home)
    assert again.returncode == 0 and "Every asset is up to date" in again.stdout


def test_the_100k_mix_has_the_same_data_versions_on_ray_with_parquet_intermediates(tmp_path: Path) -> None:
    """Issue 11: the scale benchmark's 100k mix on `engine: ray` (a Ray of 2 CPUs started by the run, its
    tasks exchanging batches as Parquet files in the home) gives every dataset table the local engine's
    data version."""
    build_mix(tmp_path / "mix", 100_000, seed=3)
    home = tmp_path / "home"
    local_run = run_cli("run", "--config", str(tmp_path / "mix" / "distillery.yaml"), home=home, timeout=1200)
    assert local_run.returncode == 0, local_run.stdout[-3000:] + local_run.stderr[-3000:]
    # The same project beside the first file, so every path, row id and data version can be the same.
    on_ray = tmp_path / "mix" / "distillery-ray.yaml"
    compute = "\ncompute:\n  engine: ray\n  workers: 2\n  intermediates: parts\n"
    on_ray.write_text((tmp_path / "mix" / "distillery.yaml").read_text() + compute)
    ray_home = tmp_path / "ray-home"
    ray_run = run_cli("run", "--config", str(on_ray), home=ray_home, timeout=1200)
    assert ray_run.returncode == 0, ray_run.stdout[-3000:] + ray_run.stderr[-3000:]
    assert " 0 failed" in ray_run.stdout and " 0 failed" in local_run.stdout
    local, ray = _versions(home), _versions(ray_home)
    assert {name: ray[name] for name in DATASETS} == {name: local[name] for name in DATASETS}
    assert list((ray_home / "parts").iterdir()) == []  # every map's files deleted once appended
