"""The mix policy: synthetic cap, per-source quotas, target weights, report and plot."""

from __future__ import annotations

import json
import random

import duckdb
import pytest

from curation.core.schema import new_row, rows_to_table
from curation.core.warehouse import canonical_ddl
from curation.synth.mix import (
    MixItem,
    MixPolicy,
    insert_kept_rows,
    mix_plot_png,
    mix_report,
    mix_warehouse,
    plan_mix,
    synthetic_budget,
)


def items(
    prefix: str, n: int, source: str = "s", origin: str = "human", value: str | None = None, from_teacher: bool = False
) -> list[MixItem]:
    return [MixItem(f"{prefix}{i}", source, origin, value, from_teacher) for i in range(n)]


def test_synthetic_budget_known_answers() -> None:
    assert synthetic_budget(70, 0, 100, 0.3) == 30  # 30 / 100
    assert synthetic_budget(70, 10, 100, 0.3) == 20
    assert (10 + 20) / (70 + 10 + 20) <= 0.3 + 1e-12 < (10 + 21) / (70 + 10 + 21)
    assert synthetic_budget(10, 50, 100, 0.3) == 0
    assert synthetic_budget(10, 0, 5, 1.0) == 5


def test_cap_keeps_a_stable_seeded_subset_of_teacher_rows() -> None:
    pool = items("h", 70) + items("t", 100, "synthetic", "synthetic", from_teacher=True)
    plan = plan_mix(pool, MixPolicy(0.3, seed=1))
    assert plan.synthetic_kept == 30 and plan.human == 70 and plan.synthetic_share == pytest.approx(0.3)
    assert all(reason == "over the synthetic cap of 30% (mix.synthetic_cap)" for reason in plan.excluded.values())
    assert len(plan.excluded) == 70 and plan.kept.isdisjoint(plan.excluded)
    shuffled = pool[:]
    random.Random(0).shuffle(shuffled)
    assert plan_mix(shuffled, MixPolicy(0.3, seed=1)).kept == plan.kept  # independent of input order
    assert plan_mix(pool, MixPolicy(0.3, seed=2)).kept != plan.kept  # the seed decides


def test_model_made_source_rows_are_dropped_only_when_they_alone_exceed_the_cap() -> None:
    pool = (
        items("h", 7) + items("g", 6, "gen", "synthetic") + items("t", 5, "synthetic", "synthetic", from_teacher=True)
    )
    plan = plan_mix(pool, MixPolicy(0.3))
    assert plan.synthetic_kept == 0 and plan.model_made == 3  # 3 / 10 = cap
    assert plan.synthetic_share == pytest.approx(0.3)


def test_quotas_cap_rows_per_source_preferring_human_rows() -> None:
    pool = items("a", 10, "big") + items("b", 3, "small") + items("x", 5, "big", "augmented", from_teacher=True)
    plan = plan_mix(pool, MixPolicy(1.0, quotas={"big": 12}))
    kept_big = [r for r in plan.kept if r[0] in "ax"]
    assert len(kept_big) == 12 and all(f"a{i}" in plan.kept for i in range(10))  # human rows first
    assert sum(r.startswith("b") for r in plan.kept) == 3
    assert set(plan.excluded.values()) == {"over the quota of 12 rows for source big (mix.quotas)"}


def test_weights_meet_the_target_shares_with_the_rows_available() -> None:
    pool = (
        items("s", 60, value="sft")
        + items("c", 10, value="chat")
        + items("p", 30, value="preference")
        + items("o", 4, value="tool")
    )
    policy = MixPolicy.from_config(1.0, 0, {"kind": {"sft": 2, "chat": 1, "preference": 1}}, None)
    plan = plan_mix(pool, policy)
    kept = {
        v: sum(1 for i in pool if i.value == v and i.row_id in plan.kept) for v in ("sft", "chat", "preference", "tool")
    }
    assert kept == {"sft": 20, "chat": 10, "preference": 10, "tool": 0}  # chat is the binding constraint
    assert plan.excluded["o0"] == "kind=tool has no target weight (mix.weights)"
    assert plan.excluded[next(r for r in plan.excluded if r.startswith("s"))].startswith("over the target weight 50.0%")
    report = {r["value"]: r for r in mix_report(pool, plan, policy)}
    assert report["sft"]["target"] == 0.5 and report["sft"]["actual"] == 0.5
    assert report["chat"]["available"] == 10 and report["share (≤ cap)"]["target"] == 1.0


def test_a_target_without_rows_is_reported_not_allowed_to_empty_the_mix() -> None:
    pool = items("s", 10, value="sft") + items("c", 10, value="chat")
    policy = MixPolicy.from_config(1.0, 0, {"kind": {"sft": 1, "chat": 1, "preference": 2}}, None)
    plan = plan_mix(pool, policy)
    assert len(plan.kept) == 20
    report = {r["value"]: r for r in mix_report(pool, plan, policy)}
    assert report["preference"]["target"] == 0.5 and report["preference"]["rows"] == 0


def test_weights_then_cap_on_an_extra_dimension() -> None:
    pool = (
        items("h", 10, value="math")
        + items("k", 40, value="code")
        + items("t", 40, "synthetic", "synthetic", value="math", from_teacher=True)
    )
    policy = MixPolicy.from_config(0.2, 0, {"task_type": {"math": 1, "code": 1}}, None)
    plan = plan_mix(pool, policy)
    # Weights: 40 math rows (the 10 human ones first, then 30 teacher rows) and 40 code rows; then the cap
    # leaves floor(0.2 * 50 / 0.8) = 12 teacher rows, so the actual math share falls below its target.
    assert all(f"h{i}" in plan.kept for i in range(10)) and plan.human == 50
    assert plan.synthetic_kept == 12 and plan.synthetic_share == pytest.approx(12 / 62)
    report = {r["value"]: r for r in mix_report(pool, plan, policy)}
    assert report["math"]["target"] == 0.5 and report["math"]["actual"] == pytest.approx(22 / 62)


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match="one dimension"):
        MixPolicy.from_config(0.3, 0, {"kind": {"sft": 1}, "source": {"a": 1}}, None)
    with pytest.raises(ValueError, match=r"mix\.weights\.kind"):
        MixPolicy.from_config(0.3, 0, {"kind": {"sft": -1}}, None)
    with pytest.raises(ValueError, match=r"mix\.quotas\.a"):
        MixPolicy.from_config(0.3, 0, None, {"a": "ten"})


def test_plot_is_a_png() -> None:
    pool = items("h", 7) + items("t", 5, "synthetic", "synthetic", from_teacher=True)
    policy = MixPolicy(0.3)
    png = mix_plot_png(mix_report(pool, plan_mix(pool, policy), policy))
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


def test_the_warehouse_mix_weighs_an_extra_field_and_copies_exactly_the_kept_rows() -> None:
    def row(row_id: str, origin: str, task_type: str) -> dict:
        return new_row(
            row_id=row_id,
            kind="sft",
            source="s",
            source_uri=f"s#{row_id}",
            license="MIT",
            origin=origin,
            messages=[{"role": "user", "content": row_id}],
            extra={"task_type": task_type},
        )

    connection = duckdb.connect()
    for table, rows in (
        ("filtered", [row(f"h{i}", "human", "math" if i < 4 else "code") for i in range(8)]),
        ("synthetic", [row(f"t{i}", "synthetic", "math") for i in range(6)]),
    ):
        connection.execute(f"CREATE TABLE {table} ({canonical_ddl()})")
        connection.register("batch", rows_to_table(rows))
        connection.execute(f"INSERT INTO {table} SELECT * FROM batch")
        connection.unregister("batch")
    policy = MixPolicy.from_config(0.25, 0, {"task_type": {"math": 1, "code": 1}}, None)
    result = mix_warehouse(connection, policy)
    assert {i.row_id: i.value for i in result.items}["t0"] == "math"  # read from extra
    assert result.plan.synthetic_kept == 0 and result.plan.human == 8  # the weights leave no room for math rows
    connection.execute(f"CREATE TABLE mixed ({canonical_ddl()})")
    insert_kept_rows(connection, "mixed", result.plan.kept)
    copied = connection.execute("SELECT row_id, extra FROM mixed ORDER BY row_id").fetchall()
    assert [r for r, _ in copied] == sorted(result.plan.kept) == [f"h{i}" for i in range(8)]
    # Whole rows are copied, not just their ids.
    assert [json.loads(extra)["task_type"] for _, extra in copied] == ["math"] * 4 + ["code"] * 4
    records = result.excluded_records()
    assert [r["row_id"] for r in records] == [f"t{i}" for i in range(6)]
    assert result.excluded_by_reason() == [{"reason": records[0]["reason"], "rows": 6}]
    assert "| model-made |" in result.summary_markdown()
