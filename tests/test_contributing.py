"""CONTRIBUTING.md's recipes really run: each "Add a …" section's Python blocks, in order, as one script."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

RECIPES = ("Add a filter", "Add a mapping", "Add a synthesis method", "Add a check")


def _sections() -> dict[str, str]:
    """Section title → its Python blocks joined into one script."""
    text = (REPO / "CONTRIBUTING.md").read_text(encoding="utf-8")
    sections: dict[str, str] = {}
    for part in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        title, _, body = part.partition("\n")
        sections[title.strip()] = "\n\n".join(re.findall(r"^```python\n(.*?)^```", body, re.DOTALL | re.MULTILINE))
    return sections


def test_every_recipe_has_code_and_a_try_it_block() -> None:
    sections = _sections()
    for title in RECIPES:
        assert title in sections, f"CONTRIBUTING.md lost its section {title!r}"
        assert sections[title].count("import") >= 2, f"{title!r} should show the file and how to try it"


@pytest.mark.slow
@pytest.mark.parametrize("title", RECIPES)
def test_recipe_runs(title: str, tmp_path) -> None:
    script = tmp_path / "recipe.py"
    script.write_text(_sections()[title], encoding="utf-8")
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("DISTILLERY_", "DAGSTER_"))}
    environment["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [sys.executable, str(script)], cwd=REPO, env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"the {title!r} recipe in CONTRIBUTING.md fails:\n{result.stderr[-3000:]}"
