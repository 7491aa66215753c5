"""The teacher and judge models as a Dagster resource.

The project file's ``synthesis.teacher`` (and ``synthesis.judge``) say which backend to use; fields
set on this resource override them per deployment (e.g. a different server URL in production).
The API key comes from the spec's ``api_key_env`` (the name of an environment variable), or from this
resource's ``api_key`` set with ``EnvVar("...")`` in a deployment's definitions (Dagster then requires the
variable to be set, so it is not the default). It is handed to the client only and never logged or put
in metadata. On the ``ray`` compute engine a model teacher's requests run as Ray tasks
(:mod:`curation.synth.ray_teacher`), whose workers read the key from ``api_key_env`` themselves; a key set
on this resource is never sent to them, so that teacher's requests stay in the asset's process.

Model generations are cached in their own DuckDB file (``$DISTILLERY_HOME/generation_cache.duckdb``),
not in the warehouse: each generation is committed the moment it arrives, so a crash mid-synthesis
keeps everything already generated, while the asset's staged warehouse write still swaps in all
or nothing. Only the ``synthetic`` asset opens the cache, inside the DuckDB writer pool, so the
file has one writer at a time.
"""

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from dagster import ConfigurableResource
from pydantic import Field

from curation.core.home import distillery_home
from curation.synth.cache import CachedTeacher, GenerationCache
from curation.synth.judges import ProceduralJudge
from curation.synth.ray_teacher import on_ray_when_active
from curation.synth.teachers import Teacher, build_teacher
from curation.synth.verify import Judge, ModelJudge

_OVERRIDABLE = ("backend", "model", "base_url", "model_dir", "license", "terms", "revision")


class TeacherResource(ConfigurableResource):
    """Teacher and judge backends, with a crash-safe generation cache."""

    backend: str | None = Field(
        default=None,
        description="procedural, transformers or openai-compatible; "
        "unset: the project file's synthesis.teacher.backend.",
    )
    model: str | None = Field(default=None, description="Model name sent to an OpenAI-compatible server.")
    base_url: str | None = Field(default=None, description="OpenAI-compatible server, e.g. http://host:8000/v1.")
    model_dir: str | None = Field(default=None, description="Local transformers model directory.")
    license: str | None = Field(default=None, description="Licence of the teacher's outputs (SPDX or LicenseRef-).")
    terms: str | None = Field(default=None, description="Short id of the teacher's usage terms.")
    revision: str | None = Field(default=None, description="Model revision or dated snapshot id.")
    api_key: str | None = Field(default=None, description="Set from an EnvVar; never logged.")
    cache_path: str | None = Field(
        default=None, description="Generation cache file; default $DISTILLERY_HOME/generation_cache.duckdb."
    )
    cache: bool = Field(default=True, description="Cache model generations (the procedural teacher never is).")

    def teacher_spec(self, project_spec: Mapping[str, Any]) -> dict[str, Any]:
        """The project file's teacher spec with this resource's set fields on top."""
        spec = dict(project_spec or {"backend": "procedural"})
        overrides = {k: getattr(self, k) for k in _OVERRIDABLE if getattr(self, k) is not None}
        if overrides.get("backend") and overrides["backend"] != spec.get("backend"):
            spec = {}  # another backend: the file's options for its own backend do not apply
        spec.update(overrides)
        spec.setdefault("backend", "procedural")
        return spec

    def _cache_file(self) -> Path:
        return Path(self.cache_path) if self.cache_path else distillery_home() / "generation_cache.duckdb"

    @contextlib.contextmanager
    def open(
        self,
        project_spec: Mapping[str, Any],
        judge_spec: Mapping[str, Any] | str | None = None,
        base_dir: Path | None = None,
    ) -> Iterator[tuple[Teacher, Judge]]:
        """(teacher, judge) for one materialization; the cache file is closed when the block ends."""
        spec = self.teacher_spec(project_spec)
        teacher = build_teacher(spec, api_key=self.api_key, base_dir=base_dir)
        if self.api_key is None:  # a Ray worker reads the key from api_key_env; one given here stays here
            teacher = on_ray_when_active(teacher, spec, base_dir)
        with contextlib.ExitStack() as stack:
            model_judge = isinstance(judge_spec, Mapping) and judge_spec.get("backend", "procedural") != "procedural"
            cache = None
            if self.cache and (spec["backend"] != "procedural" or model_judge):
                cache = stack.enter_context(GenerationCache(self._cache_file()))
            if cache is not None and spec["backend"] != "procedural":
                teacher = CachedTeacher(teacher, cache)
            yield teacher, self._judge(judge_spec, teacher, cache, base_dir)

    @staticmethod
    def _judge(
        spec: Mapping[str, Any] | str | None, teacher: Teacher, cache: GenerationCache | None, base_dir: Path | None
    ) -> Judge:
        # Default: the offline procedural judge. "teacher": the teacher judges itself (warned about).
        if (
            spec is None
            or spec == "procedural"
            or (isinstance(spec, Mapping) and spec.get("backend", "procedural") == "procedural")
        ):
            return ProceduralJudge()
        if spec == "teacher":
            return ModelJudge(teacher)
        if isinstance(spec, str):
            raise ValueError(f"synthesis.judge must be 'procedural', 'teacher' or a backend mapping, got {spec!r}")
        options = dict(spec)
        rubric = options.pop("rubric", None)
        judge_teacher: Any = on_ray_when_active(build_teacher(options, base_dir=base_dir), options, base_dir)
        if cache is not None:
            judge_teacher = CachedTeacher(judge_teacher, cache)
        return ModelJudge(judge_teacher, rubric)
