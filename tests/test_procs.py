"""No process a command started outlives it (selfplay/procs.py): what a SIGTERM to the
process group leaves is an orphan, e.g. a vLLM engine core whose Ray worker died first."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from selfplay.procs import Descendants

# a child that starts a grandchild in a session of its own (as Ray and vLLM start theirs),
# prints its pid and waits
PARENT = """
import subprocess, sys, time
g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
print(g.pid, flush=True)
time.sleep(120)
"""


def test_an_orphaned_grandchild_is_remembered_and_ended():
    child = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    grandchild = psutil.Process(int(child.stdout.readline()))
    started = Descendants()
    started.refresh()
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


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace():
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
    )
    stubborn.stdout.readline()  # its handler is in place
    started = Descendants()
    started.refresh()
    start = time.monotonic()
    assert started.reap(grace_s=1) == [stubborn.pid]
    assert started.alive() == [] and 1 <= time.monotonic() - start < 5  # SIGTERM ignored, SIGKILL after 1 s
