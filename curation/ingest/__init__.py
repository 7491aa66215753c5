"""raw: read source files (JSONL, JSON, CSV, Parquet) record by record, map each record to canonical
rows, quarantine what cannot be read with a reason, and notice changed files in the landing folder."""
