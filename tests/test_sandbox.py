"""The sandbox against the attacks of its issue (infinite loop, fork bomb, huge output, a
write outside its directory, a network attempt, os.system) and against ordinary solutions.
Each run starts a real child; the ones that hit a limit use short limits, so the file stays
within a few seconds."""

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence

import pytest

from selfplay.sandbox import MAX_FILES, Limits, TestReport, _candidates, isolation, run_tests, verdict

QUICK = Limits(cpu_s=1, wall_s=3)
MARGIN = 2.0  # seconds a killed run may take past its wall clock, on a loaded 2-core box
ISO = isolation()
needs_nproc = pytest.mark.skipif(
    ISO.nproc_base is None, reason="RLIMIT_NPROC cannot be applied on this machine"
)
needs_namespaces = pytest.mark.skipif(not ISO.namespaces, reason="unshare is unavailable on this machine")


def run(solution: str, tests: Sequence[str] = ("assert True",), limits: Limits = QUICK) -> TestReport:
    return run_tests(solution, list(tests), limits)


def processes_in(path) -> list[int]:
    """Live processes whose working directory lies under `path` (the sandbox's, once
    tempfile is pointed there)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:  # gone, or a zombie (no longer live)
                continue
            if cwd.startswith(str(path)):
                found.append(int(entry))
    return found


@pytest.fixture
def workdirs(tmp_path, monkeypatch):
    """Sandbox directories are created under this test's tmp_path."""
    root = tmp_path / "workdirs"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


# ---- the result channel (pure)

NONCE = "ab" * 16


def line(nonce: str = NONCE, passed=(True, False)) -> bytes:
    return (json.dumps({"nonce": nonce, "passed": list(passed)}) + "\n").encode()


def test_one_result_line_with_the_nonce_and_one_boolean_per_test_is_ok():
    assert verdict(None, 0, line(), NONCE, 2) == ("ok", [True, False])


@pytest.mark.parametrize(
    "result",
    [
        line(nonce="cd" * 16),  # forged without the nonce
        line(passed=(True,)),  # too short
        line(passed=(True, True, True)),  # too long
        line(passed=(1, 0)),  # not booleans
        b'{"nonce": "%s", "passed": [true, false], "reason": "ok"}\n' % NONCE.encode(),  # an extra key
        line() + line(),  # two results: the code wrote one of them
        line()[:-1],  # no end of line: the child died mid-write
        b"[" * 5000 + b"\n",  # nested deeper than the parser's recursion limit
        b"",  # nothing
    ],
)
def test_a_malformed_or_forged_result_is_a_crash(result):
    assert verdict(None, 0, result, NONCE, 2) == ("crash", [False, False])


def test_a_valid_result_from_a_child_that_then_failed_is_a_crash():
    assert verdict(None, 1, line(), NONCE, 2) == ("crash", [False, False])


def test_a_verdict_word_beside_a_valid_result_scores_zero():
    assert verdict(None, 0, b"forbidden\n" + line(), NONCE, 2) == ("forbidden", [False, False])


@pytest.mark.parametrize("returncode", [-24, -9])  # SIGXCPU at the soft CPU limit, SIGKILL at the hard one
def test_the_cpu_limit_signals_are_a_timeout(returncode):
    assert verdict(None, returncode, b"", NONCE, 1) == ("timeout", [False])


def test_a_stop_decided_by_the_parent_wins_over_the_result():
    assert verdict("output_limit", 0, line(), NONCE, 2) == ("output_limit", [False, False])


def test_root_runs_the_code_as_nobody_in_namespaces_and_others_in_a_user_namespace():
    as_root = _candidates(0, "/usr/bin/unshare", "/usr/bin/setpriv", (65534, 65534))
    assert as_root[0].user == (65534, 65534) and as_root[0].nproc_base == 1
    assert "--reuid=65534" in as_root[0].prefix and "--net" in as_root[0].prefix
    assert (
        as_root[-1].user is None and as_root[-1].nproc_base is None
    )  # root without setpriv: NPROC is ignored
    as_user = _candidates(1000, "/usr/bin/unshare", None, (65534, 65534))
    assert [c.nproc_base for c in as_user] == [2] and "--user" in as_user[0].prefix
    assert _candidates(0, None, "/usr/bin/setpriv", (65534, 65534)) == []


# ---- ordinary solutions


def test_each_test_passes_or_fails_on_its_own_in_order():
    solution = "def f(x):\n    return 2 * x + 2\n"
    tests = [
        "assert f(3) == 8",
        "assert f(3) == 9",  # fails
        "f = None",  # passes, and must not leak into the next test
        "assert f(0) == 2",
        "raise ValueError",
        "raise SystemExit(0)",  # exiting is not passing
        "raise KeyboardInterrupt",
        "exit()",  # no site module: a NameError
        "assert f(",  # a broken test fails without stopping the others
        "assert f(1) == 4",
    ]
    report = run(solution, tests)
    assert report.reason == "ok"
    assert report.passed == [True, False, True, True, False, False, False, False, False, True]


def test_common_stdlib_use_inside_the_directory_is_allowed():
    solution = (
        "import collections, heapq, itertools, json, math, re, functools, random, string, typing, dataclasses\n"
        "import warnings, traceback, tempfile\n"
        "Point = collections.namedtuple('Point', 'x y')\n"  # uses sys._getframe
        "warnings.warn('noisy')\n"
        "with open('notes.txt', 'w') as f:\n"
        "    f.write('kept')\n"
        "with tempfile.NamedTemporaryFile() as f:\n"  # TMPDIR is the sandbox's directory
        "    f.write(b'x')\n"
        "def f():\n"
        "    return Point(1, 2).x + len(open('notes.txt').read())\n"
    )
    report = run(solution, ["assert f() == 5"])
    assert (report.reason, report.passed) == ("ok", [True])
    assert "UserWarning: noisy" in report.output


def test_a_main_block_does_not_run():
    report = run(
        "def f():\n    return 1\nif __name__ == '__main__':\n    raise SystemExit(1)\n", ["assert f() == 1"]
    )
    assert (report.reason, report.passed) == ("ok", [True])


def test_printing_a_fake_result_does_not_pass_a_failing_test():
    forged = json.dumps({"nonce": NONCE, "passed": [True]})
    report = run(f"print({forged!r})", ["assert False"])
    assert (report.reason, report.passed) == ("ok", [False])
    assert forged in report.output


def test_a_syntax_error_is_syntax():
    assert run("def f(:\n    pass\n").reason == "syntax"


def test_a_solution_that_raises_while_defined_is_an_exception():
    report = run("raise ValueError('no')", ["assert True", "assert True"])
    assert (report.reason, report.passed) == ("exception", [False, False])
    assert "ValueError" in report.output


# ---- limits


def test_an_infinite_loop_hits_the_cpu_limit_and_returns_promptly():
    """The wall clock far away, so only the CPU limit (1 s, then its grace to SIGKILL) can
    end the loop this soon (with the two close together, the wall clock's kill passed this
    test without the CPU limit set)."""
    limits = Limits(cpu_s=1, wall_s=30)
    report = run("while True:\n    pass\n", limits=limits)
    assert (report.reason, report.passed) == ("timeout", [False])
    assert report.seconds < 10


def test_an_idle_hang_hits_the_wall_clock():
    limits = Limits(cpu_s=10, wall_s=1)
    report = run("import time\ntime.sleep(60)\n", limits=limits)
    assert report.reason == "timeout"
    assert limits.wall_s <= report.seconds < limits.wall_s + MARGIN


def test_a_huge_output_is_cut_at_the_output_limit():
    limits = Limits(cpu_s=10, wall_s=10, output_bytes=10_000)
    report = run("while True:\n    print('x' * 1000)\n", limits=limits)
    assert report.reason == "output_limit"
    assert len(report.output) <= limits.output_bytes
    assert report.seconds < MARGIN  # killed at the limit, not at the clock


@pytest.mark.parametrize(
    "solution, test",
    [
        ("x = bytearray(2**40)", "assert True"),  # while defined
        ("def f():\n    return len([0] * 10**10)\n", "assert f() > 0"),  # inside a test
        ("chunks = []\nwhile True:\n    chunks.append(bytearray(2**24))\n", "assert True"),  # growing
    ],
)
def test_a_memory_hog_is_memory_and_scores_zero(solution, test):
    # CPU to spare: zero-filling the growing hog's 512 MB took over QUICK's second (a
    # timeout) while another pytest worker ran beside it
    report = run(solution, ["assert True", test], Limits(cpu_s=5, wall_s=10))
    assert (report.reason, report.passed) == ("memory", [False, False])


@pytest.mark.parametrize("solution", ["import os\nos._exit(0)", "import os\nos.abort()"])
def test_dying_without_a_result_is_a_crash(solution):
    report = run(solution)
    assert (report.reason, report.passed) == ("crash", [False])


def test_a_test_that_ends_the_process_is_a_crash():
    report = run("import os\ndef f():\n    os._exit(0)\n", ["assert True", "f()"])
    assert (report.reason, report.passed) == ("crash", [False, False])


def test_a_result_forged_on_every_descriptor_is_a_crash():
    forged = json.dumps({"nonce": NONCE, "passed": [True]}) + "\n"
    solution = (
        "import os\n"
        "for fd in range(1, 64):\n"
        "    try:\n"
        f"        os.write(fd, {forged.encode()!r})\n"
        "    except OSError:\n"
        "        pass\n"
        "os._exit(0)\n"
    )
    report = run(solution, ["assert False"])
    assert (report.reason, report.passed) == ("crash", [False])


# ---- escapes


def test_a_fork_bomb_is_forbidden_and_leaves_no_process(workdirs):
    report = run("import os\nwhile True:\n    os.fork()\n")
    assert report.reason == "forbidden"
    assert processes_in(workdirs) == []


@needs_nproc
def test_allowed_processes_are_capped_and_all_killed_with_the_run(workdirs):
    limits = Limits(cpu_s=5, wall_s=2, processes=3)
    solution = (
        "import os, time\n"
        "started = 0\n"
        "for _ in range(50):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "        started += 1\n"
        "    except OSError:\n"
        "        pass\n"
        "print('started', started, flush=True)\n"
        "time.sleep(60)\n"
    )
    seen = []
    runner = threading.Thread(target=lambda: seen.append(run(solution, limits=limits)))
    runner.start()
    live = []
    while runner.is_alive() and len(live) < 2:  # the children are visible while it runs ...
        live = processes_in(workdirs)
        time.sleep(0.02)
    runner.join()
    (report,) = seen
    assert report.reason == "timeout" and report.seconds < limits.wall_s + MARGIN
    assert len(live) >= 2
    started = int(report.output.split("started ")[1].split()[0])
    assert 1 <= started <= limits.processes
    assert processes_in(workdirs) == []  # ... and gone once it returns


@needs_nproc
def test_threads_count_as_processes():
    solution = "import threading\nthreading.Thread(target=lambda: None).start()\n"
    assert run(solution).reason == "exception"
    assert run(solution, limits=Limits(cpu_s=1, wall_s=3, processes=1)).reason == "ok"


@pytest.mark.parametrize(
    "write",
    [
        "open({target!r}, 'w').write('x')",
        "import os\nos.close(os.open({target!r}, os.O_WRONLY | os.O_CREAT))",
        "import os\nos.rename(open('mine', 'w').name, {target!r})",
        "import pathlib\npathlib.Path({target!r}).write_text('x')",
        "import shutil\nopen('mine', 'w').close()\nshutil.copy('mine', {target!r})",
        "import os\nos.symlink({target!r}, 'link')\nopen('link', 'w').write('x')",
        "import os\nopen('../../../../../../../../../../..' + {target!r}, 'w').write('x')",
    ],
)
def test_a_write_outside_the_directory_is_forbidden_and_writes_nothing(tmp_path, write):
    target = str(tmp_path / "pwned.txt")
    report = run(write.format(target=target))
    assert report.reason == "forbidden"
    assert not os.path.exists(target)


def test_writing_more_than_max_files_is_forbidden():
    solution = f"for i in range({MAX_FILES + 1}):\n    open(f'f{{i}}', 'w').close()\n"
    assert run(solution).reason == "forbidden"
    assert run(solution.replace(str(MAX_FILES + 1), str(MAX_FILES))).reason == "ok"


def test_native_code_copied_into_the_directory_cannot_be_loaded():
    solution = (
        "import os, shutil, sys\n"
        "stdlib = [p for p in sys.path if p.endswith('lib-dynload')][0]\n"
        "name = [n for n in os.listdir(stdlib) if n.startswith('_json.')][0]\n"
        "shutil.copy(os.path.join(stdlib, name), name)\n"
        "sys.path.insert(0, os.getcwd())\n"
        "import _json\n"
    )
    report = run(solution)
    assert report.reason == "forbidden"
    assert "native code from" in report.output


@pytest.mark.parametrize("path", ["/etc/passwd", "/proc/self/mem", "/proc/self/environ"])
def test_a_read_outside_the_directory_and_the_stdlib_is_forbidden(path):
    assert run(f"open({path!r}, 'rb').read(1)").reason == "forbidden"


@pytest.mark.parametrize(
    "solution",
    [
        # native modules that read or write files with no audit event
        "import readline\nreadline.read_history_file({secret!r})",
        "import readline\nreadline.write_history_file({outside!r})",
        "import spwd\nspwd.getspall()",
        "import _posixshmem, os\n_posixshmem.shm_open({shm!r}, os.O_CREAT | os.O_RDWR, 0o600)",
        # a directory's entries outside the sandbox and the stdlib
        "import os\nos.listdir({secret_dir!r})",
        "import os\nlist(os.scandir('/root'))",
        # every object in the process, the hidden tests' code among them
        "import gc\nT = [o for o in gc.get_objects() if type(o) is str and o.startswith('assert f(')]",
        "import gc\ngc.get_referrers(gc)",
    ],
)
def test_reads_and_writes_that_raise_no_open_event_are_forbidden(tmp_path, solution):
    secret = tmp_path / "secret" / "s"
    secret.parent.mkdir()
    secret.write_text("hidden\n")
    outside = tmp_path / "written"
    shm = f"/sandbox-test-{tmp_path.name}-{os.getpid()}"
    code = solution.format(secret=str(secret), secret_dir=str(secret.parent), outside=str(outside), shm=shm)
    report = run(code, ["assert f(3) == 17"])
    assert report.reason == "forbidden", report.output
    assert not outside.exists() and not os.path.exists("/dev/shm" + shm)


def test_listing_its_own_directory_and_the_stdlib_is_allowed():
    solution = (
        "import os, glob, pathlib, json\n"
        "open('a.txt', 'w').close()\n"
        "def f():\n"
        "    here = os.listdir() + os.listdir('.') + glob.glob('*.txt') + [p.name for p in pathlib.Path('.').iterdir()]\n"
        "    return len(here), len(os.listdir(os.path.dirname(json.__file__))) > 0\n"
    )
    report = run(solution, ["assert f() == (4, True)"])
    assert (report.reason, report.passed) == ("ok", [True]), report.output


def test_files_renamed_away_still_count_against_max_files():
    solution = (
        "import os\n"
        f"for i in range({MAX_FILES + 1}):\n"
        "    open('a', 'w').write('x')\n"
        "    os.rename('a', f'f{i}')\n"
    )
    report = run(solution)
    assert report.reason == "forbidden" and f"more than {MAX_FILES} files written" in report.output


def test_a_directory_tree_deeper_than_the_recursion_limit_is_removed_and_the_call_returns(workdirs):
    solution = "import os\np = 'a'\nfor i in range(1200):\n    os.mkdir(p)\n    p += '/a'\n"
    report = run(solution, limits=Limits(cpu_s=2, wall_s=10))
    assert report.reason == "ok"
    assert list(workdirs.iterdir()) == []


def test_processes_are_refused_where_no_pid_namespace_would_end_them(monkeypatch):
    import selfplay.sandbox as sandbox

    monkeypatch.setattr(sandbox, "isolation", lambda: sandbox.Isolation())
    with pytest.raises(ValueError, match="Limits.processes: this machine has no PID namespace"):
        run_tests("x = 1", ["assert x == 1"], Limits(processes=2))
    assert run_tests("x = 1", ["assert x == 1"], Limits()).reason == "ok"


def test_the_directory_is_deleted_after_the_run(workdirs):
    report = run("open('left.txt', 'w').write('x' * 1000)")
    assert report.reason == "ok"
    assert list(workdirs.iterdir()) == []


def test_a_network_attempt_is_forbidden_and_connects_to_nothing():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        report = run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)")
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()
    assert report.reason == "forbidden"


@pytest.mark.parametrize(
    "spawn",
    [
        "import os\nos.system('touch {marker}')",
        "import os\nos.popen('touch {marker}').read()",
        "import os\nos.execv('/usr/bin/touch', ['touch', '{marker}'])",
        "import os\nos.posix_spawn('/usr/bin/touch', ['touch', '{marker}'], {{}})",
        "import subprocess\nsubprocess.run(['touch', '{marker}'])",
        "import ctypes\nctypes.CDLL(None).system(b'touch {marker}')",
    ],
)
def test_starting_a_program_is_forbidden_and_it_never_runs(tmp_path, spawn):
    marker = tmp_path / "ran"
    report = run(spawn.format(marker=marker))
    assert report.reason == "forbidden"
    assert not marker.exists()


def test_an_escape_caught_by_the_code_still_scores_zero():
    solution = "import os\ntry:\n    os.system('true')\nexcept BaseException:\n    pass\n"
    report = run(solution, ["assert True"])
    assert (report.reason, report.passed) == ("forbidden", [False])


@needs_namespaces
def test_without_the_hook_the_kernel_still_blocks_the_network_and_foreign_files(tmp_path):
    """Layer 1 alone: the wrapper around a bare interpreter, no audit hook."""
    outside = tmp_path / "pwned.txt"
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        code = (
            "import os, socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            "    print('connected')\n"
            "except OSError as error:\n"
            "    print('unreachable', error.errno)\n"
            "try:\n"
            f"    open({str(outside)!r}, 'w').write('x')\n"
            "except PermissionError:\n"
            "    print('write denied')\n"
            "print('uid', os.getuid(), 'pid', os.getpid())\n"
        )
        done = subprocess.run(
            [*ISO.prefix, sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=30
        )
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()
    assert "unreachable" in done.stdout, done.stdout + done.stderr
    assert "pid 1\n" in done.stdout  # init of its own PID namespace
    if ISO.user:  # root drops to nobody, who cannot write into our 0700 tmp_path
        assert f"uid {ISO.user[0]}" in done.stdout and "write denied" in done.stdout
        assert not outside.exists()
