"""Same-prompt conflicts, judged per kind. Either one row of a conflict is kept by
:class:`~curation.dedup.clusters.KeepPolicy` or all are kept and flagged. The stage finds them in SQL
over each row's prompt, response and rejected keys (:func:`conflict_groups_sql`).

What counts as a conflict depends on what the rows are:

* ``sft`` and ``chat`` rows: one (normalised) prompt with different (normalised) responses. Every such
  row is in the conflict; identical responses are exact duplicates, not conflicts.
* ``preference`` rows: a contradiction, i.e. one pair says A > B and another B > A for the same prompt
  (the same two answers, compared the other way round). Several *distinct* comparisons for one prompt
  (A > B, A > C, C > B: what HH- and UltraFeedback-style data hold) are not conflicts and are all kept;
  only the rows of the contradicting pair of answers form the conflict. Longer cycles (A > B, B > C,
  C > A) are not looked for. A pair whose chosen and rejected answers are the same says nothing and is
  never a conflict.
* ``text`` and ``prompt`` rows, and rows without a prompt, never conflict; nor do rows of different
  rules (an SFT answer and a preference pair for one prompt are different data)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from curation.core.normalize import DEFAULT_OPTIONS, NormalizeOptions
from curation.dedup.fields import FieldSet

ConflictMode = Literal["keep_best", "flag", "off"]


@dataclass(frozen=True)
class ConflictConfig:
    """Rows of one normalised prompt that disagree (per kind, see the module: SFT/chat rows with different
    responses; preference rows that order the same two answers both ways). ``keep_best`` keeps one row of
    each conflict by :class:`KeepPolicy`; ``flag`` keeps all and records them (``removed = False``);
    ``off`` does not look. Text and prompt rows, and rows without a prompt, never conflict."""

    mode: ConflictMode = "keep_best"
    prompt_fields: FieldSet = "prompt"
    normalize: NormalizeOptions = DEFAULT_OPTIONS

    @property
    def method(self) -> str:
        """How ``dedup_clusters.method`` names these clusters."""
        return f"same_prompt:{self.prompt_fields}"


def conflict_groups_sql(rows: str) -> str:
    """``(position, cluster)`` of the rows of ``rows`` (a relation of per-row facts) that conflict: rows
    without a ``rejected_key`` (SFT, chat) whose prompt key is shared with another such row with another
    response; preference rows (``rejected_key`` set) whose prompt and unordered pair of answers are shared
    with a row that orders the two answers the other way. Clusters of the two rules never meet (their
    names differ)."""
    low, high = "least(response_key, rejected_key)", "greatest(response_key, rejected_key)"
    return (
        f"SELECT position, 'response:' || prompt_key AS cluster FROM {rows} "
        "WHERE prompt_key IS NOT NULL AND rejected_key IS NULL "
        "WINDOW w AS (PARTITION BY prompt_key) QUALIFY count(DISTINCT response_key) OVER w > 1 "
        "UNION ALL "
        f"SELECT position, 'ordering:' || prompt_key || ':' || {low} || ':' || {high} AS cluster FROM {rows} "
        "WHERE prompt_key IS NOT NULL AND rejected_key IS NOT NULL AND response_key <> rejected_key "
        f"WINDOW w AS (PARTITION BY prompt_key, {low}, {high}) QUALIFY count(DISTINCT response_key) OVER w > 1"
    )
