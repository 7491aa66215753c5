"""What every stage shares: the canonical row (`schema`), the project file (`config`), the DuckDB
warehouse and its staged writes (`warehouse`), licences, provenance and lineage records, text
normalisation, paths under $DISTILLERY_HOME, Markdown/plot helpers and progress reporting."""
