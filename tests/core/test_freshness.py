"""Which assets a run may skip: only those materialized, checks passing, from what they would be made of now."""

from pathlib import Path

from curation.core.freshness import (
    CODE_FOLDERS,
    PROJECT_ROOT,
    AssetState,
    Freshness,
    _code_digest,
    import_closure,
    module_code_version,
)

GRAPH = {"raw": [], "deduped": ["raw"], "filtered": ["deduped"], "report": ["raw", "filtered"]}


def recorded(sources: str = "files-v1") -> Freshness:
    """State after a good run of every asset on ``sources``."""
    empty = Freshness(GRAPH, {}, "code+project", sources)
    versions = {"raw": ("r1", 10), "deduped": ("d1", 9), "filtered": ("f1", 8), "report": (None, None)}
    record, forget = empty.after_run(versions, failed=set())
    assert not forget
    return Freshness(GRAPH, record, "code+project", sources)


def test_nothing_changed_nothing_is_stale() -> None:
    assert Freshness(GRAPH, {}, "b", "s").stale() == list(GRAPH)
    assert recorded().stale() == []


def test_changed_sources_make_everything_downstream_stale() -> None:
    state = recorded().state
    assert Freshness(GRAPH, state, "code+project", "files-v2").stale() == list(GRAPH)


def test_changed_code_or_project_file_makes_everything_stale() -> None:
    state = recorded().state
    assert Freshness(GRAPH, state, "other code", "files-v1").stale() == list(GRAPH)


def test_an_upstream_version_not_seen_by_the_asset_makes_it_stale() -> None:
    fresh = recorded()
    state = dict(fresh.state)
    state["deduped"] = AssetState(state["deduped"].fingerprint, "d2", 9)  # deduped re-made, filtered not
    assert Freshness(GRAPH, state, "code+project", "files-v1").stale() == ["filtered", "report"]


def test_a_failed_check_forgets_the_asset_and_what_was_made_from_it() -> None:
    fresh = Freshness(GRAPH, {}, "code+project", "files-v1")
    versions = {"raw": ("r1", 10), "deduped": ("d1", 9), "filtered": ("f1", 8), "report": (None, None)}
    record, forget = fresh.after_run(versions, failed={"deduped"})
    assert set(record) == {"raw"} and forget == {"deduped", "filtered", "report"}
    assert Freshness(GRAPH, record, "code+project", "files-v1").stale() == ["deduped", "filtered", "report"]


def test_a_source_setting_that_shapes_rows_changes_raws_input(tmp_path) -> None:
    """``raw``'s input is its files and each source's settings (the key ingestion re-reads a source by): with
    code and project base held equal, a new licence still makes ``raw`` and everything after it stale; a
    setting that does not shape rows (the filter's languages) leaves ``raw``'s input as it was."""
    from curation.core.config import load_project
    from curation.core.freshness import source_fingerprint

    (tmp_path / "x.jsonl").write_text('{"instruction": "a", "output": "b"}\n')

    def project(source: str) -> str:
        path = tmp_path / "distillery.yaml"
        path.write_text(
            f"sources:\n  - {{name: s, path: x.jsonl, mapping: alpaca, {source}}}\nformat: {{tokenizer: t}}\n"
        )
        return source_fingerprint(load_project(path))

    mit = project("license: MIT")
    assert project("license: MIT, allowed_languages: [en]") == mit
    changed = project("license: Apache-2.0")
    assert changed != mit
    assert Freshness(GRAPH, recorded(mit).state, "code+project", changed).stale() == list(GRAPH)


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_an_assets_code_version_follows_the_code_it_imports_and_nothing_else(tmp_path: Path) -> None:
    """Asset code versions were hand-written labels (`raw-1`): editing the code a stage runs left the UI
    showing it up to date. They are now a digest of the module and everything it imports, lazily too."""
    _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/asset.py": "def build():\n    from pkg.stage import run\n    return run()\n",
            "pkg/stage.py": "from pkg.core import (\n    helper,  # used below\n    other as renamed,\n)\n",
            "pkg/core/__init__.py": "",
            "pkg/core/helper.py": "X = 1\n",
            "pkg/core/other.py": "Y = 1\n",
            "pkg/unrelated.py": "Z = 1\n",
        },
    )

    def version() -> str:
        return _code_digest(tmp_path, import_closure(tmp_path, "pkg.asset", ("pkg",)))

    files = {p.relative_to(tmp_path).as_posix() for p in import_closure(tmp_path, "pkg.asset", ("pkg",))}
    assert files == {
        "pkg/__init__.py",
        "pkg/asset.py",
        "pkg/stage.py",
        "pkg/core/__init__.py",
        "pkg/core/helper.py",
        "pkg/core/other.py",
    }
    before = version()
    (tmp_path / "pkg" / "unrelated.py").write_text("Z = 2\n", encoding="utf-8")
    assert version() == before
    (tmp_path / "pkg" / "core" / "other.py").write_text("Y = 2\n", encoding="utf-8")
    assert version() != before


def test_each_dataset_asset_carries_the_code_version_of_its_own_imports() -> None:
    from definitions import ASSETS

    versions = {}
    for assets_def in ASSETS:
        for key in assets_def.keys:
            versions[key.to_user_string()] = assets_def.code_versions_by_key[key]
    module_of = {name: f"assets.{'compliance' if name == 'compliance_report' else name}" for name in versions}
    assert versions == {name: module_code_version(module_of[name]) for name in versions}
    assert versions["raw"] != versions["formatted"]
    raw_files = {
        p.relative_to(PROJECT_ROOT).parts[:2] for p in import_closure(PROJECT_ROOT, "assets.raw", CODE_FOLDERS)
    }
    assert ("curation", "ingest") in raw_files and ("curation", "format") not in raw_files
