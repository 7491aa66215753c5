from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from curation.core.config import ProjectConfig, load_project
from curation.core.home import project_config_path


class ProjectResource(ConfigurableResource):
    """The project file: sources, stage settings and policy."""

    config_path: str = Field(
        default_factory=lambda: str(project_config_path()),
        description="Project file; defaults to $DISTILLERY_CONFIG or the bundled demo.",
    )

    def load(self) -> ProjectConfig:
        return load_project(self.config_path)
