"""Provenance of ingested model-made rows: a source declared ``origin: synthetic`` (or ``augmented``) with a
``generator`` brings rows a model wrote outside this pipeline. Each gets a ``provenance`` record like the rows
the ``synthetic`` stage makes, so "which model and licence produced each model-made row" is one query over
``provenance``: method ``ingested``, the generator as teacher (backend ``source:<name>``), the licence and terms
``policy.teachers`` declares for it, and, for a generator nobody declared, ``unknown terms`` (which a commercial
build refuses, as the licence filter and the compliance report do:
:func:`curation.synth.terms.generator_refusals`). The row's own licence (the source's) and where it came from
are in ``verification``.

One ``INSERT … SELECT`` in DuckDB over the table: no row is read into Python, whatever its size.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import duckdb
import pyarrow as pa

from curation.core.warehouse import quote
from curation.synth.terms import ModelTerms

INGESTED_METHOD = "ingested"
UNKNOWN_TERMS = "unknown terms (generator not declared under policy.teachers)"


def declared_terms(entry: ModelTerms) -> str:
    """A registry entry's terms as provenance records them: the terms, and the uses they forbid."""
    forbids = f"forbids {', '.join(entry.forbids)} use" if entry.forbids else ""
    return "; ".join(part for part in (entry.terms, forbids) if part) or "declared, no restrictions"


def insert_ingested_provenance(
    connection: duckdb.DuckDBPyConnection,
    provenance_table: str,
    rows_table: str,
    registry: Mapping[str, ModelTerms],
    created_at: datetime,
) -> int:
    """Add a provenance record for every model-made row of ``rows_table`` (origin not human, a generator) that
    has none in ``provenance_table`` yet; returns how many were added."""
    models = sorted(registry)
    declared = pa.table(
        {
            "model": pa.array(models, pa.string()),
            "license": pa.array([registry[m].license for m in models], pa.string()),
            "terms": pa.array([declared_terms(registry[m]) for m in models], pa.string()),
        }
    )
    connection.register("_ingested_registry", declared)
    try:
        inserted = connection.execute(
            # By name: columns a newer provenance layout adds stay NULL for these records.
            f"""INSERT INTO {quote(provenance_table)} BY NAME
            SELECT t.row_id, ? AS method, 'source:' || t.source AS teacher_backend, t.generator AS teacher_model,
                   g.license AS teacher_license, coalesce(g.terms, ?) AS teacher_terms,
                   '{{}}' AS generation_params, '[]' AS parent_ids,
                   json_object('source', t.source, 'source_uri', t.source_uri, 'source_license', t.license,
                               'generator_declared', g.model IS NOT NULL)::VARCHAR AS verification,
                   ? AS created_at
            FROM {quote(rows_table)} t LEFT JOIN _ingested_registry g ON g.model = t.generator
            WHERE t.origin <> 'human' AND t.generator IS NOT NULL
              AND t.row_id NOT IN (SELECT row_id FROM {quote(provenance_table)})""",
            [INGESTED_METHOD, UNKNOWN_TERMS, created_at],
        ).fetchall()  # DuckDB answers an INSERT with the count of rows it added
    finally:
        connection.unregister("_ingested_registry")
    return int(inserted[0][0]) if inserted else 0
