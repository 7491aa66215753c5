"""The whole pipeline on a realistic 100k-row mix (benchmarks/scale_mix.py), run as a user runs it: every
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


def test_the_100k_mix_runs_clean_end_to_end_and_the_same_on_ray(tmp_path: Path) -> None:
    """The scale benchmark's mix at 100k rows (issue 16 asked for ~20k; issue 11 for this size on both
    engines): run as a user runs it, every record accounted for, every known duplicate pair collapsed, every
    check green, nothing to do on a re-run; then on `engine: ray` (a Ray of 2 CPUs started by the run, its
    tasks exchanging batches as Parquet files in the home) every dataset table has the same data version."""
    mix = build_mix(tmp_path / "mix", 100_000, seed=3)
    home = tmp_path / "home"
    result = run_cli("run", "--config", str(tmp_path / "mix" / "distillery.yaml"), home=home, timeout=1200)
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

    # The same project beside the first file, so every path, row id and data version can be the same.
    on_ray = tmp_path / "mix" / "distillery-ray.yaml"
    compute = "\ncompute:\n  engine: ray\n  workers: 2\n  intermediates: parts\n"
    on_ray.write_text((tmp_path / "mix" / "distillery.yaml").read_text() + compute)
    ray_home = tmp_path / "ray-home"
    # The datasets and their checks (exports and reports are the local run's concern above).
    ray_run = run_cli("run", "--config", str(on_ray), "--select", "+formatted", home=ray_home, timeout=1200)
    assert ray_run.returncode == 0, ray_run.stdout[-3000:] + ray_run.stderr[-3000:]
    assert " 0 failed" in ray_run.stdout
    local, ray = _versions(home), _versions(ray_home)
    assert {name: ray[name] for name in DATASETS} == {name: local[name] for name in DATASETS}
    assert list((ray_home / "parts").iterdir()) == []  # every map's files deleted once appended
