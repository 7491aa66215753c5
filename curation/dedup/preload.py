"""What the dedup stage's worker processes start with. The stage's maps name this module as their ``preload``
(:func:`curation.core.parallel.map_ordered`), so the fork server imports it once and the workers of every
pass are forked with the batch functions' libraries imported and the compiled MinHash kernel loaded from
numba's cache; each worker of each pass otherwise did both again, about two CPU-seconds apiece. Nothing
imports it in the main process."""

from __future__ import annotations

import contextlib

from curation.dedup.facts import facts_batch, published_batch, texts_batch
from curation.dedup.minhash import MinHasher

__all__ = ["facts_batch", "published_batch", "texts_batch"]

# A kernel that fails to load here is loaded (or fails) in the worker that needs it, as without this module.
with contextlib.suppress(Exception):
    MinHasher().signatures_and_counts(["load the compiled kernels once, in the fork server"])
