"""Atomic state files (selfplay/files.py)."""

from __future__ import annotations

import os

import pytest

from selfplay.files import fsync_tree, write_atomic


def test_write_atomic_replaces_the_whole_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    write_atomic(path, '{"step": 1}')
    write_atomic(path, '{"step": 2}')
    assert path.read_text() == '{"step": 2}' and os.listdir(tmp_path) == ["state.json"]


def test_a_write_that_fails_midway_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    write_atomic(path, "old")

    def crash(fd):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk gone"):
        write_atomic(path, "new, half written")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["state.json"]


def test_fsync_tree_reaches_every_file(tmp_path, monkeypatch):
    (tmp_path / "model").mkdir()
    for name in ("a", "model/b"):
        (tmp_path / name).write_text(name)
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd))
    fsync_tree(tmp_path)
    assert {
        str(tmp_path / "a"),
        str(tmp_path / "model" / "b"),
        str(tmp_path),
        str(tmp_path / "model"),
    } <= set(synced)
