from __future__ import annotations

from dagster import ConfigurableResource
from dagster_ray import RayResource
from pydantic import Field

from curation.core.config import ProjectConfig, load_project
from curation.core.home import project_config_path


class ProjectResource(ConfigurableResource):
    """The project file: sources, stage settings and policy; and, for the ``ray`` compute engine, the Ray
    cluster a deployment provides.

    ``ray_cluster`` is a dagster-ray resource (``LocalRay``, ``KubeRayCluster``, ``KubeRayClient``, or any
    ``RayResource``): Dagster creates the cluster, waits for it and connects this process to it (``ray.init``)
    before the run's steps, and cleans it up after, by the resource's own ``lifecycle``. The stages' engine
    (:func:`curation.core.parallel.use_engine`) then finds the connection and uses it, instead of starting a
    Ray itself or connecting to ``compute.address``. Unset (the default), nothing about Ray happens here: a
    project with ``compute.engine: ray`` starts or connects to its Ray as the project file says.
    """

    config_path: str = Field(
        default_factory=lambda: str(project_config_path()),
        description="Project file; defaults to $DISTILLERY_CONFIG or the bundled demo.",
    )
    ray_cluster: RayResource | None = Field(
        default=None,
        description=(
            "A dagster-ray resource that provides the Ray cluster of `compute.engine: ray` (e.g. KubeRayCluster "
            "for a cluster per run on Kubernetes); the project file must then say engine: ray and no address."
        ),
    )

    def load(self) -> ProjectConfig:
        config = load_project(self.config_path)
        if self.ray_cluster is not None and (config.compute.engine != "ray" or config.compute.address is not None):
            # Fail before any work: a cluster nobody uses, or two answers to "which cluster".
            what = "has no compute.engine: ray" if config.compute.engine != "ray" else "names compute.address too"
            raise ValueError(
                f"the project resource's ray_cluster ({self.ray_cluster.display_name}) provides the Ray cluster, "
                f"but {self.config_path} {what}: set `compute: {{engine: ray}}` without an address in the project "
                "file, or remove ray_cluster from the resource"
            )
        return config
