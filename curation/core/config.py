"""The project file (``distillery.yaml``): sources, stage settings and policy.

Validation is strict (unknown keys are errors, so a typo never silently falls back to a default)
and every error names the key path and what was expected.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError, PydanticKnownError

from curation.core.schema import KINDS
from curation.ingest.mappings import MAPPINGS


class ConfigError(ValueError):
    """The project file is invalid; the message says where and what is expected."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    """One input source: where its files are, how to read them and under which licence."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$", description="Unique name; letters, digits, _ . -")
    path: str = Field(description="File path or glob, relative to the project file.")
    format: Literal["jsonl", "json", "csv", "parquet"] | None = Field(
        default=None, description="Inferred from the extension when omitted (.gz is read transparently)."
    )
    mapping: str = Field(description="Shape of the records: a registered mapping (docs/mappings.md).")
    fields: dict[str, str | list[str]] = Field(
        default_factory=dict, description="Override the mapping's field names, e.g. {instruction: question}."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="The mapping's settings (e.g. oasst mode), checked by its options model."
    )
    kind: Literal[KINDS] | None = Field(default=None)  # type: ignore[valid-type]
    license: str = Field(min_length=1, description="SPDX id, or a LicenseRef- declared under policy.")
    origin: Literal["human", "synthetic"] = "human"
    generator: str | None = Field(default=None, description="Model that wrote the rows when origin is synthetic.")
    annotator_field: str | None = None
    allowed_languages: list[str] | None = None

    @field_validator("mapping")
    @classmethod
    def _registered_mapping(cls, name: str) -> str:
        if name not in MAPPINGS:
            # Reported like a Literal field's error ("Input should be 'alpaca', … or 'reward'"), so the
            # message lists every registered mapping.
            known = [repr(known_name) for known_name in MAPPINGS]
            expected = ", ".join(known[:-1]) + f" or {known[-1]}" if len(known) > 1 else "".join(known)
            raise PydanticKnownError("literal_error", {"expected": expected})
        return name

    @field_validator("fields")
    @classmethod
    def _fields_are_the_mappings(
        cls, fields: dict[str, str | list[str]], info: ValidationInfo
    ) -> dict[str, str | list[str]]:
        name = info.data.get("mapping")
        if name is None:  # the mapping itself is invalid and already reported
            return fields
        declared = MAPPINGS[name].fields
        unknown = sorted(set(fields) - set(declared))
        if unknown:
            raise ValueError(
                f"{', '.join(map(repr, unknown))} {'is not a field' if len(unknown) == 1 else 'are not fields'} of "
                f"mapping {name!r}, which reads {', '.join(map(repr, declared))} (keys are the mapping's field "
                "names; values are your file's)"
            )
        return fields

    @field_validator("options")
    @classmethod
    def _options_fit_the_mapping(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        name = info.data.get("mapping")
        if name is None:  # the mapping itself is invalid and already reported
            return options
        try:
            MAPPINGS[name].parse_options(options)
        except ValidationError as error:
            # Re-raised as this field's errors, so each keeps its own key path (sources.0.options.mode).
            raise ValidationError.from_exception_data(
                cls.__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError(item["type"], item["msg"]), loc=item["loc"], input=item["input"]
                    )
                    for item in error.errors()
                ],
            ) from None
        return options

    @model_validator(mode="after")
    def _synthetic_needs_generator(self) -> SourceConfig:
        if self.origin == "synthetic" and not self.generator:
            raise ValueError("origin is 'synthetic', so 'generator' must name the model that wrote the rows")
        return self


class IngestConfig(_Strict):
    max_record_bytes: int = Field(
        default=1_000_000, gt=0, description="Records larger than this are quarantined as oversized."
    )
    batch_rows: int = Field(default=2_000, gt=0)


class DedupConfig(_Strict):
    """Deduplication settings; each step's mapping is passed to its settings dataclass in curation/dedup
    (:func:`curation.dedup.stage.plan_from_project`; ``near: false`` etc. switches a step off)."""

    exact_fields: Literal["first_prompt", "prompt", "prompt_response", "conversation"] = "prompt_response"
    lowercase: bool = True
    strip_punctuation: bool = False
    near: dict[str, Any] | bool = Field(default_factory=dict, description="threshold, num_perm, unit, n, fields…")
    within: dict[str, Any] | bool = Field(default_factory=dict, description="Repeated paragraphs inside a row.")
    boilerplate: dict[str, Any] | bool = Field(default_factory=dict, description="Paragraphs repeated across rows.")
    conflicts: dict[str, Any] = Field(
        default_factory=dict,
        description="Same-prompt conflicts per kind (SFT/chat: different responses; preference: contradictory "
        "orderings): mode keep_best|flag|off, prompt_fields.",
    )


class SandboxConfig(_Strict):
    """How generated code (the ``code`` method) may be run: curation/synth/sandbox.py."""

    allow_weaker: bool = Field(
        default=False,
        description="Run generated code even where the sandbox lacks namespaces, the read-only filesystem or (as "
        "root) a throw-away uid; each code row's provenance then records the isolation used. Off: code synthesis "
        "refuses, naming what is missing.",
    )


class SynthesisConfig(_Strict):
    teacher: dict[str, Any] = Field(default_factory=lambda: {"backend": "procedural"})
    judge: dict[str, Any] | Literal["procedural", "teacher"] | None = Field(
        default=None, description="Judge model spec, 'teacher' (warned: self-judging) or the procedural default."
    )
    methods: dict[str, Any] = Field(default_factory=lambda: {"perturbation": {"count": 50}})
    verify: dict[str, Any] = Field(default_factory=dict, description="Verification settings (min_judge_score…).")
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    seed: int = 0


class MixConfig(_Strict):
    synthetic_cap: float = Field(
        default=0.3, ge=0.0, le=1.0, description="Maximum share of synthetic rows in synthetic_mixed."
    )
    weights: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Target weights per dimension, e.g. {kind: {sft: 0.7, chat: 0.3}}."
    )
    quotas: dict[str, int] = Field(default_factory=dict, description="Maximum rows per source.")
    seed: int = 0


class BenchmarkConfig(_Strict):
    name: str
    path: str
    text_fields: list[str] = Field(default_factory=lambda: ["turns"])
    id_field: str | None = None


class DecontamConfig(_Strict):
    """How rows are compared with ``format.benchmarks`` (:mod:`curation.format.decontam`): what is scanned
    and what counts as evidence. The defaults follow GPT-3 (Brown et al. 2020, appendix C: 13-grams, n-grams
    too frequent to be evidence ignored), with frequency counted over the benchmark items so that template
    text is not evidence; they equal the defaults of :class:`curation.format.decontam.ContaminationIndex`
    (a test holds them equal). The formatted asset records them with its contamination report."""

    fields: Literal["prompt", "all"] = Field(
        default="prompt",
        description="prompt: user turns (and text rows) only; all: every message, so a benchmark item copied "
        "into a response (or a system prompt) is caught too.",
    )
    n: int = Field(default=13, ge=1, description="n-gram length in words.")
    min_n: int = Field(
        default=8,
        ge=1,
        description="Items of min_n to n-1 words match when contained whole; shorter ones only exactly.",
    )
    common_ngram_max_df: int | None = Field(
        default=10,
        ge=1,
        description="An n-gram found in more than this many benchmark items is template text, not evidence "
        "(null: every n-gram counts).",
    )
    min_overlap_ratio: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Share of an item's usable n-grams a text must contain (0: one shared n-gram is enough).",
    )
    ignore_trivial: bool = Field(default=True, description="Ignore n-grams of only numbers and single characters.")
    filled_template_min_ratio: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="An item matched only by n-grams that fill a template shared by more than common_ngram_max_df "
        "items with numbers (templated word problems) needs this share of them (0: any one counts).",
    )

    @model_validator(mode="after")
    def _min_n_within_n(self) -> DecontamConfig:
        if self.min_n > self.n:
            raise ValueError(f"min_n ({self.min_n}) must not exceed n ({self.n})")
        return self


class FormatConfig(_Strict):
    tokenizer: str = Field(description="Local tokenizer directory (relative to the project file) or hub id.")
    chat_template: str | None = Field(
        default=None, description="Template name or Jinja text; overrides the tokenizer's."
    )
    system_prompt: str | None = None
    max_tokens: int = Field(default=2048, gt=0)
    length_policy: Literal["drop", "truncate"] = "drop"
    eval_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    seed: int = 0
    benchmarks: list[BenchmarkConfig] = Field(default_factory=list)
    decontamination: DecontamConfig = Field(
        default_factory=DecontamConfig, description="How rows are compared with the benchmarks."
    )


class TeacherTerms(_Strict):
    """A model registry entry: the licence and terms attached to a teacher's outputs."""

    license: str | None = None
    terms: str = ""
    forbids: list[Literal["research", "commercial"]] = Field(default_factory=list)


class PolicyConfig(_Strict):
    intended_use: Literal["research", "commercial"] = "research"
    licenses: dict[str, dict[str, Any]] = Field(default_factory=dict)
    teachers: dict[str, TeacherTerms] = Field(default_factory=dict)


class ComputeConfig(_Strict):
    """Where the row-wise work runs (cleaners and filters, PII, rendering and token counts, MinHash).

    Every engine runs the same functions over the same Arrow batches and returns their results in input
    order, so every table and data version is the same on either engine and with any number of workers."""

    engine: Literal["local", "ray"] = Field(
        default="local",
        description=(
            "local: worker processes on this machine. ray: Ray tasks, on a Ray started in this process "
            "(no address) or on the cluster at `address`."
        ),
    )
    address: str | None = Field(
        default=None,
        description=(
            "Ray cluster to run on (engine ray only), as `ray.init` takes it: `ray://head:10001` (Ray Client) "
            "or `head:6379` / `auto` (this machine is a node of the cluster). None starts a Ray of `workers` "
            "CPUs in this process."
        ),
    )
    workers: int | None = Field(
        default=None,
        gt=0,
        description=(
            "Worker processes for row-wise work (local), or CPUs of the Ray started here and tasks in flight "
            "per CPU (ray); all cores by default. Output is the same for any count."
        ),
    )
    intermediates: str | None = Field(
        default=None,
        description=(
            "Engine ray only: a folder (relative: inside the Distillery home) or an object-store URI "
            "(`s3://bucket/prefix`, `gs://...`) where Ray tasks read their input batches and write their "
            "results as Parquet files, which DuckDB appends with read_parquet. None: batches travel through "
            "Ray's object store. On a cluster, every node and the driver must reach it."
        ),
    )

    @model_validator(mode="after")
    def _address_needs_ray(self) -> ComputeConfig:
        if self.address is not None and self.engine != "ray":
            raise ValueError("compute.address names a Ray cluster; set compute.engine: ray to use it")
        if self.intermediates is not None and self.engine != "ray":
            raise ValueError(
                "compute.intermediates is where Ray tasks exchange data; set compute.engine: ray to use it"
            )
        return self


class ProjectConfig(_Strict):
    name: str = "distillery"
    sources: list[SourceConfig] = Field(min_length=1)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    filters: dict[str, Any] = Field(default_factory=dict)
    synthesis: SynthesisConfig = Field(default_factory=SynthesisConfig)
    mix: MixConfig = Field(default_factory=MixConfig)
    format: FormatConfig
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)

    # Set by load_project, not by the file.
    base_dir: Path = Field(default=Path("."), exclude=True)
    file_hash: str = Field(default="", exclude=True)

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        seen: set[str] = set()
        for source in sources:
            if source.name in seen:
                raise ValueError(f"source name {source.name!r} is used twice; names must be unique")
            seen.add(source.name)
        return sources

    def resolve(self, relative: str) -> Path:
        """A path from the project file, relative to the file's folder."""
        path = Path(relative).expanduser()
        return path if path.is_absolute() else (self.base_dir / path)

    def source_files(self, source: SourceConfig) -> list[Path]:
        """The files a source's path or glob matches now, sorted, each once, a link loop walked once
        (:func:`curation.ingest.files.source_files`)."""
        from curation.ingest.files import source_files  # curation.ingest imports this module

        return source_files(self, source)


def _format_errors(path: Path, error: ValidationError) -> str:
    lines = [f"{path}: the project file is invalid:"]
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"])
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see the README's project-file reference)"
        elif item["type"] == "missing":
            message = "required key is missing"
        elif item["type"] == "literal_error":
            message = f"{item['msg']}, got {item.get('input')!r}"
        lines.append(f"  - {location or '<top level>'}: {message}")
    return "\n".join(lines)


def load_project(path: str | Path) -> ProjectConfig:
    """Read and validate a project file; raise :class:`ConfigError` naming every bad key."""
    path = Path(path).resolve()
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: project file not found (pass --config or set DISTILLERY_CONFIG)") from exc
    try:
        raw = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with 'sources' and 'format' at the top level")
    try:
        project = ProjectConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(path, exc)) from None
    project = project.model_copy(update={"base_dir": path.parent, "file_hash": hashlib.sha256(data).hexdigest()[:16]})
    problems = stage_setting_problems(project)
    if problems:
        raise ConfigError("\n".join([f"{path}: the project file is invalid:", *(f"  - {p}" for p in problems)]))
    return project


def stage_setting_problems(project: ProjectConfig) -> list[str]:
    """What the stages refuse in their sections — unknown filters or parameters, dedup steps, synthesis
    methods and their settings — and licences that are neither SPDX ids nor declared, judged by the same
    registrations and builders the stages run, so a typo fails when the file is loaded instead of halfway
    through a run."""
    # Imported here, not at the top: every stage imports this module for ProjectConfig.
    from curation.core.licenses import undeclared_license_problems
    from curation.dedup.stage import plan_from_project
    from curation.filter.chain import project_chain
    from curation.synth.stage import SynthesisPlan

    checks: list[Callable[[ProjectConfig], object]] = [
        lambda p: plan_from_project(p.dedup),
        project_chain,
        SynthesisPlan.from_config,
    ]
    problems = []
    for check in checks:
        try:
            check(project)
        except (ValueError, TypeError) as error:
            problems.append(str(error))
    return problems + undeclared_license_problems(project)
