"""The ``deduped`` stage: the :class:`~curation.dedup.facts.DedupPlan` (which steps run, with which
settings, built from the project file by :func:`plan_from_project`) and :func:`run_dedup`, which the
asset calls. Rows stream in Arrow batches through worker processes; every whole-table decision is SQL
over narrow per-row columns in DuckDB, or numpy arrays of fixed width per row:

1. one pass over the input: each row's texts without in-row repeats, its facts
   (:mod:`curation.dedup.facts`: exact, prompt, response and signature keys, the keep policy's
   criteria), its paragraph keys, and the MinHash signature of its compared text when
   ``dedup_signatures`` does not hold it yet. The facts and paragraph keys persist
   (``dedup_facts``, ``dedup_paragraphs``) with a memo (:mod:`curation.core.memo`), so a re-run
   copies them for every row it has seen unchanged under the same code and settings and passes only
   the new rows through the workers;
2. boilerplate: paragraphs counted across rows in SQL; the rows holding one are computed again (and
   left out of the memo: their facts depend on which paragraphs are boilerplate, a whole-table fact);
3. exact duplicates, near duplicates (on the survivors of exact) and same-prompt conflicts (on the
   survivors of both; per kind, :mod:`curation.dedup.conflicts`): SQL windows keep one row per cluster
   by :class:`~curation.dedup.clusters.KeepPolicy`; near candidates come from LSH band keys, are
   verified by exact Jaccard on the texts of candidate rows only (a pass over those rows; preference
   pairs on each answer too) and grouped into connected components. Then one SQL resolution over all
   the steps' clusters (:func:`~curation.dedup.clusters.resolve_kept_rows`) makes them one clustering:
   every removed row, whichever step removed it, names the row that finally holds its content (a row
   removed by a later step passes the copies it absorbed on), and no member names a removed row;
4. the output: rows that neither changed nor absorbed a copy are copied by SQL; the others pass through
   the workers again (edited, with the copies they absorbed in ``extra.dedup_sources``, a lineage edge).

Scratch tables live in an in-memory database attached for the run and detached after it."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from curation.core.components import component_labels
from curation.core.config import DedupConfig
from curation.core.freshness import code_fingerprint
from curation.core.intermediates import ParquetPart
from curation.core.markdown import counts_table, figure_png, markdown_table, png_markdown, pyplot
from curation.core.memo import Reuse, drop_reuse, plan_reuse, stage_kept_rows, stage_output
from curation.core.normalize import NormalizeOptions
from curation.core.parallel import map_ordered, warm_up, workers_for
from curation.core.progress import reported
from curation.core.ray_engine import current as current_engine
from curation.core.schema import COLUMNS
from curation.core.warehouse import (
    LINEAGE_DDL,
    SOURCE_ORDER,
    StagedWrite,
    canonical_ddl,
    count_rows,
    fetch_one,
    insert_from,
    quote,
    read_batches,
    table_columns,
    table_names,
)
from curation.dedup import distributed
from curation.dedup.clusters import (
    CLUSTERS_DDL,
    MEMBERS_DDL,
    absorbed_sql,
    clusters_sql,
    insert_members,
    kept_sql,
    resolve_kept_rows,
)
from curation.dedup.conflicts import ConflictConfig, conflict_groups_sql
from curation.dedup.exact import ExactConfig, exact_groups_sql
from curation.dedup.facts import (
    FACT_INPUTS,
    FACT_SCHEMA,
    PARAGRAPH_SCHEMA,
    TEXT_SCHEMA,
    DedupPlan,
    facts_batch,
    key_bytes,
    published_batch,
    start_worker,
    texts_batch,
)
from curation.dedup.minhash import ShingleConfig, band_keys, band_pair_codes, pairs_of_codes, signature_matrix
from curation.dedup.near import (
    SIGNATURES_DDL,
    Jaccards,
    NearConfig,
    near_components,
    near_method,
    pair_jaccards,
    plausible,
    verify,
)
from curation.dedup.repeats import BoilerplateConfig, WithinConfig, boilerplate_floor

__all__ = ["DedupPlan", "DedupRun", "plan_from_project", "run_dedup"]

BATCH_ROWS = 8_192
"""Input rows per Arrow batch (and per task of a worker process). Each batch's results cost the main process
an insert per output table whatever its size: at 2,000 rows those inserts took two thirds more CPU than at
8,192 (3.6 against 2.0 s for 250k rows), while four batches in flight per worker stay a few tens of MB."""


def plan_from_project(settings: DedupConfig) -> DedupPlan:
    """The plan for the project file's ``dedup:`` section (:class:`curation.core.config.DedupConfig`), with
    errors naming the key."""
    normalize = NormalizeOptions(lowercase=settings.lowercase, strip_punctuation=settings.strip_punctuation)

    def build(name: str, factory: Callable[..., Any], step: Mapping[str, Any] | bool, **fixed: Any) -> Any:
        if step is False:
            return None
        params = dict(step) if isinstance(step, Mapping) else {}
        try:
            return factory(**fixed, **params)
        except TypeError as error:
            raise ValueError(f"dedup.{name}: {error}; see the README for the keys it takes") from error

    near = dict(settings.near) if isinstance(settings.near, Mapping) else settings.near
    if isinstance(near, dict) and ("unit" in near or "n" in near):
        near["shingles"] = ShingleConfig(near.pop("unit", "word"), near.pop("n", 5))
    return DedupPlan(
        within=build("within", WithinConfig, settings.within, normalize=normalize),
        boilerplate=build("boilerplate", BoilerplateConfig, settings.boilerplate, normalize=normalize),
        exact=ExactConfig(fields=settings.exact_fields, normalize=normalize),
        near=build("near", NearConfig, near),
        conflicts=build("conflicts", ConflictConfig, dict(settings.conflicts or {}), normalize=normalize)
        or ConflictConfig(),
    )


# ---------------------------------------------------------------------------------------------
# The run.


@dataclass
class DedupRun:
    """What one run of the stage did: row counts, the figures the asset reports and its settings."""

    plan: DedupPlan
    settings: DedupConfig
    input_rows: int
    kept_rows: int
    counts: dict[str, int]
    markdown: dict[str, str]

    @property
    def log_line(self) -> str:
        return (
            f"deduped: {self.kept_rows} of {self.input_rows} rows kept; MinHash computed for "
            f"{self.counts['minhash_computed']} texts, {self.counts['signatures_reused']} signatures reused"
        )

    def parameters(self) -> dict[str, Any]:
        """The settings that shaped the clusters, as the asset reports them."""
        near = self.plan.near
        return {
            "exact_fields": self.settings.exact_fields,
            "lowercase": self.settings.lowercase,
            "strip_punctuation": self.settings.strip_punctuation,
            "near": None
            if near is None
            else {
                "threshold": near.threshold,
                "lsh_threshold": near.lsh_threshold,
                "num_perm": near.num_perm,
                "bands_rows": list(near.params),
                "seed": near.seed,
                "shingles": f"{near.shingles.unit} {near.shingles.n}-grams",
                "fields": near.fields,
            },
            "conflicts": self.plan.conflicts.mode,
        }


class _Scratch:
    """The run's scratch tables, in an in-memory database attached under a name of its own (cursors of the
    same connection see it, so batches stream from it while the connection writes)."""

    def __init__(self, connection: duckdb.DuckDBPyConnection, name: str) -> None:
        self.connection = connection
        self.name = name
        self.persisted: dict[str, str] = {}  # work tables that are staged warehouse tables instead

    def __getattr__(self, table: str) -> str:
        if table in self.__dict__.get("persisted", {}):
            return self.persisted[table]
        return f"{quote(self.name)}.{quote(table)}"

    def create(self, table: str, ddl: str) -> str:
        self.connection.execute(f"CREATE TABLE {getattr(self, table)} ({ddl})")
        return getattr(self, table)

    def create_like(self, table: str, schema: pa.Schema) -> str:
        """A table with the columns of an Arrow schema."""
        with _no_rows(self.connection, schema) as select:
            self.connection.execute(f"CREATE TABLE {getattr(self, table)} AS {select}")
        return getattr(self, table)

    @contextlib.contextmanager
    def appending(self, tables: Sequence[str]) -> Iterator[Callable[[str, pa.RecordBatch | ParquetPart], None]]:
        """``append(table, batch)`` for ``tables`` (columns matched by name): each table is written in one
        transaction on a cursor of its own (a commit per batch would cost more than the batch; one
        transaction may write to one database only)."""
        cursors = {table: self.connection.cursor() for table in tables}
        try:
            for cursor in cursors.values():
                cursor.execute("BEGIN TRANSACTION")

            def append(table: str, batch: pa.RecordBatch | ParquetPart) -> None:
                if batch.num_rows == 0:
                    return
                insert_from(cursors[table], f"INSERT INTO {table} BY NAME SELECT * FROM {{rows}}", batch)

            yield append
            for cursor in cursors.values():
                cursor.execute("COMMIT")
        except BaseException:
            for cursor in cursors.values():
                with contextlib.suppress(duckdb.Error):
                    cursor.execute("ROLLBACK")
            raise
        finally:
            for cursor in cursors.values():
                cursor.close()

    @contextlib.contextmanager
    def registered(self, name: str, data: pa.Table) -> Iterator[str]:
        """``data`` queryable as ``name`` for the duration of the block."""
        self.connection.register(name, data)
        try:
            yield name
        finally:
            self.connection.unregister(name)


@contextlib.contextmanager
def _scratch(connection: duckdb.DuckDBPyConnection, name: str) -> Iterator[_Scratch]:
    connection.execute(f"ATTACH ':memory:' AS {quote(name)}")
    try:
        yield _Scratch(connection, name)
    finally:
        connection.execute(f"DETACH {quote(name)}")


_INPUT_COLUMNS = ", ".join(f"r.{quote(c)}" for c in COLUMNS)


def run_dedup(
    staged: StagedWrite,
    settings: DedupConfig,
    workers: int | None = None,
    source: str = "raw",
    log: Callable[[str], None] = lambda _: None,
) -> DedupRun:
    """Dedup the rows of ``source`` (in :data:`SOURCE_ORDER`: ties go to the earlier record) with the
    project's ``dedup:`` settings into ``staged``'s ``deduped``, ``dedup_clusters`` and
    ``dedup_signatures`` tables and its partition of ``lineage``, reusing the signatures a previous run
    persisted. ``workers`` is the project's ``compute.workers`` (all cores when ``None``)."""
    plan = plan_from_project(settings)
    connection = staged.connection
    total = count_rows(connection, source)
    # Verifying near-duplicate candidates reads a share of all rows in workers, even when the memo spares
    # the facts pass: their server starts while the memo is planned and the reused facts are copied.
    warm_up(_PRELOAD, total, workers_for(total, workers))
    with _scratch(connection, staged.staging_name("dedup")) as db:
        run = _Passes(db, plan, source, workers, key_bytes([]), log)
        connection.execute(
            f"CREATE TABLE {db.positions} AS SELECT row_id, row_number() OVER (ORDER BY {SOURCE_ORDER}) - 1 "
            f"AS position FROM {quote(source)}"
        )
        for table, schema in (("facts", FACT_SCHEMA), ("paragraphs", PARAGRAPH_SCHEMA)):
            with _no_rows(connection, schema) as select:
                db.persisted[table] = staged.create_as(f"dedup_{table}", select)
        facts = db.facts
        db.create("replaced_keys", "near_key VARCHAR")
        computed = _computed_signatures(staged)
        fingerprint = facts_fingerprint(settings)
        reuse = plan_reuse(staged, "dedup_memo", quote(source), FACT_INPUTS, fingerprint, FACTS_OUTPUTS)
        run.known = _known_signatures(connection, plan, total - reuse.rows)
        try:
            _copy_reused_facts(db, reuse)
            if reuse.rows:
                log(f"deduped: facts of {reuse.rows:,} unchanged rows copied from the last run")
            run.over_rows(
                "deduped: facts",
                reuse.excluding("r.row_id"),
                total - reuse.rows,
                facts_batch,
                (facts, db.paragraphs, computed),
                inputs=FACT_INPUTS,
            )
        finally:
            drop_reuse(connection, reuse)
        _boilerplate(run, total, computed, quote(staged.staging_name("dedup_memo")))
        signatures, near_counts = _stage_signatures(staged, db, computed, stored_skipped=run.known.size > 0)
        near_counts["facts_reused"] = reuse.rows
        log(
            f"deduped: MinHash computed for {near_counts['minhash_computed']:,} texts, "
            f"{near_counts['signatures_reused']:,} signatures reused"
        )
        connection.execute(f"CREATE TABLE {db.members} ({MEMBERS_DDL})")
        survivors = f"(SELECT * FROM {facts} WHERE position NOT IN (SELECT position FROM {db.members} WHERE removed))"
        if plan.exact is not None:
            insert_members(connection, db.members, facts, exact_groups_sql(survivors), 1, plan.exact.method)
        if plan.near is not None:
            _near(run, plan.near, signatures, survivors, log)
        conflicts = plan.conflicts
        if conflicts.mode != "off":
            remove = conflicts.mode == "keep_best"
            insert_members(connection, db.members, facts, conflict_groups_sql(survivors), 3, conflicts.method, remove)
        resolve_kept_rows(connection, db.members)
        log("deduped: clusters decided")
        clusters = staged.create("dedup_clusters", CLUSTERS_DDL)
        connection.execute(f"INSERT INTO {clusters} {clusters_sql(db.members, facts)}")
        kept, in_place = _publish(run, staged, survivors, fingerprint)
        log(f"deduped: {kept:,} rows published, {in_place:,} of them already in place as the last run wrote them")
        counts = _counts(db) | near_counts | {"rows_in_place": in_place}
        figures = _figures(connection, db, clusters, source)
    return DedupRun(plan, settings, total, kept, counts, figures)


FACTS_OUTPUTS = ("dedup_facts", "dedup_paragraphs")
"""What the facts pass leaves for the next run to copy (with ``dedup_memo``)."""


def facts_fingerprint(settings: DedupConfig) -> str:
    """The key of the facts memo besides each row's content: the code and library versions and the
    ``dedup:`` settings (they name no files)."""
    return hashlib.sha256(f"{code_fingerprint()}\n{settings.model_dump_json()}".encode()).hexdigest()[:32]


@contextlib.contextmanager
def _no_rows(connection: duckdb.DuckDBPyConnection, schema: pa.Schema) -> Iterator[str]:
    """A query of no rows with the columns of an Arrow schema (to create a table from)."""
    connection.register("_dedup_schema", schema.empty_table())
    try:
        yield "SELECT * FROM _dedup_schema"
    finally:
        connection.unregister("_dedup_schema")


def _copy_reused_facts(db: _Scratch, reuse: Reuse) -> None:
    """The facts and paragraph keys of the reused rows, from the last run's tables, at this run's positions
    (rows appended to a source move the ones after them). The last run's paragraphs name its positions,
    which its facts map to row ids."""
    if not reuse.rows:
        return
    connection = db.connection
    reused = f"(SELECT row_id FROM {reuse.table})"
    connection.execute(
        f"INSERT INTO {db.facts} BY NAME SELECT p.position, f.* EXCLUDE (position) FROM dedup_facts AS f "
        f"JOIN {db.positions} AS p USING (row_id) WHERE f.row_id IN {reused}"
    )
    connection.execute(
        f"INSERT INTO {db.paragraphs} SELECT p.position, g.paragraph FROM dedup_paragraphs AS g "
        f"JOIN dedup_facts AS f ON f.position = g.position JOIN {db.positions} AS p ON p.row_id = f.row_id "
        f"WHERE f.row_id IN {reused}"
    )


@dataclass
class _Passes:
    """Passes over the input rows in batches, in worker processes when there are enough rows."""

    db: _Scratch
    plan: DedupPlan
    source: str
    workers: int | None
    known: np.ndarray  # the signature keys already stored (facts.key_bytes, sorted)
    log: Callable[[str], None] = lambda _: None  # progress lines
    boilerplate: tuple[str, ...] = ()

    def over_rows(
        self,
        label: str,
        where: str,
        rows: int,
        function: Callable[[pa.RecordBatch], tuple[pa.RecordBatch, ...]],
        outputs: Sequence[str],
        columns: str = "",
        joins: str = "",
        inputs: Sequence[str] = COLUMNS,
    ) -> None:
        """``function`` over the batches of input rows (their ``inputs`` columns, with their ``position`` and
        any other ``columns`` of the ``joins``) that satisfy ``where``, each of its results appended to the
        table of ``outputs`` at the same place. Progress goes to ``log`` under ``label``, counted by the first
        output (one row per input row in every pass)."""
        selected = ", ".join(f"r.{quote(c)}" for c in inputs)
        sql = (
            f"SELECT p.position{columns}, {selected} FROM {quote(self.source)} AS r "
            f"JOIN {self.db.positions} AS p USING (row_id) {joins} WHERE {where}"
        )
        results = map_ordered(
            function,
            read_batches(self.db.connection, sql, batch_rows=BATCH_ROWS),
            workers_for(rows, self.workers),
            start_worker,
            (self.plan, self.boilerplate, self.known),
            preload=_PRELOAD,
            parts=True,  # only appended below
        )
        with self.db.appending(outputs) as append:
            for batches in reported(results, self.log, label, rows, size=lambda batches: batches[0].num_rows):
                for table, batch in zip(outputs, batches, strict=True):
                    append(table, batch)


_PRELOAD = ("curation.dedup.preload",)
"""What the workers of every pass of the stage start with (one fork server for all of them)."""


KNOWN_KEYS_MIN_SHARE = 0.1
"""Workers skip MinHash for a text whose signature an earlier run stored by looking its key up in the stored keys,
sorted, which every worker and the stage's own process then hold (16 bytes a key: ~160 MB each at 10M rows).
That pays when the facts pass computes at least this share of the stored count again (a first run after the
memo was invalidated, where MinHash is most of the pass). After a small change (appended rows) the few texts
met before are MinHashed again instead, and their signatures dropped in SQL (:func:`_drop_stored_keys`)."""


def _known_signatures(connection: duckdb.DuckDBPyConnection, plan: DedupPlan, rows_to_compute: int) -> np.ndarray:
    """The keys of the signatures an earlier run stored, sorted (:func:`~curation.dedup.facts.key_bytes`), when
    ``rows_to_compute`` rows are enough to be worth the memory (:data:`KNOWN_KEYS_MIN_SHARE`); else none."""
    if plan.near is None or "dedup_signatures" not in table_names(connection):
        return key_bytes([])
    (stored,) = fetch_one(connection, "SELECT count(*) FROM dedup_signatures")
    if rows_to_compute < KNOWN_KEYS_MIN_SHARE * stored:
        return key_bytes([])
    keys = connection.sql(
        "SELECT unhex(signature_key) AS k FROM dedup_signatures WHERE length(signature_key) = 32 ORDER BY k"
    ).to_arrow_table()
    column = keys.column("k").combine_chunks().cast(pa.binary(16))
    return np.frombuffer(column.buffers()[1], dtype="S16", count=len(column), offset=column.offset * 16).copy()


def _drop_stored_keys(connection: duckdb.DuckDBPyConnection, signatures: str) -> None:
    """Drop from the ``signatures`` the passes computed those of texts an earlier run stored (workers that did
    not hold the stored keys MinHashed them again): each key is stored once."""
    connection.execute(f"DELETE FROM {signatures} WHERE signature_key IN (SELECT signature_key FROM dedup_signatures)")


def _boilerplate(run: _Passes, total: int, signatures: str, memo: str) -> None:
    """The paragraphs that are boilerplate (in enough rows): the facts of the rows that hold one are
    computed again without it (``run.boilerplate`` then holds their keys), and those rows leave the staged
    ``memo``: the next run computes them from the start, since what counts as boilerplate may change."""
    plan, db = run.plan, run.db
    if plan.boilerplate is None:
        return
    connection = db.connection
    run.boilerplate = tuple(
        key
        for (key,) in connection.execute(
            f"SELECT paragraph FROM {db.paragraphs} GROUP BY paragraph HAVING count(*) >= ? ORDER BY paragraph",
            [boilerplate_floor(total, plan.boilerplate)],
        ).fetchall()
    )
    if not run.boilerplate:
        return
    with db.registered("_boilerplate", pa.table({"paragraph": run.boilerplate})):
        connection.execute(
            f"CREATE TABLE {db.stripped} AS SELECT DISTINCT position FROM {db.paragraphs} "
            "WHERE paragraph IN (SELECT paragraph FROM _boilerplate)"
        )
    stripped = f"position IN (SELECT position FROM {db.stripped})"
    # The signatures of their texts as they were stay stored: the next run computes those facts again.
    connection.execute(f"INSERT INTO {db.replaced_keys} SELECT near_key FROM {db.facts} WHERE {stripped}")
    connection.execute(f"DELETE FROM {memo} WHERE row_id IN (SELECT row_id FROM {db.facts} WHERE {stripped})")
    connection.execute(f"DELETE FROM {db.facts} WHERE {stripped}")
    (count,) = fetch_one(connection, f"SELECT count(*) FROM {db.stripped}")
    run.over_rows(
        "deduped: boilerplate rows again",
        f"p.{stripped}",
        count,
        facts_batch,
        (db.facts, db.paragraphs, signatures),
        inputs=FACT_INPUTS,
    )


def _computed_signatures(staged: StagedWrite) -> str:
    """The table the passes append the signatures they compute to: the staged ``dedup_signatures`` itself on
    a first run; else a work table beside it, which :func:`_stage_signatures` adds to the stored ones."""
    if "dedup_signatures" not in table_names(staged.connection):
        return staged.create("dedup_signatures", SIGNATURES_DDL)
    computed = quote(staged.staging_name("dedup_signatures_computed"))  # `_stage_`: a crash's debris is swept
    staged.connection.execute(f"CREATE TABLE {computed} ({SIGNATURES_DDL})")
    return computed


def _drop_repeated_keys(connection: duckdb.DuckDBPyConnection, signatures: str) -> None:
    """Keep one row per key of the ``signatures`` the passes computed. A text met in two batches (an exact
    copy, in most cases) is MinHashed by each; both signatures are the same, so the first stays. Keys an
    earlier run stored are skipped by the workers or dropped by :func:`_drop_stored_keys`."""
    connection.execute(
        f"DELETE FROM {signatures} WHERE rowid NOT IN (SELECT min(rowid) FROM {signatures} GROUP BY signature_key)"
    )


def _stage_signatures(
    staged: StagedWrite, db: _Scratch, computed: str, stored_skipped: bool
) -> tuple[str, dict[str, int]]:
    """Stage the new ``dedup_signatures``: the stored signatures of this run's texts (those of texts no longer
    compared are left behind) and the ``computed`` ones. After a small change the stored table is patched
    (:func:`~curation.core.memo.stage_kept_rows`), not copied: a +1% re-run at 1M rows copied 894k
    signatures (~480 MB) and their key index for 9k new ones. Returns a relation of this run's signatures
    that cursors can read, and how many were computed and reused. ``stored_skipped``: the workers skipped the
    texts whose signature is stored (:func:`_known_signatures`); else those are dropped here."""
    connection = db.connection
    _drop_repeated_keys(connection, computed)
    first_run = computed == quote(staged.staging_name("dedup_signatures"))  # nothing was stored
    if not first_run and not stored_skipped:
        _drop_stored_keys(connection, computed)
    (computed_rows,) = fetch_one(connection, f"SELECT count(*) FROM {computed}")
    counts = {"minhash_computed": int(computed_rows), "signatures_reused": 0}
    if first_run:
        return computed, counts
    wanted = (
        f"SELECT near_key FROM {db.facts} WHERE near_key IS NOT NULL "
        f"UNION SELECT near_key FROM {db.replaced_keys} WHERE near_key IS NOT NULL"
    )
    columns = [name for name, _ in table_columns(connection, "dedup_signatures")]
    target = stage_kept_rows(
        staged, "dedup_signatures", SIGNATURES_DDL, "signature_key", wanted, computed_rows, columns
    )
    connection.execute(f"INSERT INTO {target} SELECT * FROM {computed}")
    connection.execute(f"DROP TABLE {computed}")
    (total,) = fetch_one(connection, f"SELECT count(*) FROM {quote(staged.staging_name('dedup_signatures'))}")
    counts["signatures_reused"] = int(total) - int(computed_rows)
    if target == quote(staged.staging_name("dedup_signatures")):  # copied: a table of its own
        return target, counts
    # Patched: the staged version is a temporary view, which a cursor does not see; the stored table holds
    # every kept signature (and some that go, which no text of this run asks for).
    return f"(SELECT * FROM dedup_signatures UNION ALL SELECT * FROM {target})", counts


def _near(run: _Passes, config: NearConfig, signatures: str, survivors: str, log: Callable[[str], None]) -> None:
    """Near-duplicate clusters among ``survivors`` (step 2), from their staged ``signatures``."""
    db = run.db
    connection = db.connection
    near_rows = db.near_rows
    connection.execute(
        f"CREATE TABLE {near_rows} AS SELECT row_number() OVER (ORDER BY position) - 1 AS near_index, position, "
        f"near_key, rejected_key IS NOT NULL AS preference FROM {survivors}"
    )
    ordered = connection.sql(f"SELECT position, preference FROM {near_rows} ORDER BY near_index").fetchnumpy()
    positions, preference = ordered["position"], ordered["preference"]
    signed = f"SELECT near_index, signature, shingles FROM {near_rows} JOIN {signatures} ON signature_key = near_key"
    batches = reported(
        read_batches(connection, signed, batch_rows=16_384), log, "deduped: LSH band keys", positions.size, size=len
    )
    engine = current_engine()
    if engine is None:
        cand, found = _local_candidates(db, config, signatures, batches)
        jaccards = functools.partial(_local_jaccards, config)
    else:
        # On Ray the band keys are grouped, and the pairs verified, on the workers (curation.dedup.distributed).
        partitions = distributed.partitions_for(positions.size, engine.cpus)
        cand, found = distributed.candidates(batches, config, partitions, in_flight=2 * engine.cpus)
        jaccards = functools.partial(distributed.pair_jaccards, config, workers=engine.cpus)
    with _candidate_texts(run, cand) as texts_of:
        pairs, jaccard = verify(cand, config, texts_of, jaccards)
        pairs, jaccard = _each_side_near(pairs, jaccard, np.asarray(preference, dtype=bool), config, texts_of, jaccards)
        log(f"deduped: {found:,} LSH candidate pairs, {len(cand):,} verified, {len(pairs):,} near duplicates")
        if not len(pairs):
            return
        documents, cluster, matched, matched_jaccard = near_components(pairs, jaccard)
        groups = pa.table(
            {
                "position": positions[documents],
                "cluster": cluster,
                "matched_position": positions[matched],
                "matched_jaccard": matched_jaccard,
            }
        )
        with db.registered("_near_groups", groups):
            kept = connection.sql(
                f"SELECT position, kept_position FROM ({kept_sql('SELECT * FROM _near_groups', db.facts)}) "
                "WHERE position <> kept_position ORDER BY position"
            ).fetchnumpy()
        # Each member's exact Jaccard to its kept row (the neighbour that linked it may be another).
        to_kept = np.stack(
            [np.searchsorted(positions, kept["position"]), np.searchsorted(positions, kept["kept_position"])], axis=1
        )
        similarity = np.ones(documents.size)
        similarity[np.searchsorted(documents, to_kept[:, 0])] = jaccards(to_kept, texts_of)
    with db.registered("_near_groups", groups.append_column("jaccard", pa.array(similarity))):
        method = near_method(config)
        insert_members(connection, db.members, db.facts, "SELECT * FROM _near_groups", 2, method, linked=True)


def _local_candidates(
    db: _Scratch, config: NearConfig, signatures: str, batches: Iterator[pa.RecordBatch]
) -> tuple[np.ndarray, int]:
    """The LSH candidate pairs of the near rows (:func:`~curation.dedup.near.candidates`), in this process.

    Each row's band keys go to a scratch table (DuckDB's to hold, and spill, not this process's: 144 bytes a
    row at 18 bands, 1.3 GB at 10M rows), and each band's buckets are grouped there: only the rows whose key
    another row shares in that band come back, in key and then row order, to be paired
    (:func:`~curation.dedup.minhash.band_pair_codes`, the same pairs as sorting every key here). Rows without
    shingles are never near duplicates and get no keys."""
    connection = db.connection
    bands, rows = config.params
    columns = [f"band_{band}" for band in range(bands)]
    table = db.create("near_bands", ", ".join(["near_index BIGINT", *(f"{c} UBIGINT" for c in columns)]))
    with db.appending([table]) as append:
        for batch in batches:
            usable = np.flatnonzero(batch.column("shingles").to_numpy(zero_copy_only=False) > 0)
            if not usable.size:
                continue
            signed = batch.take(pa.array(usable))
            keys = band_keys(signature_matrix(signed.column("signature"), config.num_perm), bands, rows)
            arrays = {"near_index": signed.column("near_index")}
            arrays.update((column, pa.array(keys[:, band])) for band, column in enumerate(columns))
            append(table, pa.record_batch(arrays))

    def band_codes(column: str) -> np.ndarray | None:
        shared = connection.sql(
            f"SELECT near_index, {column} AS band_key FROM {table} WHERE {column} IN "
            f"(SELECT {column} FROM {table} GROUP BY ALL HAVING count(*) > 1) ORDER BY band_key, near_index"
        ).fetchnumpy()
        return band_pair_codes(shared["near_index"], shared["band_key"], config.max_bucket)

    cand = pairs_of_codes(band_codes(column) for column in columns)
    connection.execute(f"DROP TABLE {table}")

    def signatures_of(ids: np.ndarray) -> np.ndarray:
        with db.registered("_near_ids", pa.table({"near_index": ids})):
            found = connection.sql(
                f"SELECT signature FROM _near_ids JOIN {db.near_rows} USING (near_index) "
                f"JOIN {signatures} ON signature_key = near_key ORDER BY near_index"
            ).to_arrow_table()
        return signature_matrix(found.column("signature"), config.num_perm)

    return plausible(cand, config, signatures_of), len(cand)


def _local_jaccards(
    config: NearConfig, pairs: np.ndarray, texts_of: Callable[[np.ndarray], Sequence[str]]
) -> np.ndarray:
    """Exact Jaccards of near-row pairs on this process's threads."""
    return pair_jaccards(config.hasher(), pairs, texts_of, workers=config.workers)


def _each_side_near(
    pairs: np.ndarray,
    jaccard: np.ndarray,
    preference: np.ndarray,
    config: NearConfig,
    texts_of: Callable[..., list[str]],
    jaccards: Jaccards,
) -> tuple[np.ndarray, np.ndarray]:
    """The verified ``pairs`` (near indices, with their ``jaccard``) that are near copies per kind. Two
    preference pairs are near copies only when the chosen answers are and the rejected answers are too
    (each side's Jaccard reaches the threshold): one text of prompt, chosen and rejected answer reaches it
    when one long answer is shared and the other, short, differs entirely (A > B and A > C, distinct
    comparisons of one prompt), or when the same two answers are ordered both ways (a contradiction, the
    conflict step's business). A preference pair and a row of another kind are never near copies (they
    are different data)."""
    if not len(pairs):
        return pairs, jaccard
    left, right = preference[pairs[:, 0]], preference[pairs[:, 1]]
    keep = left == right
    both = np.flatnonzero(left & right)
    if both.size:
        for side in ("chosen", "rejected"):
            side_jaccard = jaccards(pairs[both], functools.partial(texts_of, column=side))
            keep[both[side_jaccard < config.threshold - 1e-12]] = False
    return pairs[keep], jaccard[keep]


@contextlib.contextmanager
def _candidate_texts(run: _Passes, cand: np.ndarray) -> Iterator[Callable[[np.ndarray], list[str]]]:
    """``texts_of(ids)`` for the near rows of candidate pairs: their compared texts, written (from the input
    rows) to a table in the order of their connected components, so the ids verification asks for at once
    (pairs of neighbouring components) are one range of it; read on a cursor per thread."""
    db = run.db
    connection = db.connection
    ids = np.unique(cand)
    label = component_labels(ids.size, np.searchsorted(ids, cand)) if ids.size else ids
    slot = np.empty(ids.size, dtype=np.int64)
    slot[np.lexsort((ids, label))] = np.arange(ids.size)
    with db.registered("_near_slots", pa.table({"near_index": ids, "slot": slot})):
        connection.execute(f"CREATE TABLE {db.slots} AS SELECT * FROM _near_slots")
    db.create_like("candidate_texts", TEXT_SCHEMA)
    run.over_rows(
        "deduped: texts of candidate pairs",
        "TRUE",
        ids.size,
        texts_batch,
        (db.candidate_texts,),
        columns=", s.slot, f.edited",
        joins=f"JOIN {db.near_rows} USING (position) JOIN {db.slots} AS s USING (near_index) "
        f"JOIN {db.facts} AS f USING (position)",
        inputs=FACT_INPUTS,
    )
    connection.execute(f"CREATE TABLE {db.near_texts} AS SELECT * FROM {db.candidate_texts} ORDER BY slot")
    cursors: list[duckdb.DuckDBPyConnection] = []
    local = threading.local()
    lock = threading.Lock()

    def texts_of(wanted: np.ndarray, column: str = "text") -> list[str]:
        cursor = getattr(local, "cursor", None)
        if cursor is None:
            with lock:
                cursor = local.cursor = connection.cursor()
                cursors.append(cursor)
        at = slot[np.searchsorted(ids, wanted)]
        low = int(at.min())
        texts = (
            cursor.sql(
                f"SELECT {quote(column)} AS t FROM {db.near_texts} WHERE slot BETWEEN $low AND $high ORDER BY slot",
                params={"low": low, "high": int(at.max())},
            )
            .to_arrow_table()
            .column("t")
            .to_pylist()
        )
        return [texts[i] for i in (at - low).tolist()]

    try:
        yield texts_of
    finally:
        for cursor in cursors:
            cursor.close()


PUBLISHED_INPUTS = (*COLUMNS, "sources_digest")
"""What an unedited kept row's ``deduped`` row is made of: its input row and the copies it absorbed (the
digest of their list: a join that carried the lists themselves outgrew DuckDB's 256 MB buffer at 2M rows)."""


def _publish(run: _Passes, staged: StagedWrite, survivors: str, fingerprint: str) -> tuple[int, int]:
    """Write ``deduped`` and the lineage edges of edited rows; returns how many rows were kept, and how many of
    them the current ``deduped`` already held as written (they stay in place). Rows that
    neither changed nor absorbed a copy are the input rows as they are; the others are written again
    (:func:`~curation.dedup.facts.published_batch`).

    An unedited row's ``deduped`` row follows from its input row and the copies it absorbed alone, so a memo
    of those (``dedup_publish_memo``, under the facts memo's ``fingerprint``) says which rows the current
    ``deduped`` already holds as this run would write them: they stay in place, and after a small change the
    table is patched. Without it a +1% re-run at 1M rows wrote ~115k rows again for their licence notes and
    compared them with the stored ones. Edited rows (a few dozen at 1M) are always written again."""
    db = run.db
    connection = db.connection
    lineage = staged.partition("lineage", LINEAGE_DDL)
    connection.execute(
        f"CREATE TABLE {db.absorbed} AS SELECT *, hash(sources) AS sources_digest "
        f"FROM ({absorbed_sql(db.members, db.facts, quote(run.source))})"
    )
    # The kept rows, with what decides how they are written, in a table of their own: the same joins inside
    # the memo's query were planned from an estimate of a twentieth of the rows, and at 2M rows the join
    # built on the wrong side outgrew DuckDB's 256 MB buffer.
    connection.execute(
        f"CREATE TABLE {db.kept_rows} AS SELECT p.row_id, f.position, f.edited, a.sources_digest, "
        f"a.position IS NOT NULL AS absorbed FROM {db.positions} AS p JOIN {survivors} AS f USING (position) "
        f"LEFT JOIN {db.absorbed} AS a USING (position)"
    )
    unedited = (
        f"(SELECT {_INPUT_COLUMNS}, k.sources_digest FROM {quote(run.source)} AS r "
        f"JOIN {db.kept_rows} AS k USING (row_id) WHERE NOT k.edited)"
    )
    unchanged = plan_reuse(staged, "dedup_publish_memo", unedited, PUBLISHED_INPUTS, fingerprint, ("deduped",))
    try:
        # The rows to write, by position, before any input row is read: a read that also carried the ~900k ids
        # of the rows in place outgrew DuckDB's 256 MB buffer in a +1% re-run at 1M.
        connection.execute(
            f"CREATE TABLE {db.to_write} AS SELECT position, edited, edited OR absorbed AS rewrite "
            f"FROM {db.kept_rows} WHERE edited OR {unchanged.excluding('row_id')}"
        )
        (total,) = fetch_one(connection, f"SELECT count(*) FROM {db.kept_rows}")
        (count,) = fetch_one(connection, f"SELECT count(*) FILTER (rewrite) FROM {db.to_write}")
        deduped = stage_output(
            staged,
            "deduped",
            canonical_ddl(),
            unchanged,
            "row_id",
            f"SELECT row_id FROM {unchanged.table}",
            total - unchanged.rows,
            COLUMNS,
        )
        to_write = f"JOIN {db.to_write} AS w USING (position)"
        run.over_rows(
            "deduped: publishing changed rows",
            "w.rewrite",
            count,
            published_batch,
            (deduped, lineage),
            columns=", w.edited, a.sources",
            joins=f"{to_write} LEFT JOIN {db.absorbed} AS a USING (position)",
        )
        connection.execute(
            f"INSERT INTO {deduped} SELECT {_INPUT_COLUMNS} FROM {quote(run.source)} AS r "
            f"JOIN {db.positions} AS p USING (row_id) {to_write} WHERE NOT w.rewrite"
        )
    finally:
        drop_reuse(connection, unchanged)
    return int(total), unchanged.rows


def _counts(db: _Scratch) -> dict[str, int]:
    removed, flagged = fetch_one(
        db.connection,
        f"SELECT count(*) FILTER (removed), count(*) FILTER (NOT removed AND position <> final_kept) FROM {db.members}",
    )
    (edited,) = fetch_one(db.connection, f"SELECT count(*) FILTER (edited) FROM {db.facts}")
    return {"removed": int(removed), "edited_rows": int(edited), "flagged_not_removed": int(flagged)}


# ---------------------------------------------------------------------------------------------
# Figures for the asset's metadata.

LARGEST_CLUSTERS = 10
MEMBERS_SHOWN = 25
"""Members listed per cluster in the largest-clusters table (a cluster can hold thousands of copies)."""


def _figures(connection: duckdb.DuckDBPyConnection, db: _Scratch, clusters: str, source: str) -> dict[str, str]:
    """Removals by method and by source, the largest clusters and the cluster-size histogram."""
    by_method = dict(
        connection.execute(f"SELECT method, count(*) FROM {db.members} WHERE removed GROUP BY method").fetchall()
    )
    by_source = dict(
        connection.execute(
            f"SELECT r.source, count(*) FROM {db.members} JOIN {db.facts} USING (position) "
            f"JOIN {quote(source)} AS r USING (row_id) WHERE removed GROUP BY r.source"
        ).fetchall()
    )
    sizes = f"SELECT cluster_id, count(*) AS size FROM {clusters} GROUP BY cluster_id"
    histogram = connection.execute(f"SELECT size, count(*) FROM ({sizes}) GROUP BY size ORDER BY size").fetchall()
    largest = connection.execute(
        f"SELECT cluster_id, size FROM ({sizes}) ORDER BY size DESC, cluster_id LIMIT ?", [LARGEST_CLUSTERS]
    ).fetchall()
    return {
        "removed_by_method": counts_table(by_method, "method"),
        "removed_by_source": counts_table(by_source, "source"),
        "largest_clusters": _largest_clusters_table(connection, db, clusters, source, largest),
        "cluster_sizes": cluster_size_histogram([size for size, clusters in histogram for _ in range(clusters)]),
    }


def _largest_clusters_table(
    connection: duckdb.DuckDBPyConnection, db: _Scratch, clusters: str, source: str, largest: Sequence[tuple[str, int]]
) -> str:
    """The members of the ``largest`` clusters (id, size) as a Markdown table, with each row's source,
    licence and prompt, so a reviewer sees at a glance what was merged."""
    if not largest:
        return markdown_table([])
    with db.registered("_largest", pa.table({"cluster_id": [c for c, _ in largest], "rank": range(len(largest))})):
        members = connection.execute(
            "SELECT c.cluster_id, c.row_id, c.removed, c.jaccard, r.source, r.license, r.messages, r.text "
            f"FROM {clusters} AS c JOIN _largest USING (cluster_id) JOIN {quote(source)} AS r USING (row_id) "
            f"JOIN {db.positions} AS p USING (row_id) "
            "QUALIFY row_number() OVER (PARTITION BY c.cluster_id ORDER BY p.position) <= ? "
            "ORDER BY _largest.rank, p.position",
            [MEMBERS_SHOWN],
        ).fetchall()
    size = dict(largest)
    rows = []
    for cluster_id, row_id, removed, jaccard, row_source, license_id, messages, text in members:
        prompt = next((m.get("content") for m in json.loads(messages or "[]") if m.get("role") == "user"), None)
        rows.append(
            {
                "cluster": cluster_id[:40],
                "size": size[cluster_id],
                "row_id": row_id,
                "kept": "✓" if not removed else "",
                "jaccard": round(jaccard, 3),
                "source": row_source,
                "license": license_id,
                "prompt": prompt or text,
            }
        )
    return markdown_table(rows, width=50)


def cluster_size_histogram(sizes: Sequence[int]) -> str:
    """Cluster-size histogram as a PNG inside Markdown (the UI shows it inline)."""
    if not sizes:
        return "_no clusters_"
    plt = pyplot()

    figure, axis = plt.subplots(figsize=(5, 3))
    bin_edges = (np.arange(2, max(sizes) + 2) - 0.5).tolist()  # one bar per size, centred on it
    axis.hist(sizes, bins=bin_edges, color="#4f6bed")
    axis.set_xlabel("rows per cluster")
    axis.set_ylabel("clusters")
    axis.set_title("Duplicate cluster sizes")
    return png_markdown(figure_png(figure, dpi=100), "cluster sizes")
