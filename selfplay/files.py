"""Writing run state so that a crash at any moment leaves either the old file or the new
one, never half of one: write a temporary name beside it, fsync, rename over it, fsync
the directory (a rename is atomic on POSIX file systems)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def write_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def run_ended(run_dir: str | Path) -> bool:
    """Whether a run has ended (finished, or stopped from outside): its summary.json holds
    its `steps`, written at the end. The file itself exists from the first evaluation on
    (`before`), so a killed run keeps it."""
    path = Path(run_dir) / "summary.json"
    return path.exists() and "steps" in json.loads(path.read_text())


def write_parquet_atomic(table: pa.Table, path: str | Path) -> None:
    """A Parquet file, whole or not at all, and on disk: written under a hidden temporary
    name beside it (Parquet readers of the directory skip dot-files), fsynced, renamed over
    it, the directory fsynced. (Files outside a checkpoint, the metrics and the preference
    parts, are named by the checkpoint's state but not under its fsync_tree: a crash of the
    machine left a 0-byte metrics.parquet that no resume could read.)"""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            pq.write_table(table, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def fsync_dir(directory: str | Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(directory: str | Path) -> None:
    """Every file under `directory` and every directory on disk (before a checkpoint's
    COMPLETE marker is written, so the marker never names data still in memory)."""
    for root, _, names in os.walk(directory):
        for name in names:
            fd = os.open(Path(root) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


def private_token(path: str | Path) -> Path:
    """A secret token file readable by its owner alone (0600): created with a fresh
    random token if missing (never readable by others, not even for a moment), its mode
    tightened if it exists wider. Refused if another user owns it."""
    import secrets

    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    found = path.stat() if path.exists() else None
    if found is not None and found.st_uid != os.getuid():
        raise PermissionError(f"{path}: owned by another user; a token must be its reader's own")
    empty = found is not None and found.st_size == 0  # a first write cut short: made again
    if found is None or empty:
        # whole or not at all: written and fsynced under a temporary name of its own (a pid's
        # stayed taken by a process killed in between), then linked in (which fails where
        # another process made it first) or over the empty one
        tmp = path.with_name(f".{path.name}.tmp.{secrets.token_hex(8)}")
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
                f.flush()
                os.fsync(f.fileno())
            if empty:
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    pass
            fsync_dir(path.parent)
        finally:
            tmp.unlink(missing_ok=True)
    path.chmod(0o600)
    return path


def local_ray_auth() -> Path | None:
    """Before a local `ray.init`: the token Ray 2.60 reads ($RAY_AUTH_TOKEN_PATH, else
    ~/.ray/auth_token) made private to its owner. Ray turns token authentication on for
    a new local cluster unless $RAY_AUTH_MODE says otherwise, and writes a missing token
    0644; this writes it 0600 first, or tightens an existing one. (RAY_AUTH_MODE is not set
    here: Ray reads it when imported, so setting it now would split this process from the
    cluster it starts.) None when the token comes from $RAY_AUTH_TOKEN."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return None
    return private_token(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
