"""No process a command started outlives it (selfplay/procs.py): what a SIGTERM to the
process group leaves is an orphan, e.g. a vLLM engine core whose Ray worker died first."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from selfplay.procs import Descendants, held_segments, remove_leaked_segments, segments

# a child that starts a grandchild in a session of its own (as Ray and vLLM start theirs),
# prints its pid and waits
PARENT = """
import subprocess, sys, time
g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
print(g.pid, flush=True)
time.sleep(120)
"""


def test_an_orphaned_grandchild_is_remembered_and_ended():
    earlier = subprocess.Popen(["sleep", "60"])  # started before: not this command's (a test session's Ray)
    started = Descendants()
    child = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    grandchild = psutil.Process(int(child.stdout.readline()))
    started.refresh()
    assert earlier.pid not in started.seen
    assert {child.pid, grandchild.pid} <= set(started.seen)
    child.kill()  # the parent dies first: the grandchild leaves this process's tree
    child.wait()
    time.sleep(0.2)
    assert grandchild.is_running() and grandchild.pid not in {
        p.pid for p in psutil.Process().children(recursive=True)
    }
    started.refresh()  # a later look does not forget it
    assert [p.pid for p in started.alive()] == [grandchild.pid]
    assert started.reap(grace_s=5) == [grandchild.pid]
    assert not grandchild.is_running() and started.alive() == []
    assert earlier.poll() is None  # left alone
    earlier.kill()
    earlier.wait()


def test_children_of_a_process_started_before_are_not_this_commands():
    """A helper started before (a shell loop, a test session's Ray) spawns children later:
    they were adopted as the command's and ended at its close."""
    helper = subprocess.Popen(  # spawns its child once told, after the command began
        [
            sys.executable,
            "-c",
            "import subprocess, sys; sys.stdin.readline(); subprocess.Popen(['sleep', '60']); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        text=True,
    )
    started = Descendants()  # the helper is earlier; its child comes after
    try:
        helper.stdin.write("go\n")
        helper.stdin.flush()
        later = None
        for _ in range(100):
            kids = psutil.Process(helper.pid).children()
            if kids:
                later = kids[0]
                break
            time.sleep(0.05)
        assert later is not None
        mine = subprocess.Popen(["sleep", "60"])
        started.refresh()
        assert later.pid not in started.seen and mine.pid in started.seen
        assert started.reap(grace_s=5) == [mine.pid] and later.is_running()
    finally:
        for p in psutil.Process(helper.pid).children(recursive=True):
            p.kill()
        helper.kill()
        helper.wait()


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace():
    started = Descendants()
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
    )
    stubborn.stdout.readline()  # its handler is in place
    started.refresh()
    start = time.monotonic()
    assert started.reap(grace_s=1) == [stubborn.pid]
    assert started.alive() == [] and 1 <= time.monotonic() - start < 5  # SIGTERM ignored, SIGKILL after 1 s


def test_the_anchors_death_ends_the_rest_at_once():
    """A SIGTERM to the process group kills a local Ray's GCS; Ray ends the command 60 s
    later, so the watcher reaps the orphans as soon as it sees the anchor gone."""
    started = Descendants(anchors=("sleep",))
    anchor = subprocess.Popen(["sleep", "120"])
    child = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    grandchild = psutil.Process(int(child.stdout.readline()))
    lost = []
    watching = started.watch(every_s=0.2, on_lost=lambda names, pids: lost.append((names, pids)))
    child.kill()  # orphans the grandchild, as the group signal orphans an engine core
    child.wait()
    time.sleep(0.5)
    assert grandchild.is_running()  # the anchor lives: nothing is ended
    anchor.kill()  # not waited for: a zombie, as the GCS is until Ray's driver reaps it
    deadline = time.monotonic() + 10
    while grandchild.is_running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not grandchild.is_running()
    deadline = time.monotonic() + 5
    while not lost and time.monotonic() < deadline:
        time.sleep(0.1)
    assert lost == [(["sleep"], [grandchild.pid])]
    watching.set()
    anchor.wait()


# a child that makes a segment (as shared_memory does: open, size, map), says so, and waits;
# with "open", it keeps the file open instead of mapping it
HOLDER = """
import mmap, os, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o600)
os.ftruncate(fd, 4096)
if sys.argv[2:] != ["open"]:
    m = mmap.mmap(fd, 4096)
    os.close(fd)
print("mapped", flush=True)
time.sleep(120)
"""


def test_segments_left_by_a_killed_process_are_removed_and_held_ones_kept(tmp_path):
    old = tmp_path / "psm_old"
    old.write_bytes(b"x")  # there before: not this command's, even though nobody holds it
    before = segments(tmp_path)
    holders = {}
    for name in ("psm_killed", "psm_alive", "psm_open"):  # the last held by an open file alone
        holders[name] = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(tmp_path / name), name.removeprefix("psm_")],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holders[name].stdout.readline().strip() == "mapped"
    try:
        (tmp_path / "other").write_bytes(b"x")  # not a segment's name
        assert {"psm_killed", "psm_alive", "psm_open"} <= held_segments(tmp_path)
        assert remove_leaked_segments(before, tmp_path) == []  # all held
        holders["psm_killed"].kill()
        holders["psm_killed"].wait()
        assert remove_leaked_segments(before, tmp_path) == ["psm_killed"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "psm_alive", "psm_old", "psm_open"]
    finally:
        for p in holders.values():
            p.kill()
            p.wait()
