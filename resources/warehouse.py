from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from curation.core.home import warehouse_path
from curation.core.warehouse import Warehouse

POOL = "duckdb_writer"
"""Concurrency pool of every asset and check that opens the DuckDB file (one slot)."""


class WarehouseResource(ConfigurableResource):
    """The DuckDB file holding every dataset version and side table."""

    path: str = Field(
        default_factory=lambda: str(warehouse_path()),
        description="DuckDB file; defaults to $DISTILLERY_HOME/warehouse.duckdb.",
    )

    def get(self) -> Warehouse:
        return Warehouse(self.path)
