"""The formatted dataset: canonical rows rendered for the target model, split and decontaminated.

This module holds the table layout of ``formatted`` and the pure per-row steps the asset runs:
grouping rows with their ancestors for the split, verifying a rendering (control tokens, round trip,
generation prompt) and turning a rendered row into a record. The asset checks re-run the same
verifications on the stored rows, and :func:`split_leaks` re-derives split groups independently.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from curation.core.schema import JSON_COLUMNS, Row, make_row_id
from curation.core.warehouse import quote, read_batches
from curation.format.render import (
    RenderedRow,
    generation_prompt_matches,
    load_tokenizer,
    round_trip_ok,
    special_tokens_in_content,
)

if TYPE_CHECKING:  # transformers is slow to import; only the type checker needs it here
    import duckdb
    from transformers import PreTrainedTokenizerBase

    from curation.core.config import ProjectConfig

FORMATTED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("parent_id", "VARCHAR"),
    ("split", "VARCHAR"),
    ("subset", "DOUBLE"),
    ("n_tokens", "BIGINT"),
    ("prompt_text", "VARCHAR"),
    ("chosen_text", "VARCHAR"),
    ("rejected_text", "VARCHAR"),
    ("input_ids", "JSON"),
    ("assistant_mask", "JSON"),
    ("mask_source", "VARCHAR"),
    ("truncation", "VARCHAR"),
    ("round_trip", "VARCHAR"),
    ("generation_prompt_ok", "BOOLEAN"),
    ("template_id", "VARCHAR"),
    ("tokenizer_id", "VARCHAR"),
)
"""Columns ``formatted`` adds to the canonical row. Its ``text`` holds the rendered text (the raw text
for text rows) and ``messages`` the messages actually rendered (system prompt added, earliest turns
dropped by truncation), so re-rendering ``messages`` gives ``text``. ``input_ids`` and
``assistant_mask`` are empty lists for preference rows (prompt/chosen/rejected texts are the split)."""

# format_rejections.stage: decontamination, render, length, special_tokens or round_trip (in the order applied).
FORMAT_REJECTIONS_DDL = "row_id VARCHAR NOT NULL, stage VARCHAR NOT NULL, reason VARCHAR NOT NULL, detail VARCHAR"
CONTAMINATION_DDL = ("row_id VARCHAR NOT NULL, source VARCHAR, benchmark VARCHAR, item_id VARCHAR, kind VARCHAR, "
                     "overlap VARCHAR, ratio DOUBLE, n BIGINT")

def load_format_tokenizer(config: ProjectConfig) -> PreTrainedTokenizerBase:
    """The tokenizer and chat template of ``format:`` in the project file (a directory relative to the
    project file, else a hub id from the local cache)."""
    settings = config.format
    local = config.resolve(settings.tokenizer)
    return load_tokenizer(local if local.is_dir() else settings.tokenizer, settings.chat_template)


def iter_formatted_rows(connection: duckdb.DuckDBPyConnection, table: str = "formatted",
                        batch_rows: int = 2_000) -> Iterator[Row]:
    """Stored ``formatted`` rows with every column (``curation.core.schema.iter_rows`` keeps only the canonical
    ones), JSON columns decoded, in ``(split, row_id)`` order, one batch in memory at a time."""
    json_columns = (*JSON_COLUMNS, "input_ids", "assistant_mask")
    sql = f"SELECT * FROM {quote(table)} ORDER BY split, row_id"
    for batch in read_batches(connection, sql, batch_rows=batch_rows):
        for record in batch.to_pylist():
            for name in json_columns:
                if isinstance(record.get(name), str):
                    record[name] = json.loads(record[name])
            yield record


# --------------------------------------------------------------------------- split groups


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, key: str) -> str:
        self.parent.setdefault(key, key)
        root = key
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[key] != root:  # path compression keeps later finds O(1)-ish
            self.parent[key], key = root, self.parent[key]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # The smaller id wins, so the group id does not depend on edge order.
            small, large = sorted((ra, rb))
            self.parent[large] = small


def split_groups(row_ids: Iterable[str], edges: Iterable[tuple[str, str]],
                 clusters: Mapping[str, str]) -> dict[str, str]:
    """Group id per row: rows connected through any lineage edge ``(child, parent)`` or sharing a
    near-duplicate cluster (``row_id -> cluster_id``) share a group, so a cleaned copy, a perturbation,
    a paraphrase or a second answer to the same instruction never lands in another split than its
    origin. Every parent of a multi-parent row is followed, not only the first."""
    union = _UnionFind()
    for child, parent in edges:
        union.union(f"r:{child}", f"r:{parent}")
    for row_id, cluster_id in clusters.items():
        union.union(f"r:{row_id}", f"c:{cluster_id}")
    return {row_id: union.find(f"r:{row_id}") for row_id in row_ids}


def split_leaks(row_splits: Mapping[str, tuple[str, str]], edges: Iterable[tuple[str, str]],
                clusters: Mapping[str, str]) -> list[dict[str, Any]]:
    """Ancestors and near-duplicate clusters reached from both splits (the check behind
    ``splits_disjoint_by_cluster``).

    ``row_splits`` maps a formatted row's id to ``(parent_id, split)``. Each row's ancestors are
    walked through every edge; an ancestor (or its cluster) seen from a train row and an eval row is
    a leak: the two rows share an origin. Written as a walk, not as :func:`split_groups`' union-find,
    so the check does not trust the code it checks."""
    parents: dict[str, list[str]] = defaultdict(list)
    for child, parent in edges:
        parents[child].append(parent)
    seen_from: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for row_id, (parent_id, split) in row_splits.items():
        stack, visited = [parent_id], set()
        while stack:
            node = stack.pop()
            if node in visited:
                continue
            visited.add(node)
            stack.extend(parents.get(node, ()))
        keys = {f"row {node}" for node in visited}
        keys |= {f"cluster {clusters[node]}" for node in visited if node in clusters}
        for key in keys:
            seen_from[key][split].append(row_id)
    leaks = []
    for key, by_split in sorted(seen_from.items()):
        if len(by_split) > 1:
            leaks.append({"shared": key, **{split: sorted(ids)[:5] for split, ids in sorted(by_split.items())}})
    return leaks


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class Verification:
    """What a rendering of one row guarantees; ``problem`` is the first blocking failure, if any."""

    leaked_tokens: tuple[str, ...]
    round_trip: str
    round_trip_passed: bool
    generation_prompt_ok: bool | None
    """None where the row has no assistant reply to check against (text and prompt rows)."""

    @property
    def problem(self) -> tuple[str, str] | None:
        """(stage, reason) of the failure that keeps the row out of training, or None."""
        if self.leaked_tokens:
            return ("special_tokens", "message content contains the template's control tokens "
                    f"{list(self.leaked_tokens)}; the model would read a turn boundary where the author wrote text")
        if not self.round_trip_passed:
            return "round_trip", self.round_trip
        return None


def _conversation(row: Row) -> list[dict[str, Any]]:
    messages = list(row.get("messages") or [])
    if row.get("kind") == "preference":
        messages += list(row.get("chosen") or [])
    return messages


def verify_row(row: Row, tokenizer: PreTrainedTokenizerBase) -> Verification:
    """Control tokens in content, render-then-parse round trip and generation prompt for one row.

    Works on an input row and on a stored ``formatted`` row alike: a formatted row's ``text`` is the
    rendering (full of control tokens by design), so it is only searched for text rows."""
    content = row if row.get("kind") == "text" else {**row, "text": None}
    leaked = tuple(special_tokens_in_content(content, tokenizer))
    passed, reason = round_trip_ok(row, tokenizer)
    conversation = _conversation(row)
    generation: bool | None = None
    replies = [i for i, m in enumerate(conversation) if m.get("role") == "assistant"]
    if row.get("kind") != "text" and replies and replies[-1] > 0:
        tools = (row.get("extra") or {}).get("tools") if isinstance(row.get("extra"), dict) else None
        if isinstance(tools, str):
            tools = json.loads(tools)
        generation = generation_prompt_matches(conversation, tokenizer, tools=tools or None)
    return Verification(leaked, reason, passed, generation)


def stored_tokens_problem(row: Row, tokenizer: PreTrainedTokenizerBase) -> str | None:
    """Do the stored ``input_ids`` / ``assistant_mask`` / ``n_tokens`` / ``text`` of a formatted row
    agree? (what a trainer reading the tokenized export gets is what was counted and checked)."""
    ids = _json_list(row.get("input_ids"))
    mask = _json_list(row.get("assistant_mask"))
    if row.get("kind") == "preference":
        return None if not ids and not mask else "preference row carries input_ids or a mask"
    if len(ids) != row.get("n_tokens") or len(mask) != len(ids):
        return f"n_tokens {row.get('n_tokens')}, {len(ids)} input_ids and {len(mask)} mask entries differ"
    if tokenizer.decode(ids) != row.get("text"):
        return "decode(input_ids) differs from the stored text"
    return None


def _json_list(value: Any) -> list[Any]:
    if isinstance(value, str):
        value = json.loads(value)
    return list(value or [])


# --------------------------------------------------------------------------- records


def formatted_record(row: Row, rendered: RenderedRow, split: str, subset: float,
                     verification: Verification | None = None) -> dict[str, Any]:
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
        input_ids=json.dumps(rendered.input_ids),
        assistant_mask=json.dumps(rendered.assistant_mask),
        mask_source=rendered.mask_source,
        truncation=rendered.truncation,
        round_trip=verification.round_trip if verification else None,
        generation_prompt_ok=verification.generation_prompt_ok if verification else None,
        template_id=rendered.template_id,
        tokenizer_id=rendered.tokenizer_id,
    )
    if rendered.kind != "text":  # what was rendered: system prompt added, earliest turns dropped
        record["messages"] = rendered.messages
    return record
