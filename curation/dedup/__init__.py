"""deduped: one row per group of duplicates, every removal on record.

* :mod:`~curation.dedup.stage` — :func:`run_dedup`, what the ``deduped`` asset calls: the stage's
  passes over the input and its decisions in SQL;
* :mod:`~curation.dedup.facts` — what each row brings to those decisions (:class:`DedupPlan`, the
  per-row columns, the edits), computed a batch at a time in worker processes;
* :mod:`~curation.dedup.fields` — which parts of a row are compared (field sets);
* :mod:`~curation.dedup.exact` — exact keys and the SQL that groups rows by them;
* :mod:`~curation.dedup.near` — near duplicates: signatures, LSH candidates, exact Jaccard
  verification, clusters, and the incremental index; :mod:`~curation.dedup.minhash` holds the kernels;
* :mod:`~curation.dedup.repeats` — paragraphs repeated inside a row and boilerplate across rows;
* :mod:`~curation.dedup.conflicts` — one prompt with different responses;
* :mod:`~curation.dedup.clusters` — which row of a cluster is kept, and the ``dedup_clusters`` records
  (in Python for lists of rows, in SQL for the stage).
"""
