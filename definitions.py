"""The Dagster code location: every asset, check, sensor, schedule and resource of Distillery."""

from __future__ import annotations

from dagster import Definitions

from assets.raw import raw
from resources import ProjectResource, WarehouseResource

defs = Definitions(
    assets=[raw],
    resources={"project": ProjectResource(), "warehouse": WarehouseResource()},
)
