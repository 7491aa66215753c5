"""Exact duplicates: rows whose normalised field set is identical (same :func:`exact_key`). The stage
groups rows by this key in SQL (:mod:`curation.dedup.stage`)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from curation.core.normalize import DEFAULT_OPTIONS, NormalizeOptions
from curation.core.schema import Row
from curation.dedup.fields import FieldSet, field_parts, normalized

_SEP = "\x1f"  # cannot occur after whitespace normalisation, so joined fields never run together


def exact_key(row: Row, fields: FieldSet, options: NormalizeOptions = DEFAULT_OPTIONS) -> str:
    """Hex digest of the normalised field set: equal keys mean exact duplicates."""
    return parts_key(field_parts(row, fields), options)


def parts_key(parts: list[str], options: NormalizeOptions = DEFAULT_OPTIONS) -> str:
    """:func:`exact_key` from the row's :func:`~curation.dedup.fields.field_parts`."""
    return normalised_key([normalized(p, options) for p in parts])


def normalised_key(normalised: Iterable[str]) -> str:
    """:func:`parts_key` from the parts already normalised (the stage normalises each text once)."""
    return hashlib.sha256(_SEP.join(normalised).encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class ExactConfig:
    fields: FieldSet = "prompt_response"
    normalize: NormalizeOptions = DEFAULT_OPTIONS

    @property
    def method(self) -> str:
        """How ``dedup_clusters.method`` names these clusters."""
        return f"exact:{self.fields}"


def exact_groups_sql(rows: str) -> str:
    """``(position, cluster)`` of the rows of ``rows`` (a relation of per-row facts) that share their exact
    key with another; rows with nothing in the compared fields have no key (empty is not a duplicate of
    empty)."""
    return (
        f"SELECT position, exact_key AS cluster FROM {rows} WHERE exact_key IS NOT NULL "
        "QUALIFY count(*) OVER (PARTITION BY exact_key) > 1"
    )
