"""Source digests kept in the home: an unchanged file is not read again, a changed one always is."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from curation.ingest import digests as digests_module
from curation.ingest.digests import DIGESTS_FILE, SETTLE_NS, source_digests


def _settled(path: Path, text: str) -> Path:
    """``path`` written with ``text`` and dated a minute ago, as a file that is not being written."""
    path.write_text(text, encoding="utf-8")
    old = path.stat().st_mtime_ns - 60 * 10**9
    os.utime(path, ns=(old, old))
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files whose bytes were hashed."""
    seen: list[Path] = []
    real = digests_module.digest_or_reason

    def counting(path: Path) -> str:
        seen.append(path)
        return real(path)

    monkeypatch.setattr(digests_module, "digest_or_reason", counting)
    return seen


def test_an_unchanged_file_is_hashed_once_and_a_changed_one_again(
    home: Path, tmp_path: Path, reads: list[Path]
) -> None:
    home.mkdir()
    first = _settled(tmp_path / "a.jsonl", '{"x": 1}\n')
    second = _settled(tmp_path / "b.jsonl", '{"x": 2}\n')
    assert source_digests([first, second]) == {first: _sha(first), second: _sha(second)}
    assert reads == [first, second]

    reads.clear()
    assert source_digests([first, second]) == {first: _sha(first), second: _sha(second)}
    assert reads == []  # neither file was read again

    _settled(second, '{"x": 2}\n{"x": 3}\n')  # appended: another size and mtime
    assert source_digests([first, second]) == {first: _sha(first), second: _sha(second)}
    assert reads == [second]


def test_a_file_written_just_before_it_was_hashed_is_hashed_again(
    home: Path, tmp_path: Path, reads: list[Path]
) -> None:
    """Its mtime may not change if it is written again within the same clock tick (git's racily clean
    entries), so its digest is not kept."""
    home.mkdir()
    fresh = tmp_path / "fresh.jsonl"
    fresh.write_text('{"x": 1}\n', encoding="utf-8")
    tick = fresh.stat().st_mtime_ns
    source_digests([fresh])
    fresh.write_text('{"x": 9}\n', encoding="utf-8")
    os.utime(fresh, ns=(tick, tick))  # same size, and within the same tick of a coarse clock
    assert source_digests([fresh]) == {fresh: _sha(fresh)}
    assert reads == [fresh, fresh]
    assert SETTLE_NS >= 10**9


def test_a_damaged_record_means_hashing_everything(home: Path, tmp_path: Path, reads: list[Path]) -> None:
    home.mkdir()
    path = _settled(tmp_path / "a.jsonl", '{"x": 1}\n')
    source_digests([path])
    record = home / DIGESTS_FILE
    for damaged in ("{not json", json.dumps([1, 2]), json.dumps({str(path): "a digest"})):
        record.write_text(damaged, encoding="utf-8")
        reads.clear()
        assert source_digests([path]) == {path: _sha(path)}
        assert reads == [path]
    assert json.loads(record.read_text(encoding="utf-8"))[str(path)][3] == _sha(path)  # rewritten whole


def test_without_a_home_folder_nothing_is_kept(home: Path, tmp_path: Path, reads: list[Path]) -> None:
    path = _settled(tmp_path / "a.jsonl", '{"x": 1}\n')
    source_digests([path])
    source_digests([path])
    assert reads == [path, path]
    assert not home.exists()


def test_an_unreadable_file_is_reported_and_not_kept(home: Path, tmp_path: Path, reads: list[Path]) -> None:
    home.mkdir()
    missing = tmp_path / "gone.jsonl"
    missing.symlink_to(tmp_path / "nowhere")
    assert source_digests([missing])[missing].startswith("unreadable")
    assert source_digests([missing])[missing].startswith("unreadable")
    assert reads == [missing, missing]
