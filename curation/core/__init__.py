"""What every stage shares.

* ``schema``     — the canonical row: columns, ids, Arrow/DuckDB encoding;
* ``texts``      — the one walker over a row's texts (``text_fields``, ``with_texts`` and the text views)
  and the one code-fence rule;
* ``config``     — the project file (pydantic), its stage sections judged by the stages' registrations;
* ``warehouse``  — the DuckDB file, staged writes swapped in one transaction, batch reads;
* ``licenses``, ``provenance`` — licence terms, provenance and lineage records;
* ``components`` — connected-components grouping (clusters, split groups);
* ``hashing``    — seeded, order-independent draws (splits, subsets, seed rows);
* ``accounting``, ``conformance`` — the queries behind the conservation and schema checks;
* ``normalize``, ``home`` (paths under $DISTILLERY_HOME), ``markdown`` (tables, plots), ``progress``.
"""
