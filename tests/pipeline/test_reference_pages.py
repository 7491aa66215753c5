"""The reference pages in docs/ are generated from the registries, never written by hand."""

from __future__ import annotations

from pathlib import Path

from distillery_cli import main


def test_reference_pages_in_docs_are_generated_from_the_registries(tmp_path: Path) -> None:
    """docs/filters.md, docs/mappings.md and docs/synthesis-methods.md come from the registrations, so a new
    filter, mapping or method documents itself; `--check` tells when the committed pages are stale."""
    assert main(["reference", "--check"]) == 0, "docs/ is stale: run `distillery reference` and commit the pages"
    assert main(["reference", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["filters.md", "mappings.md", "synthesis-methods.md"]
    (tmp_path / "mappings.md").write_text("# edited by hand\n")
    assert main(["reference", "--check", "--out", str(tmp_path)]) == 1
