"""Dagster resources: thin, configurable handles on the warehouse, the project file and models."""

from resources.project import ProjectResource
from resources.warehouse import WarehouseResource

__all__ = ["ProjectResource", "WarehouseResource"]
