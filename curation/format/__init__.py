"""formatted and exports: render rows with the target tokenizer's chat template, decontaminate against
benchmarks, split and subset, and write immutable export folders.

* ``stage``     — what the ``formatted`` asset runs: :func:`~curation.format.stage.format_rows`;
* ``table``     — the tables it writes (``formatted`` columns, ``format_rejections``, ``contamination``),
  one row's record and reading stored rows back;
* ``render``    — chat-template rendering, token ids, loss masks, the length policy, round-trip parsing;
* ``render_checks`` — what a rendering guarantees (control tokens, round trip, generation prompt);
* ``decontam``  — benchmark loading and the contamination index;
* ``split``     — train/eval splits, split groups (lineage and clusters) and nested subsets;
* ``export``    — the ``exports`` asset's JSONL/Parquet folders, manifest and dataset card;
* ``tokenizers`` and ``templates/`` — the shipped chat templates and the small offline tokenizer.
"""
