"""Same-prompt conflicts: rows with one (normalised) instruction but different responses. Either one
is kept by :class:`~curation.dedup.clusters.KeepPolicy` or all are kept and flagged."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from curation.core.normalize import DEFAULT_OPTIONS, NormalizeOptions, normalize_text
from curation.core.schema import Row
from curation.core.texts import prompt_text, response_text
from curation.dedup.clusters import DEFAULT_POLICY, ClusterMember, KeepPolicy, cluster_members
from curation.dedup.exact import exact_key
from curation.dedup.fields import FieldSet

ConflictMode = Literal["keep_best", "flag", "off"]


@dataclass(frozen=True)
class ConflictConfig:
    """Rows with the same normalised prompt but different responses. ``keep_best`` keeps one by
    :class:`KeepPolicy`; ``flag`` keeps all and records them (``removed = False``)."""

    mode: ConflictMode = "keep_best"
    prompt_fields: FieldSet = "prompt"
    normalize: NormalizeOptions = DEFAULT_OPTIONS


def same_prompt_conflicts(
    rows: Sequence[Row], config: ConflictConfig = ConflictConfig(), policy: KeepPolicy = DEFAULT_POLICY
) -> list[ClusterMember]:
    """Clusters of rows sharing a prompt with at least two distinct responses."""
    if config.mode == "off":
        return []
    groups: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        if row.get("kind") in ("text", "prompt") or not prompt_text(row).strip():
            continue
        groups[exact_key(row, config.prompt_fields, config.normalize)].append(i)
    conflicted = []
    for members in groups.values():
        responses = {normalize_text(response_text(rows[i]), config.normalize) for i in members}
        if len(members) > 1 and len(responses) > 1:
            conflicted.append(members)
    return cluster_members(
        rows, conflicted, f"same_prompt:{config.prompt_fields}", policy, remove=config.mode == "keep_best"
    )
