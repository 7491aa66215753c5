"""Distillery's data operations as plain Python: no Dagster imports here.

One subpackage per stage, in pipeline order, so the tree reads as the pipeline does:

* ``core``   — what every stage shares: the canonical row, the project file, the warehouse, licences,
  provenance, the walker over a row's texts and the code-fence rule;
* ``ingest`` — ``raw``: readers, mappings, quarantine, the landing-folder state;
* ``dedup``  — ``deduped``: exact, near (MinHash LSH), in-row repeats, same-prompt conflicts, clusters;
* ``filter`` — ``filtered``: cleaners and filters on one base class, and the runner;
* ``synth``  — ``synthetic`` and ``synthetic_mixed``: teachers, methods, judges, sandbox, cache, mix;
* ``format`` — ``formatted`` and ``exports``: chat templates, decontamination, split, export;
* ``audit``  — ``compliance_report`` and ``inspection``: row audit, compliance report, statistics.

Functions take and return plain rows (dicts in the canonical shape of :mod:`curation.core.schema`)
or Arrow batches, and hold no global state.
"""
