"""Atomic state files (selfplay/files.py)."""

from __future__ import annotations

import os

import pytest

from selfplay.files import fsync_tree, run_ended, write_atomic


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


def test_a_parquet_file_is_on_disk_before_it_is_named(tmp_path, monkeypatch):
    """The metrics and the preference parts live outside the checkpoint's fsync_tree, yet
    its state names them: each is fsynced under its temporary name, and its directory after
    the rename."""
    import pyarrow as pa

    from selfplay.files import write_parquet_atomic

    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd))
    write_parquet_atomic(pa.table({"x": [1, 2]}), tmp_path / "metrics.parquet")
    assert len(synced) == 2 and synced[0].startswith(str(tmp_path / ".metrics.parquet.tmp"))
    assert synced[1] == str(tmp_path)
    assert os.listdir(tmp_path) == ["metrics.parquet"]


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


def test_a_token_is_created_private_and_an_existing_one_is_tightened(tmp_path, monkeypatch):
    from selfplay.files import local_ray_auth, private_token

    fresh = private_token(tmp_path / "ray" / "auth_token")
    assert fresh.stat().st_mode & 0o777 == 0o600 and len(fresh.read_text()) == 64
    assert (tmp_path / "ray").stat().st_mode & 0o777 == 0o700
    wide = tmp_path / "wide"
    wide.write_text("kept")
    wide.chmod(0o644)  # as Ray writes ~/.ray/auth_token
    assert private_token(wide).read_text() == "kept" and wide.stat().st_mode & 0o777 == 0o600
    # a first write killed between creating the file and writing the token left it empty,
    # which the next run trusted as the token: it is made again
    empty = tmp_path / "empty"
    empty.touch(mode=0o600)
    token = private_token(empty).read_text()
    assert len(token) == 64 and int(token, 16) >= 0 and empty.stat().st_mode & 0o777 == 0o600
    # created private, not tightened after: never readable by others, not for a moment
    created, real_open = [], os.open

    def recording_open(path, flags, mode=0o777, *args, **kwargs):
        if flags & os.O_CREAT:
            created.append(mode)
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    private_token(tmp_path / "ray" / "again")
    assert created == [0o600]
    assert private_token(empty).read_text() == token  # and kept from then on
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "ray", "wide"]  # no temporaries
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "t"))
    assert local_ray_auth() == tmp_path / "t"
    assert (tmp_path / "t").stat().st_mode & 0o777 == 0o600


def test_a_run_has_ended_once_its_summary_holds_its_steps(tmp_path):
    assert not run_ended(tmp_path)  # nothing yet
    write_atomic(tmp_path / "summary.json", '{"before": {"tictactoe/random": {}}}')
    assert not run_ended(tmp_path)  # measured before training, then killed or still running
    write_atomic(tmp_path / "summary.json", '{"before": {}, "after": {}, "steps": 40}')
    assert run_ended(tmp_path)
