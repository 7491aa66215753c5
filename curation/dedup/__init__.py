"""deduped: one row per group of duplicates, every removal on record.

* :mod:`~curation.dedup.stage` — the stage in order (:class:`DedupPlan`, :func:`dedup_rows`) and
  :func:`run_dedup`, what the ``deduped`` asset calls;
* :mod:`~curation.dedup.fields` — which parts of a row are compared (field sets);
* :mod:`~curation.dedup.exact` — exact keys and exact duplicates;
* :mod:`~curation.dedup.near` — near duplicates: signatures, LSH candidates, exact Jaccard
  verification, clusters, and the incremental index; :mod:`~curation.dedup.minhash` holds the kernels;
* :mod:`~curation.dedup.repeats` — paragraphs repeated inside a row and boilerplate across rows;
* :mod:`~curation.dedup.conflicts` — one prompt with different responses;
* :mod:`~curation.dedup.clusters` — which row of a cluster is kept, and the ``dedup_clusters`` records.
"""
