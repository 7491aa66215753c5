"""Independent looks at the filtered table that its checks report: PII still detectable after
redaction, licences against the intended use. They reuse the detector and the policy the stage uses,
never the stage's own results, so a bypassed or broken step is caught."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

import duckdb

from curation.core.config import ProjectConfig
from curation.core.licenses import LicensePolicy
from curation.core.schema import COLUMNS, Row, iter_rows
from curation.core.warehouse import quote, read_batches
from curation.filter.base import Cleaner, Filter
from curation.filter.batch import BatchTexts
from curation.filter.pii import batch_candidates, find_pii, pii_screen
from curation.synth.terms import parse_model_registry, row_refusals

EVERY_ROW_ENTITIES: tuple[str, ...] = ("PRIVATE_KEY", "URL_CREDENTIALS")
"""Looked for in every row even when the check scans a sample: the most damaging secrets, and their
screens (a fixed string to find first) run over the stored JSON at memory speed. They hold for the
JSON text as well as for the texts in it: no character they need is escaped by JSON."""

_BATCH_ROWS = 2_000


def pii_policy(cleaners: Sequence[Cleaner], filters: Sequence[Filter]) -> tuple[str, ...]:
    """The PII types the project removes: those the `pii` cleaner redacts and the `pii` filter drops."""
    entities: list[str] = []
    steps: list[Cleaner | Filter] = [*cleaners, *filters]
    for step in steps:
        if step.name == "pii":
            entities += [e for e in getattr(step, "entities", None) or () if e not in entities]
    return tuple(entities)


def pii_left(
    rows: Iterable[Row], entities: Collection[str], sample: int = 10
) -> tuple[int, Counter[str], list[dict[str, Any]]]:
    """(rows scanned, rows with a match per entity type, a few hits). Hits name the row, the type and
    the offset (in :func:`curation.core.texts.all_text` of the row) but never the matched text: the
    check's metadata must not republish the secret.

    Each text of a row is searched on its own, exactly as the `pii` cleaner redacts it: a context word
    at the end of the prompt does not make a number at the start of the answer a phone number here
    when it did not for the cleaner. Texts are walked and screened a batch at a time, the way the cleaner
    does it (:func:`curation.filter.pii.batch_candidates`), with the same result."""
    scanned, per_entity = 0, Counter[str]()
    hits: list[dict[str, Any]] = []
    for batch in _batches(rows):
        scanned += len(batch)
        # The cleaner's own walk and screens (curation.filter.batch), so both search the same texts.
        texts = BatchTexts(batch)
        found: dict[int, list[tuple[str, int, int]]] = {}  # row → (entity, offset in all_text, length)
        for position, wanted in batch_candidates(texts, entities).items():
            row = int(texts.owner[position])
            # all_text joins the row's texts with a newline: this text starts after the earlier ones.
            offset = sum(len(text) + 1 for text in texts.texts[texts.starts[row] : position])
            found.setdefault(row, []).extend(
                (m.entity, offset + m.start, m.end - m.start) for m in find_pii(texts.texts[position], wanted)
            )
        for row, matches in sorted(found.items()):
            for entity in dict.fromkeys(entity for entity, _, _ in matches):
                per_entity[entity] += 1
            if matches and len(hits) < sample:
                entity, offset, length = matches[0]
                hits.append(
                    {
                        "row_id": batch[row]["row_id"],
                        "source": batch[row].get("source"),
                        "entity": entity,
                        "offset": offset,
                        "length": length,
                    }
                )
    return scanned, per_entity, hits


def _batches(rows: Iterable[Row]) -> Iterator[list[Row]]:
    iterator = iter(rows)
    while batch := list(islice(iterator, _BATCH_ROWS)):
        yield batch


def pii_left_in_every_row(
    connection: duckdb.DuckDBPyConnection, table: str, entities: Collection[str], sample: int = 10
) -> tuple[int, Counter[str], list[dict[str, Any]]]:
    """:func:`pii_left` for ``entities`` (of :data:`EVERY_ROW_ENTITIES`) over every row of ``table``: DuckDB
    screens the stored texts, the detectors search the rows that pass. Returns (rows that passed the
    screen, rows with a match per entity, a few hits)."""
    if not entities:
        return 0, Counter(), []
    screen = pii_screen(entities)
    texts = "concat_ws(chr(10), text, CAST(messages AS VARCHAR), CAST(chosen AS VARCHAR), CAST(rejected AS VARCHAR))"
    columns = ", ".join(quote(name) for name in COLUMNS)
    sql = f"SELECT {columns} FROM {quote(table)}"
    if screen is not None:
        sql += f" WHERE regexp_matches({texts}, ?)"
    sql += " ORDER BY row_id"
    return pii_left(iter_rows(read_batches(connection, sql, [screen] if screen else [])), entities, sample)


def license_breakdown(
    connection: duckdb.DuckDBPyConnection, table: str, project: ProjectConfig
) -> list[dict[str, Any]]:
    """Rows per licence (and, for model-made rows, generator) in ``table`` and whether the project's policy
    allows them for its intended use: every refusal the licence filter would give (each id of the licence
    expression, the generator's terms in ``policy.teachers``; :func:`curation.synth.terms.row_refusals`)."""
    policy = LicensePolicy.with_overrides(project.policy.licenses)
    registry = parse_model_registry(
        {k: (v.model_dump() if hasattr(v, "model_dump") else v) for k, v in (project.policy.teachers or {}).items()}
    )
    result = []
    for license_id, generator, rows in connection.execute(
        f"SELECT license, CASE WHEN origin <> 'human' THEN generator END, count(*) FROM {quote(table)} "
        "GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2"
    ).fetchall():
        row = {"license": license_id, "origin": "synthetic" if generator else "human", "generator": generator}
        reasons = row_refusals(row, project.policy.intended_use, policy, registry)
        result.append(
            {
                "license": license_id,
                "generator": generator,
                "rows": int(rows),
                "allowed": not reasons,
                "why_not": "; ".join(reasons) or None,
            }
        )
    return result
