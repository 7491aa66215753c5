"""The mix policy: synthetic cap, per-source quotas, target weights, report and plot."""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from curation.core.hashing import stable_unit, stable_unit_sql
from curation.core.schema import new_row, rows_to_table
from curation.core.warehouse import canonical_ddl
from curation.synth import mix
from curation.synth.mix import (
    MIX_EXCLUDED_DDL,
    MixPlan,
    MixPolicy,
    mix_plot_png,
    mix_warehouse,
    mixed_rows_sql,
    synthetic_budget,
)


@dataclass(frozen=True)
class MixItem:
    """One row of the mix items table :func:`curation.synth.mix.plan_mix` reads."""

    row_id: str
    source: str
    origin: str
    value: str | None = None  # the row's value on the weighted dimension
    from_teacher: bool = False  # a row of the `synthetic` asset (vs a filtered source row)

    @property
    def model_made(self) -> bool:
        return self.origin != "human"


ITEMS_SCHEMA = pa.schema(
    [
        ("row_id", pa.string()),
        ("source", pa.string()),
        ("origin", pa.string()),
        ("value", pa.string()),
        ("from_teacher", pa.bool_()),
    ]
)


@dataclass(frozen=True)
class Planned:
    """The SQL plan of a list of items, read back whole (fine for a test's few rows)."""

    plan: MixPlan
    kept: frozenset[str]
    excluded: dict[str, str]  # row_id -> reason
    report: list[dict[str, Any]]


def plan_mix(pool: Sequence[MixItem], policy: MixPolicy) -> Planned:
    """The real SQL plan, run on an in-memory DuckDB table of ``pool``."""
    connection = duckdb.connect()
    connection.register("items", pa.Table.from_pylist([asdict(i) for i in pool], ITEMS_SCHEMA))
    connection.execute(f"CREATE TABLE excluded ({MIX_EXCLUDED_DDL})")
    plan = mix.plan_mix(connection, "items", "excluded", policy)
    excluded = dict(connection.execute("SELECT row_id, reason FROM excluded").fetchall())
    report = mix.mix_report(connection, "items", "excluded", plan, policy)
    return Planned(plan, frozenset(i.row_id for i in pool) - excluded.keys(), excluded, report)


def items(
    prefix: str, n: int, source: str = "s", origin: str = "human", value: str | None = None, from_teacher: bool = False
) -> list[MixItem]:
    return [MixItem(f"{prefix}{i}", source, origin, value, from_teacher) for i in range(n)]


def test_the_sql_draw_is_the_python_draw() -> None:
    connection = duckdb.connect()
    keys = [f"row-{i}" for i in range(5000)] + ["", "é ✓"]
    connection.register("keys", pa.table({"key": [*keys, None]}))
    for seed in (0, 7, "s"):
        with stable_unit_sql(connection, seed) as unit:
            draws = connection.execute(f"SELECT key, {unit}('mix', key) FROM keys").fetchall()
        assert draws == [(k, stable_unit(seed, "mix", k)) for k in keys] + [(None, None)]


def test_synthetic_budget_known_answers() -> None:
    assert synthetic_budget(70, 0, 100, 0.3) == 30  # 30 / 100
    assert synthetic_budget(70, 10, 100, 0.3) == 20
    assert (10 + 20) / (70 + 10 + 20) <= 0.3 + 1e-12 < (10 + 21) / (70 + 10 + 21)
    assert synthetic_budget(10, 50, 100, 0.3) == 0
    assert synthetic_budget(10, 0, 5, 1.0) == 5


def test_cap_keeps_a_stable_seeded_subset_of_teacher_rows() -> None:
    pool = items("h", 70) + items("t", 100, "synthetic", "synthetic", from_teacher=True)
    plan = plan_mix(pool, MixPolicy(0.3, seed=1))
    assert plan.plan.synthetic_kept == 30 and plan.plan.human == 70 and plan.plan.synthetic_share == pytest.approx(0.3)
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
    plan = plan_mix(pool, MixPolicy(0.3)).plan
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
    report = {r["value"]: r for r in plan.report}
    assert report["sft"]["target"] == 0.5 and report["sft"]["actual"] == 0.5
    assert report["chat"]["available"] == 10 and report["share (≤ cap)"]["target"] == 1.0


def test_a_target_without_rows_is_reported_not_allowed_to_empty_the_mix() -> None:
    pool = items("s", 10, value="sft") + items("c", 10, value="chat")
    policy = MixPolicy.from_config(1.0, 0, {"kind": {"sft": 1, "chat": 1, "preference": 2}}, None)
    plan = plan_mix(pool, policy)
    assert len(plan.kept) == 20
    report = {r["value"]: r for r in plan.report}
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
    assert all(f"h{i}" in plan.kept for i in range(10)) and plan.plan.human == 50
    assert plan.plan.synthetic_kept == 12 and plan.plan.synthetic_share == pytest.approx(12 / 62)
    report = {r["value"]: r for r in plan.report}
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
    png = mix_plot_png(plan_mix(pool, policy).report)
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
    connection.execute(f"CREATE TABLE mixed ({canonical_ddl()})")
    connection.execute(f"CREATE TABLE excluded ({MIX_EXCLUDED_DDL})")
    result = mix_warehouse(connection, policy, "excluded")
    connection.execute(f"INSERT INTO mixed {mixed_rows_sql('excluded')}")
    report = {r["value"]: r for r in result.report}
    assert report["math"]["available"] == 4 + 6  # the teacher's rows' task_type is read from extra too
    assert result.plan.synthetic_kept == 0 and result.plan.human == 8  # the weights leave no room for math rows
    copied = connection.execute("SELECT row_id, extra FROM mixed ORDER BY row_id").fetchall()
    assert [r for r, _ in copied] == [f"h{i}" for i in range(8)]
    # Whole rows are copied, not just their ids.
    assert [json.loads(extra)["task_type"] for _, extra in copied] == ["math"] * 4 + ["code"] * 4
    records = connection.execute("SELECT row_id, reason FROM excluded ORDER BY row_id").fetchall()
    assert [r for r, _ in records] == [f"t{i}" for i in range(6)]
    assert result.excluded_by_reason == [{"reason": records[0][1], "rows": 6}]
    assert "| model-made |" in result.summary_markdown()
    assert connection.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE '_mix%'").fetchone() == (0,)


def reference_plan(items: Sequence[MixItem], policy: MixPolicy) -> tuple[frozenset[str], dict[str, str]]:
    """The mix plan as it was written in Python before it moved to SQL: (kept, excluded with reasons)."""

    def ranked(group: Sequence[MixItem], purpose: str) -> list[MixItem]:
        return sorted(group, key=lambda i: (i.model_made, stable_unit(policy.seed, purpose, i.row_id)))

    excluded: dict[str, str] = {}
    pool = sorted(items, key=lambda i: i.row_id)  # the order the warehouse read them in
    by_source: dict[str, list[MixItem]] = defaultdict(list)
    for item in pool:
        by_source[item.source].append(item)
    for source, quota in policy.quotas.items():
        for item in ranked(by_source.get(source, []), "quota")[quota:]:
            excluded[item.row_id] = f"over the quota of {quota} rows for source {source} (mix.quotas)"
    pool = [i for i in pool if i.row_id not in excluded]
    shares = policy.target_shares()
    if shares:
        groups: dict[str | None, list[MixItem]] = defaultdict(list)
        for item in pool:
            groups[item.value].append(item)
        for value, members in groups.items():
            if shares.get(value or "", 0.0) <= 0:
                for item in members:
                    excluded[item.row_id] = f"{policy.dimension}={value} has no target weight (mix.weights)"
        present = {v: s for v, s in shares.items() if s > 0 and groups.get(v)}
        total = sum(present.values())
        present = {v: s / total for v, s in present.items()}
        size = min((len(groups[v]) / s for v, s in present.items()), default=0.0)
        for value, share in present.items():
            target = math.floor(size * share + 1e-9)
            for item in ranked(groups.get(value, []), "weight")[target:]:
                excluded[item.row_id] = (
                    f"over the target weight {share:.1%} of {policy.dimension}={value} (mix.weights)"
                )
        pool = [i for i in pool if i.row_id not in excluded]
    human = sum(not i.model_made for i in pool)
    teacher_rows = [i for i in pool if i.from_teacher]
    other_model = [i for i in pool if i.model_made and not i.from_teacher]
    budget = synthetic_budget(human, len(other_model), len(teacher_rows), policy.synthetic_cap)
    reason = f"over the synthetic cap of {policy.synthetic_cap:.0%} (mix.synthetic_cap)"
    for item in sorted(teacher_rows, key=lambda i: stable_unit(policy.seed, "mix", i.row_id))[budget:]:
        excluded[item.row_id] = reason
    if policy.synthetic_cap < 1.0:
        allowed = math.floor(policy.synthetic_cap * human / (1.0 - policy.synthetic_cap) + 1e-9)
        for item in sorted(other_model, key=lambda i: stable_unit(policy.seed, "mix", i.row_id))[allowed:]:
            excluded[item.row_id] = reason
    return frozenset(i.row_id for i in items if i.row_id not in excluded), excluded


@pytest.mark.parametrize(
    "policy",
    [
        MixPolicy.from_config(0.25, 7, {"kind": {"sft": 3, "chat": 2, "preference": 1, "tool": 0}}, {"b": 400}),
        MixPolicy.from_config(0.1, 3, None, {"a": 900, "c": 50}),
        MixPolicy.from_config(0.4, 11, {"source": {"a": 1, "b": 1, "synthetic": 2}}, None),
        MixPolicy(0.05, seed=5),
    ],
)
def test_the_sql_plan_keeps_and_drops_exactly_what_the_python_plan_did(policy: MixPolicy) -> None:
    rng = random.Random(policy.seed)
    pool = [
        MixItem(
            f"r{i:05d}",
            source := rng.choice("abcd"),
            rng.choice(["human"] * 4 + ["synthetic"]) if source != "d" else "synthetic",
            rng.choice(["sft", "chat", "preference", "tool", None]),
        )
        for i in range(3000)
    ]
    pool += [MixItem(f"t{i:04d}", "synthetic", rng.choice(["synthetic", "augmented"]), "sft", True) for i in range(900)]
    if policy.dimension == "source":
        pool = [MixItem(i.row_id, i.source, i.origin, i.source, i.from_teacher) for i in pool]
    kept, excluded = reference_plan(pool, policy)
    planned = plan_mix(pool, policy)
    assert planned.excluded == excluded and planned.kept == kept
    assert {r[0] for r in excluded} == {"r", "t"}  # source rows and teacher rows both cut
    kept_items = [i for i in pool if i.row_id in kept]
    assert planned.plan == MixPlan(
        human=sum(not i.model_made for i in kept_items),
        model_made=sum(i.model_made for i in kept_items),
        synthetic_available=900,
        synthetic_kept=sum(i.from_teacher for i in kept_items),
        cap=policy.synthetic_cap,
    )
