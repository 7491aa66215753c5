"""Same-prompt conflicts: rows with one (normalised) instruction but different responses. Either one
is kept by :class:`~curation.dedup.clusters.KeepPolicy` or all are kept and flagged. The stage finds
them in SQL over each row's prompt and response keys (:func:`conflict_groups_sql`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from curation.core.normalize import DEFAULT_OPTIONS, NormalizeOptions
from curation.dedup.fields import FieldSet

ConflictMode = Literal["keep_best", "flag", "off"]


@dataclass(frozen=True)
class ConflictConfig:
    """Rows with the same normalised prompt but different responses. ``keep_best`` keeps one by
    :class:`KeepPolicy`; ``flag`` keeps all and records them (``removed = False``). Text and prompt
    rows, and rows without a prompt, never conflict."""

    mode: ConflictMode = "keep_best"
    prompt_fields: FieldSet = "prompt"
    normalize: NormalizeOptions = DEFAULT_OPTIONS

    @property
    def method(self) -> str:
        """How ``dedup_clusters.method`` names these clusters."""
        return f"same_prompt:{self.prompt_fields}"


def conflict_groups_sql(rows: str) -> str:
    """``(position, cluster)`` of the rows of ``rows`` (a relation of per-row facts) whose prompt key is
    shared by at least two rows with at least two distinct responses."""
    return (
        f"SELECT position, prompt_key AS cluster FROM {rows} WHERE prompt_key IS NOT NULL "
        "WINDOW w AS (PARTITION BY prompt_key) QUALIFY count(*) OVER w > 1 AND count(DISTINCT response_key) OVER w > 1"
    )
