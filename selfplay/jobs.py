"""Runs on a Ray cluster through Ray's Job Submission API: submit, status, logs, stop and
scale. A run's job has the run's name as submission id, its Ray namespace and its
directory (OUT_DIR/NAME), so a resubmit under the same name resumes the run. Like the
driver, this is the client side of Ray; nothing here runs inside an actor."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from selfplay.config import RUN_NAME, ConfigError, load_config, save_config, string_override

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
REUSE_AFTER_S = 5.0  # a finished job's id is safe to submit again this long after it ended
PACKAGES = ("selfplay", "actors", "learner")  # shipped with every job, so the cluster runs this code
RESULT = "selfplay-scale-result: "  # marks the scale job's answer in its log


class JobError(RuntimeError):
    """A job could not be submitted, found or stopped; the message says what to do."""


def job_address(address: str | None) -> str:
    """--address, else RAY_API_SERVER_ADDRESS, else an http RAY_ADDRESS, else the local dashboard."""
    env = os.environ.get("RAY_ADDRESS", "")
    return (
        address
        or os.environ.get("RAY_API_SERVER_ADDRESS")
        or (env if env.startswith("http") else DEFAULT_ADDRESS)
    )


def client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    url = job_address(address)
    try:
        return JobSubmissionClient(url)
    except ConnectionError as err:
        raise JobError(f"no Ray job server at {url}: {err}") from None


# Set by Ray's job supervisor for a job's entrypoint (ray/_private/runtime_env/constants.py).
JOB_ENV_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def leave_job_working_dir(out_dir: str) -> str:
    """Inside a Ray job, move this process out of the job's working_dir into the run's
    storage `out_dir` (made absolute, created); returns the absolute out_dir (`out_dir`
    itself outside a job, where nothing changes).

    Ray 2.60 unpacks a job's working_dir afresh, deleting the copy first, whenever a worker
    with the job's runtime env starts on a node (runtime_env/working_dir.py: `overwrite=True`),
    so the directory a job's entrypoint was started in is deleted under it within seconds of
    its first task. Every later os.getcwd() or relative path then fails with a bare "[Errno
    2] No such file or directory" (importing transformers does one). The config, the one file
    read from the working_dir, is loaded before this."""
    if JOB_ENV_VAR not in os.environ:
        return out_dir
    path = Path(out_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    os.chdir(path)
    return str(path)


def check_name(name: str) -> str:
    if not RUN_NAME.fullmatch(name):  # the whole name (a `$` let 'demo\n' through)
        raise ConfigError(
            f"--name: {name!r} must be letters, digits, '_', '.' or '-' (a run directory, "
            "Ray namespace and job id)"
        )
    return name


def runtime_env(working_dir: str, env_vars: dict[str, str], pip: list[str], image: str | None) -> dict:
    """The job's runtime env: this checkout's packages (py_modules), the run's resolved
    config (working_dir), env vars, and either pip requirements or a container image."""
    import importlib

    env: dict = {
        "working_dir": working_dir,
        "py_modules": [str(Path(importlib.import_module(p).__file__).parent) for p in PACKAGES],
        "excludes": ["__pycache__", "*.pyc"],
        # `selfplay stop` sends SIGTERM; the driver checkpoints before it exits
        "env_vars": {"PYTHONUNBUFFERED": "1", "RAY_JOB_STOP_WAIT_TIME_S": "120", **env_vars},
    }
    if pip:
        env["pip"] = pip
    if image:
        env["image_uri"] = image
    return env


def job_info(c, name: str):
    try:
        return c.get_job_info(name)
    except RuntimeError as err:
        if "does not exist" in str(err) or "404" in str(err):
            return None
        raise


def submit(
    config: str,
    name: str,
    overrides: list[str] = (),
    address: str | None = None,
    storage: str | None = None,
    env_vars: dict[str, str] | None = None,
    pip: list[str] = (),
    image: str | None = None,
) -> str:
    """Submit `config` as run `name`; returns the submission id (= name). The config is
    resolved and validated here, so a bad field fails before anything reaches the cluster;
    model.dtype auto is left for the job's driver to resolve on the cluster's hardware."""
    check_name(name)
    cfg = load_config(
        config, [*overrides, *([string_override("out_dir", storage)] if storage else [])], resolve=False
    )
    if not Path(cfg.out_dir).is_absolute():
        raise ConfigError(
            f"out_dir: {cfg.out_dir!r} is relative; a cluster run writes to storage every node "
            "mounts: pass --storage /ABSOLUTE/PATH"
        )
    c = client(address)
    info = job_info(c, name)
    if info is not None and str(info.status) not in TERMINAL:
        raise JobError(f"run {name} is {info.status}; stop it first (selfplay stop {name})")
    staging = Path(tempfile.mkdtemp(prefix=f"selfplay-{name}-"))
    save_config(cfg, staging / "run.yaml")
    job = {
        "entrypoint": f"python -m selfplay.cli run run.yaml --name {name}",
        "submission_id": name,
        "runtime_env": runtime_env(str(staging), env_vars or {}, list(pip), image),
        "metadata": {"selfplay_run": name, "config": str(config), "out_dir": cfg.out_dir},
    }
    if info is None:
        return c.submit_job(**job)
    return submit_reusing_id(c, job, ended_at=(info.end_time or 0) / 1000)


def submit_reusing_id(c, job: dict, ended_at: float, timeout_s: float = 60) -> str:
    """Submit under the id of a job that ended at `ended_at` (epoch s): delete that job
    (its run stays on storage), then submit. Ray (2.60) watches a job until its supervisor
    actor has gone, polling every second, and a new job under the same id before then is
    marked failed by the old job's watcher; so the old job must have been over for a few
    seconds first. An id still taken right after the delete is retried."""
    time.sleep(max(0.0, ended_at + REUSE_AFTER_S - time.time()))
    c.delete_job(job["submission_id"])
    deadline = time.time() + timeout_s
    while True:
        try:
            return c.submit_job(**job)
        except RuntimeError as err:
            if "already exists" not in str(err) or time.time() > deadline:
                raise
            time.sleep(1)


def existing_job(c, name: str, address: str | None):
    """The run's job info; a run with no job is an error naming the job server."""
    info = job_info(c, name)
    if info is None:
        raise JobError(f"no job for run {name} at {job_address(address)}")
    return info


def status(name: str, address: str | None = None) -> dict:
    info = existing_job(client(address), name, address)
    return {
        "run": name,
        "status": str(info.status),
        "message": info.message,
        "start_time": info.start_time,
        "end_time": info.end_time,
        "entrypoint": info.entrypoint,
        "out_dir": (info.metadata or {}).get("out_dir"),
    }


def logs(name: str, address: str | None = None) -> str:
    return client(address).get_job_logs(name)


def follow(name: str, address: str | None = None, out=None) -> str:
    """Stream the job's logs until it ends; returns its final status."""
    import sys

    out = out or sys.stdout
    c = client(address)

    async def tail():
        async for lines in c.tail_job_logs(name):
            out.write(lines)
            out.flush()

    asyncio.run(tail())
    return wait(c, name, timeout_s=60)


def wait(c, name: str, timeout_s: float, until: set[str] = TERMINAL) -> str:
    """Poll the job's status until it is one of `until` or timeout_s passed; returns it."""
    deadline = time.time() + timeout_s
    while True:
        state = str(c.get_job_status(name))
        if state in until or time.time() > deadline:
            return state
        time.sleep(0.5)


def stop(name: str, address: str | None = None, timeout_s: float = 180) -> str:
    """Stop the run's job: the driver ends at its next step, checkpoints and exits (Ray
    kills it after RAY_JOB_STOP_WAIT_TIME_S, 120 s); its actors go with it. Returns the
    job's status, which is not terminal if it did not end within timeout_s. A resubmit
    under the same name resumes from the newest checkpoint."""
    c = client(address)
    existing_job(c, name, address)
    c.stop_job(name)
    return wait(c, name, timeout_s)


def scale(name: str, generators: int, address: str | None = None, timeout_s: float = 600) -> dict:
    """Resize run `name`'s generator pool while it trains, from outside the cluster: a
    short job on the cluster asks the run's controller (scale_connected) and prints the
    pool's state as JSON, which is returned."""
    check_scale(generators, timeout_s)
    c = client(address)
    info = job_info(c, name)
    if info is None or str(info.status) != "RUNNING":
        raise JobError(
            f"run {name} is not running at {job_address(address)} "
            f"({'no job' if info is None else info.status})"
        )
    job = c.submit_job(
        entrypoint=f"python -m selfplay.cli scale {name} --generators {generators} --in-cluster "
        f"--timeout {timeout_s}",
        submission_id=f"{name}-scale-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
        runtime_env=runtime_env(tempfile.mkdtemp(prefix="selfplay-scale-"), {}, [], None),
    )
    state = wait(c, job, timeout_s + 120)
    output = c.get_job_logs(job)
    results = [line[len(RESULT) :] for line in output.splitlines() if line.startswith(RESULT)]
    if state != "SUCCEEDED" or not results:
        raise JobError(f"scaling {name} to {generators} {state.lower()}:\n{output[-3000:]}")
    return json.loads(results[-1])


def check_scale(generators: int, timeout_s: float) -> None:
    """A pool keeps generator-0, and new generators need time to start: one-line errors
    before anything is submitted (a job was, which failed in the controller, and its traceback
    came back)."""
    if generators < 1:
        raise JobError(f"--generators: at least 1 (generator-0 stays), got {generators}")
    if not timeout_s > 0:
        raise JobError(f"--timeout: must be > 0 seconds, got {timeout_s}")


def scale_connected(name: str, generators: int, timeout_s: float = 600) -> dict:
    """The same from a process already connected to the run's Ray cluster (ray.init)."""
    import ray

    check_scale(generators, timeout_s)
    try:
        controller = ray.get_actor("controller", namespace=name)
    except ValueError:
        raise JobError(f"run {name} has no controller in this Ray cluster (is it running?)") from None
    pool = ray.get(controller.scale.remote(generators, timeout_s))
    return {
        "run": name,
        "generators": {
            n: {k: s[k] for k in ("version", "checksum", "node_id", "sent")}
            for n, s in pool["generators"].items()
        },
        "retired": [{k: s[k] for k in ("id", "sent", "failed") if k in s} for s in pool["retired"]],
    }
