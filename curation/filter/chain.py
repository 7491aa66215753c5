"""The chain of cleaners and filters a project file asks for, built from the registry.

:func:`project_chain` is what the `filtered` asset runs, and what ``distillery preview`` and the
asset's checks judge, so all three see the same chain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from curation.core.config import ProjectConfig, SourceConfig
from curation.filter.base import CLEANERS, FILTERS, Cleaner, Filter, default_names


def _instantiate(kind: str, table: Mapping[str, type[Any]], name: str, params: Any) -> Any:
    if name not in table:
        raise ValueError(
            f"unknown {kind} {name!r} in the project file's {kind}s section; known {kind}s: {', '.join(sorted(table))}"
        )
    if params is None or params is True:
        params = {}
    if not isinstance(params, Mapping):
        raise ValueError(f"{kind} {name!r}: parameters must be a mapping (or true/false), got {params!r}")
    try:
        return table[name](**params)
    except TypeError as error:
        raise ValueError(f"{kind} {name!r}: bad parameters {dict(params)}: {error}") from error


def _build(
    kind: str, table: Mapping[str, type[Any]], defaults: Sequence[str], config: Mapping[str, Any] | None
) -> list[tuple[str, Any]]:
    config = dict(config or {})
    order = config.pop("order", None)
    use_defaults = config.pop("defaults", True)
    names = list(defaults) if use_defaults else []
    for name, params in config.items():
        if params is False:
            if name not in table:
                _instantiate(kind, table, name, {})  # raises the helpful "unknown" error
            names = [n for n in names if n != name]
        elif name not in names:
            names.append(name)
    built = [(name, _instantiate(kind, table, name, config.get(name))) for name in names]
    if order is not None:
        unknown = [n for n in order if n not in names]
        if unknown:
            raise ValueError(f"{kind}s order names {unknown}, which are not enabled; enabled: {names}")
        rank = {n: i for i, n in enumerate(order)}
        built.sort(key=lambda item: rank.get(item[0], len(rank)))
    return built


def build_filters(config: Mapping[str, Any] | None = None) -> list[Filter]:
    """Filters from the project file's ``filters:`` section.

    ``config`` maps a filter name to its parameters (a mapping, ``true`` for defaults, ``false`` to
    switch a default filter off). ``defaults: false`` starts from nothing instead of the filters
    marked ``default``. Without ``order`` the filters run cheapest first (by ``cost``);
    ``order: [a, b]`` runs those first, in that order, and the rest by cost after them.
    """
    config = dict(config or {})
    config.pop("cleaners", None)
    explicit = config.get("order")
    built = _build("filter", FILTERS, default_names(FILTERS), config)
    if explicit is None:
        built.sort(key=lambda item: item[1].cost)  # stable: ties keep config order
    else:
        head = [b for b in built if b[0] in explicit]
        tail = sorted((b for b in built if b[0] not in explicit), key=lambda item: item[1].cost)
        built = head + tail
    return [f for _, f in built]


def build_cleaners(config: Mapping[str, Any] | None = None) -> list[Cleaner]:
    """Cleaners from the ``filters: cleaners:`` sub-section (same syntax as :func:`build_filters`).

    Default cleaners run in the order they are defined (encoding repair before HTML), then any extra
    ones in config order, with ``whitespace`` last so it tidies what the others leave behind;
    ``order`` overrides all of this.
    """
    built = _build("cleaner", CLEANERS, default_names(CLEANERS), config)
    if not (config or {}).get("order"):
        built.sort(key=lambda item: item[0] == "whitespace")  # stable: only moves whitespace last
    return [c for _, c in built]


# ---------------------------------------------------------------------------------------------
# The project's chain
# ---------------------------------------------------------------------------------------------


def _language_settings(language: Any, sources: Sequence[SourceConfig]) -> Any:
    """The ``language`` filter's settings with each source's ``allowed_languages`` folded into
    ``by_source``, so a per-source policy in the project file takes effect without also writing a
    ``filters.language`` section (``allowed_languages: []`` exempts a source from a global list).
    Contradictions are errors, never silent choices."""
    per_source = {s.name: list(s.allowed_languages) for s in sources if s.allowed_languages is not None}
    names = {s.name for s in sources}
    if isinstance(language, Mapping):
        unknown = sorted(set(language.get("by_source") or {}) - names)
        if unknown and names:
            raise ValueError(
                f"filters.language.by_source names {unknown}, which are not sources in the project "
                f"file (sources: {sorted(names)}); fix the spelling or remove them"
            )
    if not per_source:
        return language
    if language is False:
        raise ValueError(
            f"sources {sorted(per_source)} set allowed_languages but filters.language is false; remove one of the two"
        )
    if language is None:
        # Only the sources that ask for it are restricted; the rest keep every language.
        settings: dict[str, Any] = {"allowed": None}
    else:
        settings = {} if language is True else dict(language)
    by_source = {name: list(langs) for name, langs in dict(settings.get("by_source") or {}).items()}
    for name, langs in per_source.items():
        if name in by_source and sorted(by_source[name]) != sorted(langs):
            raise ValueError(
                f"source {name!r}: allowed_languages {langs} disagrees with "
                f"filters.language.by_source[{name!r}] = {by_source[name]}; keep one of the two"
            )
        by_source[name] = langs
    settings["by_source"] = by_source
    return settings


def filter_settings(
    filters: Mapping[str, Any],
    intended_use: str,
    licenses: Mapping[str, Any],
    sources: Sequence[SourceConfig] = (),
    teachers: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The project's filter settings, with the licence filter bound to the build's intended use, licence table
    and model registry (``policy.teachers``), and the language filter to each source's ``allowed_languages``."""
    settings = dict(filters)
    if settings.get("license") is not False:
        bound: dict[str, Any] = {"intended_use": intended_use, "licenses": licenses}
        if teachers:  # only when declared: a project without a registry keeps its chain fingerprint
            bound["teachers"] = {k: (v.model_dump() if hasattr(v, "model_dump") else v) for k, v in teachers.items()}
        settings["license"] = bound | dict(settings.get("license") or {})
    language = _language_settings(settings.get("language"), sources)
    if language is not None:
        settings["language"] = language
    return settings


def project_chain(config: ProjectConfig) -> tuple[list[Cleaner], list[Filter]]:
    """The cleaners and filters a project file asks for, exactly as the `filtered` asset runs them."""
    cleaners = build_cleaners(config.filters.get("cleaners"))
    filters = build_filters(
        filter_settings(
            config.filters, config.policy.intended_use, config.policy.licenses, config.sources, config.policy.teachers
        )
    )
    return cleaners, filters
