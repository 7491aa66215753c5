"""raw: read source files (JSONL, JSON, CSV, Parquet) record by record (`readers`, also used for benchmark
files), map each record to canonical rows (`mappings`, one ``@mapping`` registration each), quarantine what
cannot be read with a reason (`sources`), and notice changed files in the landing folder (`landing`)."""
