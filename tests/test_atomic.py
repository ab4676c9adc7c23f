"""Atomic writes: a failure inside the block leaves the old content (or nothing), never a partial file."""

import pytest

from multiexit.io import atomic_directory, atomic_open, atomic_write_text


def test_atomic_file_write_and_failure(tmp_path):
    target = tmp_path / "sub" / "out.jsonl"
    atomic_write_text(target, "first\n")
    assert target.read_text() == "first\n"
    with pytest.raises(RuntimeError):
        with atomic_open(target) as handle:
            handle.write("partial")
            raise RuntimeError("killed")
    assert target.read_text() == "first\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.jsonl"]


def test_atomic_directory_replaces_only_on_success(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as staging:
        (staging / "config.json").write_text("{}")
    assert (target / "config.json").is_file() and oct(target.stat().st_mode)[-3:] == "755"
    with pytest.raises(ValueError):
        with atomic_directory(target) as staging:
            (staging / "weights").write_text("half")
            raise ValueError("crash")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]
