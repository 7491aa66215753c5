"""The formatted dataset: canonical rows rendered for the target model, split and decontaminated.

This module holds the table layout of ``formatted`` and the pure per-row steps the asset runs:
grouping rows with their ancestors for the split, and turning a rendered row into a record.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from curation.chat_format import RenderedRow
from curation.schema import Row, make_row_id

FORMATTED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("parent_id", "VARCHAR"),
    ("split", "VARCHAR"),
    ("subset", "DOUBLE"),
    ("n_tokens", "BIGINT"),
    ("prompt_text", "VARCHAR"),
    ("chosen_text", "VARCHAR"),
    ("rejected_text", "VARCHAR"),
    ("assistant_mask", "JSON"),
    ("mask_source", "VARCHAR"),
    ("truncation", "VARCHAR"),
    ("template_id", "VARCHAR"),
    ("tokenizer_id", "VARCHAR"),
)
"""Columns ``formatted`` adds to the canonical row; its ``text`` holds the rendered text."""

FORMAT_REJECTIONS_DDL = "row_id VARCHAR NOT NULL, stage VARCHAR NOT NULL, reason VARCHAR NOT NULL, detail VARCHAR"
CONTAMINATION_DDL = ("row_id VARCHAR NOT NULL, source VARCHAR, benchmark VARCHAR, item_id VARCHAR, kind VARCHAR, "
                     "overlap VARCHAR, ratio DOUBLE, n BIGINT")


def root_ancestors(edges: Iterable[tuple[str, str]]) -> dict[str, str]:
    """child → the earliest ancestor reachable through ``(child, parent)`` edges."""
    parent_of: dict[str, str] = {}
    for child, parent in edges:
        parent_of.setdefault(child, parent)
    roots: dict[str, str] = {}
    for child in parent_of:
        node, seen = child, {child}
        while node in parent_of and parent_of[node] not in seen:
            node = parent_of[node]
            seen.add(node)
        roots[child] = node
    return roots


def split_groups(row_ids: Iterable[str], roots: Mapping[str, str], clusters: Mapping[str, str]) -> dict[str, str]:
    """Group id per row: its near-duplicate cluster if it has one, else its root ancestor, so a
    cleaned copy, a perturbation or a paraphrase never lands in a different split from its origin."""
    groups = {}
    for row_id in row_ids:
        root = roots.get(row_id, row_id)
        groups[row_id] = clusters.get(root) or clusters.get(row_id) or root
    return groups


def formatted_record(row: Row, rendered: RenderedRow, split: str, subset: float) -> dict[str, Any]:
    """The ``formatted`` row for one rendered input row (a new id; the edge goes to lineage)."""
    record = dict(row)
    record.update(
        row_id=make_row_id(row["row_id"], "format", rendered.template_id, rendered.tokenizer_id),
        parent_id=row["row_id"],
        text=rendered.text,
        split=split,
        subset=subset,
        n_tokens=rendered.n_tokens,
        prompt_text=rendered.prompt,
        chosen_text=rendered.chosen,
        rejected_text=rendered.rejected,
        assistant_mask=json.dumps(rendered.assistant_mask),
        mask_source=rendered.mask_source,
        truncation=rendered.truncation,
        template_id=rendered.template_id,
        tokenizer_id=rendered.tokenizer_id,
    )
    if rendered.truncation:  # the rendering was cut: keep the messages that were actually rendered
        record["messages"] = rendered.messages
    return record
