"""The project file: errors name the key and say what is expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from curation.core.config import ConfigError, load_project
from tests.conftest import DEMO_CONFIG


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "distillery.yaml"
    path.write_text(text)
    return path


MINIMAL = """
sources:
  - name: s
    path: data.jsonl
    mapping: alpaca
    license: MIT
format:
  tokenizer: tok
"""


def test_bundled_demo_config_is_valid() -> None:
    project = load_project(DEMO_CONFIG)
    assert [s.name for s in project.sources] == ["demo_sft", "demo_chat", "demo_preference", "demo_nc_qa"]
    assert all(project.source_files(s) for s in project.sources)
    assert len(project.file_hash) == 16


def test_minimal_file_gets_defaults_and_base_dir(tmp_path: Path) -> None:
    project = load_project(write(tmp_path, MINIMAL))
    assert project.base_dir == tmp_path
    assert project.mix.synthetic_cap == 0.3 and project.policy.intended_use == "research"
    assert project.resolve("data.jsonl") == tmp_path / "data.jsonl"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("mapping: alpaca", "mapping: alpacca"), "sources.0.mapping: Input should be 'alpaca'"),
        (("license: MIT", "licence: MIT"), "sources.0.licence: unknown key"),
        (("license: MIT", "license: ''"), "sources.0.license"),
        (("    path: data.jsonl\n", ""), "sources.0.path: required key is missing"),
        (("tokenizer: tok", "tokenizer: tok\n  max_tokens: -5"), "format.max_tokens: Input should be greater than 0"),
        (("format:", "mix:\n  synthetic_cap: 1.5\nformat:"), "mix.synthetic_cap"),
        (("license: MIT", "license: MIT\n    origin: synthetic"), "'generator' must name the model"),
    ],
)
def test_invalid_files_name_the_key(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_project(write(tmp_path, MINIMAL.replace(*change)))
    message = str(error.value)
    assert expected in message
    assert str(tmp_path / "distillery.yaml") in message


def test_duplicate_source_names(tmp_path: Path) -> None:
    text = MINIMAL.replace("format:", "  - {name: s, path: b.jsonl, mapping: alpaca, license: MIT}\nformat:")
    with pytest.raises(ConfigError, match="source name 's' is used twice"):
        load_project(write(tmp_path, text))


def test_missing_and_unparsable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="project file not found"):
        load_project(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_project(write(tmp_path, "sources: [unclosed"))


def test_stage_settings_are_judged_by_their_registrations_when_the_file_loads(tmp_path: Path) -> None:
    """A misspelt filter, dedup key or synthesis method fails at load, all named at once, instead of
    halfway through a run after the earlier stages have done their work."""
    path = write(
        tmp_path,
        MINIMAL
        + """
dedup:
  near: {treshold: 0.8}
filters:
  lenght: {min_response_words: 2}
synthesis:
  methods:
    perturbaton: {count: 5}
""",
    )
    with pytest.raises(ConfigError) as raised:
        load_project(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: the project file is invalid:")
    assert "dedup.near: " in message and "treshold" in message
    assert "unknown filter 'lenght'" in message
    assert "perturbaton" in message


def test_a_misspelt_field_rename_is_an_error_naming_the_mappings_fields(tmp_path: Path) -> None:
    """`fields` renames a mapping's fields; a key the mapping does not read would be silently ignored."""
    path = write(tmp_path, MINIMAL.replace("mapping: alpaca", "mapping: alpaca\n    fields: {instrution: question}"))
    with pytest.raises(ConfigError) as raised:
        load_project(path)
    assert "sources.0.fields: Value error, 'instrution' is not a field of mapping 'alpaca'" in str(raised.value)
    assert "'instruction', 'output', 'system'" in str(raised.value)
