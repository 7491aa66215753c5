"""Distillery's data operations as plain Python: no Dagster imports here.

Each module is named for what it does; functions take and return plain rows (dicts in the
canonical shape of :mod:`curation.core.schema`) or Arrow batches, and hold no global state.
"""
