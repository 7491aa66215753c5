"""Exact duplicates: rows whose normalised field set is identical (same :func:`exact_key`)."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from curation.core.normalize import DEFAULT_OPTIONS, NormalizeOptions, normalize_text
from curation.core.schema import Row
from curation.dedup.clusters import DEFAULT_POLICY, ClusterMember, KeepPolicy, cluster_members
from curation.dedup.fields import FieldSet, dedup_text, field_parts

_SEP = "\x1f"  # cannot occur after whitespace normalisation, so joined fields never run together


def exact_key(row: Row, fields: FieldSet, options: NormalizeOptions = DEFAULT_OPTIONS) -> str:
    """Hex digest of the normalised field set: equal keys mean exact duplicates."""
    normalised = _SEP.join(normalize_text(p, options) for p in field_parts(row, fields))
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class ExactConfig:
    fields: FieldSet = "prompt_response"
    normalize: NormalizeOptions = DEFAULT_OPTIONS


def exact_duplicates(
    rows: Sequence[Row], config: ExactConfig = ExactConfig(), policy: KeepPolicy = DEFAULT_POLICY
) -> list[ClusterMember]:
    """Clusters of rows whose normalised field set is identical (only clusters of two or more).
    Rows with nothing in the compared fields (e.g. no user turn for ``first_prompt``) are skipped:
    empty is not a duplicate of empty."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        if not dedup_text(row, config.fields).strip():
            continue
        groups[exact_key(row, config.fields, config.normalize)].append(i)
    return cluster_members(rows, (g for g in groups.values() if len(g) > 1), f"exact:{config.fields}", policy)
