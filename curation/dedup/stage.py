"""The ``deduped`` stage in order: the :class:`DedupPlan` (which steps run, with which settings, built
from the project file by :func:`plan_from_project`), :func:`dedup_rows` (repeats and boilerplate
removed inside rows, then exact, near and same-prompt dedup, each on the survivors of the previous
step) and :func:`run_dedup`, which the asset calls: raw rows and persisted signatures in, the tables
to write and the figures to report out."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from curation.core.config import DedupConfig
from curation.core.markdown import counts_table, figure_png, markdown_table, png_markdown, pyplot
from curation.core.normalize import NormalizeOptions
from curation.core.provenance import lineage_record
from curation.core.schema import Row, derived_id, rows_to_table
from curation.core.warehouse import SOURCE_ORDER, canonical_ddl, table_names, table_rows
from curation.dedup.clusters import CLUSTERS_DDL, ClusterMember, KeepPolicy, clusters_table, with_license_note
from curation.dedup.conflicts import ConflictConfig, same_prompt_conflicts
from curation.dedup.exact import ExactConfig, exact_duplicates
from curation.dedup.fields import dedup_text
from curation.dedup.minhash import ShingleConfig, signature_bytes, signature_from_bytes
from curation.dedup.near import (
    NearConfig,
    SignatureStore,
    near_clusters,
    near_duplicate_pairs,
    signatures_with_store,
)
from curation.dedup.repeats import (
    BoilerplateConfig,
    RemovedText,
    WithinConfig,
    boilerplate_keys,
    paragraph_counts,
    remove_repeats_in_row,
    strip_boilerplate,
)

# ---------------------------------------------------------------------------------------------
# The plan and its run over rows.


@dataclass(frozen=True)
class DedupPlan:
    """Which dedup steps run, in order, and how; ``None`` switches a step off."""

    within: WithinConfig | None = field(default_factory=WithinConfig)
    boilerplate: BoilerplateConfig | None = field(default_factory=BoilerplateConfig)
    exact: ExactConfig | None = field(default_factory=ExactConfig)
    near: NearConfig | None = field(default_factory=NearConfig)
    conflicts: ConflictConfig = field(default_factory=ConflictConfig)
    policy: KeepPolicy = field(default_factory=KeepPolicy)


@dataclass
class DedupResult:
    kept: list[Row]
    members: list[ClusterMember]
    removed_texts: list[RemovedText]
    signatures: np.ndarray | None  # aligned with the rows that reached the near stage
    signature_row_ids: list[str]
    signature_keys: list[str] = field(default_factory=list)  # signature_key of each, to persist them
    shingle_counts: np.ndarray | None = None
    signatures_computed: int = 0  # MinHash work done (0 on unchanged input with known signatures)


def dedup_rows(
    rows: Sequence[Row], plan: DedupPlan = DedupPlan(), known_signatures: SignatureStore | None = None
) -> DedupResult:
    """In-text removals, then exact, near and same-prompt dedup, each on the previous stage's survivors.
    Each removed row appears once in ``members`` (the stage that removed it). ``known_signatures``
    (persisted by an earlier run, see :func:`curation.dedup.near.signature_key`) spares MinHash work
    on texts seen before."""
    rows = list(rows)
    removed_texts: list[RemovedText] = []
    if plan.within is not None:
        out = []
        for row in rows:
            row, removals = remove_repeats_in_row(row, plan.within)
            out.append(row)
            removed_texts.extend(removals)
        rows = out
    if plan.boilerplate is not None:
        paragraph_rows, n_rows = paragraph_counts(rows, plan.boilerplate)
        boilerplate = boilerplate_keys(paragraph_rows, n_rows, plan.boilerplate)
        if boilerplate:
            out = []
            for row in rows:
                row, removals = strip_boilerplate(row, boilerplate, plan.boilerplate)
                out.append(row)
                removed_texts.extend(removals)
            rows = out
    members: list[ClusterMember] = []

    def survivors(current: list[Row], stage: list[ClusterMember]) -> list[Row]:
        gone = {m.row_id for m in stage if m.removed}
        return [r for r in current if r["row_id"] not in gone]

    if plan.exact is not None:
        stage = exact_duplicates(rows, plan.exact, plan.policy)
        members.extend(stage)
        rows = survivors(rows, stage)
    result = DedupResult([], [], removed_texts, None, [])
    if plan.near is not None and rows:
        texts = [dedup_text(r, plan.near.fields) for r in rows]
        signatures, shingle_counts, keys, computed = signatures_with_store(texts, plan.near, known_signatures or {})
        pairs = near_duplicate_pairs(texts, plan.near, signatures, shingle_counts)
        stage = near_clusters(rows, pairs, plan.near, plan.policy, texts)
        members.extend(stage)
        result = DedupResult(
            [], [], removed_texts, signatures, [r["row_id"] for r in rows], keys, shingle_counts, computed
        )
        rows = survivors(rows, stage)
    stage = same_prompt_conflicts(rows, plan.conflicts, plan.policy)
    members.extend(stage)
    result.kept, result.members = survivors(rows, stage), resolve_kept_rows(members)
    return result


def resolve_kept_rows(members: Sequence[ClusterMember]) -> list[ClusterMember]:
    """Point every member at the row that finally holds its content. A later step may remove the row an
    earlier step kept (an exact cluster's kept row that is itself a near copy of another row); its absorbed
    copies then follow it to that row, so ``kept_row_id`` always names a row in ``deduped`` (or its cleaned
    copy). ``matched_row_id`` still names the row each was actually compared with."""
    removed_into = {m.row_id: m.kept_row_id for m in members if m.removed}

    def final(row_id: str) -> str:
        chain = []
        while row_id in removed_into:
            chain.append(row_id)
            row_id = removed_into[row_id]
        for hop in chain:  # path compression: each chain is walked once
            removed_into[hop] = row_id
        return row_id

    out = []
    for member in members:
        target = final(member.kept_row_id)
        if member.kept_row_id != target:
            # A kept row that lost later is listed again (removed) by that step, so its own kept entry goes.
            if not member.removed:
                continue
            member = replace(member, kept_row_id=target)
        out.append(member)
    return out


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
# Signatures persisted between runs (the dedup_signatures table), so unchanged texts are never
# MinHashed again.

SIGNATURES_DDL = "signature_key VARCHAR PRIMARY KEY, signature BLOB NOT NULL, shingles BIGINT NOT NULL"
SIGNATURE_SCHEMA = pa.schema([("signature_key", pa.string()), ("signature", pa.binary()), ("shingles", pa.int64())])


def load_signatures(connection: duckdb.DuckDBPyConnection, plan: DedupPlan) -> dict[str, tuple[np.ndarray, int]]:
    """The signatures an earlier run persisted, by signature key (none when near dedup is off)."""
    if "dedup_signatures" not in table_names(connection) or plan.near is None:
        return {}
    num_perm = plan.near.num_perm
    return {
        key: (signature_from_bytes(blob, num_perm), shingles)
        for key, blob, shingles in connection.execute(
            "SELECT signature_key, signature, shingles FROM dedup_signatures"
        ).fetchall()
    }


def signatures_table(result: DedupResult) -> pa.Table:
    """The ``dedup_signatures`` rows of this run: one per distinct signature key."""
    if result.signatures is None or result.shingle_counts is None:
        return SIGNATURE_SCHEMA.empty_table()
    signatures, shingle_counts = result.signatures, result.shingle_counts
    # The last text with a key wins; texts sharing a key are identical, so their signatures are too.
    unique = dict(zip(result.signature_keys, range(len(result.signature_keys)), strict=True))
    return pa.table(
        {
            "signature_key": list(unique),
            "signature": [signature_bytes(signatures[i]) for i in unique.values()],
            "shingles": [int(shingle_counts[i]) for i in unique.values()],
        },
        schema=SIGNATURE_SCHEMA,
    )


# ---------------------------------------------------------------------------------------------
# The asset's run: rows in, tables and report out.


def published_rows(result: DedupResult, rows_by_id: Mapping[str, Row]) -> tuple[list[Row], list[dict[str, Any]]]:
    """The kept rows as ``deduped`` stores them, and their lineage edges. A kept row lists the
    licences of the copies it absorbed (:func:`with_license_note`); a row whose text was edited gets
    a derived id, and its edge says what was removed and where."""
    # Grouped once, in their original order, so each kept row looks up its own (not a scan per row).
    removed_by_row: dict[str, list[RemovedText]] = defaultdict(list)
    for removal in result.removed_texts:
        removed_by_row[removal.row_id].append(removal)
    absorbed_by_kept: dict[str, list[ClusterMember]] = defaultdict(list)
    for member in result.members:
        if member.removed:
            absorbed_by_kept[member.kept_row_id].append(member)
    kept: list[Row] = []
    edges: list[dict[str, Any]] = []
    for row in result.kept:
        row = with_license_note(row, absorbed_by_kept.get(row["row_id"], ()), rows_by_id)
        removed = removed_by_row.get(row["row_id"])
        if removed:  # text changed: a new id, and the edge says what was removed
            parent = row["row_id"]
            row = {**row, "row_id": derived_id(row, parent)}
            edges.append(
                lineage_record(
                    row["row_id"],
                    parent,
                    "deduped",
                    "dedup:" + ",".join(sorted({e.operation for e in removed})),
                    "; ".join(f"{e.location}: removed {e.operation} {e.removed[:60]!r}" for e in removed),
                )
            )
        kept.append(row)
    return kept, edges


@dataclass
class DedupRun:
    """One run of the ``deduped`` stage over the warehouse: the tables to write (``deduped``,
    ``dedup_clusters``, ``dedup_signatures``, each with its DDL), the lineage edges of edited rows,
    and what the asset reports."""

    settings: DedupConfig
    plan: DedupPlan
    input_rows: dict[str, Row]  # raw rows by id, in source order
    result: DedupResult
    tables: dict[str, tuple[str, pa.Table]]
    lineage: list[dict[str, Any]]
    signatures_reused: int

    @property
    def log_line(self) -> str:
        return (
            f"deduped: {len(self.result.kept)} of {len(self.input_rows)} rows kept; MinHash computed for "
            f"{self.result.signatures_computed} texts, {self.signatures_reused} signatures reused"
        )

    def counts(self) -> dict[str, int]:
        members = self.result.members
        return {
            "removed": sum(1 for m in members if m.removed),
            "edited_rows": len({e.row_id for e in self.result.removed_texts}),
            "flagged_not_removed": sum(1 for m in members if not m.removed and m.row_id != m.kept_row_id),
            "minhash_computed": self.result.signatures_computed,
            "signatures_reused": self.signatures_reused,
        }

    def markdown(self) -> dict[str, str]:
        """Removals by method and by source, the largest clusters and the cluster-size histogram."""
        members = self.result.members
        removed = [m for m in members if m.removed]
        by_method = Counter(m.method for m in removed)
        by_source = Counter(self.input_rows[m.row_id]["source"] for m in removed)
        sizes = Counter(m.cluster_id for m in members)
        largest = sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
        return {
            "removed_by_method": counts_table(dict(by_method), "method"),
            "removed_by_source": counts_table(dict(by_source), "source"),
            "largest_clusters": largest_clusters_table(members, self.input_rows, largest),
            "cluster_sizes": cluster_size_histogram(list(sizes.values())),
        }

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


def run_dedup(connection: duckdb.DuckDBPyConnection, settings: DedupConfig) -> DedupRun:
    """Dedup the warehouse's ``raw`` rows with the project's ``dedup:`` settings, reusing the
    signatures a previous run persisted in ``dedup_signatures``."""
    plan = plan_from_project(settings)
    known = load_signatures(connection, plan)
    rows = list(table_rows(connection, "raw", order_by=SOURCE_ORDER))  # ties go to the earlier record
    result = dedup_rows(rows, plan, known)
    rows_by_id = {r["row_id"]: r for r in rows}
    kept, edges = published_rows(result, rows_by_id)
    tables = {
        "deduped": (canonical_ddl(), rows_to_table(kept)),
        "dedup_clusters": (CLUSTERS_DDL, clusters_table(result.members)),
        "dedup_signatures": (SIGNATURES_DDL, signatures_table(result)),
    }
    return DedupRun(settings, plan, rows_by_id, result, tables, edges, len(known))


# ---------------------------------------------------------------------------------------------
# Figures for the asset's metadata.


def largest_clusters_table(
    members: Sequence[ClusterMember], rows_by_id: Mapping[str, Row], largest: Sequence[tuple[str, int]]
) -> str:
    """The members of the ``largest`` clusters (id, size) as a Markdown table, with each row's source,
    licence and prompt, so a reviewer sees at a glance what was merged."""
    rows = []
    for cluster_id, size in largest:
        for member in (m for m in members if m.cluster_id == cluster_id):
            row = rows_by_id[member.row_id]
            first = next((m.get("content") for m in row.get("messages") or [] if m.get("role") == "user"), None)
            rows.append(
                {
                    "cluster": cluster_id[:40],
                    "size": size,
                    "row_id": member.row_id,
                    "kept": "✓" if not member.removed else "",
                    "jaccard": round(member.jaccard, 3),
                    "source": row["source"],
                    "license": row["license"],
                    "prompt": first or row.get("text"),
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
