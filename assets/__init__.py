"""Dataset versions as Dagster assets: thin wiring around curation/."""
