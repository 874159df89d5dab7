"""A real multi-node Ray cluster on this machine, for tests and demos: one head node and
N worker nodes, each its own raylet started by `ray start --block` in its own process
group, all asked for 127.0.0.1 (Ray moves a node to the machine's address, and its gRPC
ports and metrics exporter listen beyond loopback: README, Security defaults), with
distinct custom resources (the head holds `learner`, each worker `generator`), token
authentication on, and the dashboard (and so the job server) bound to 127.0.0.1.

    python cluster/local_cluster.py up --workers 2 --state /tmp/selfplay-cluster
    eval "$(python cluster/local_cluster.py env --state /tmp/selfplay-cluster)"
    selfplay submit configs/tictactoe.yaml --name demo --follow
    python cluster/local_cluster.py down --state /tmp/selfplay-cluster

`down` stops only this cluster's processes (unlike `ray stop`, which kills every Ray
process of the user, a test session's own local Ray included).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from selfplay.files import private_token
from selfplay.net import free_port

HOST = "127.0.0.1"
BIN = Path(sys.executable).parent  # this environment's `ray` and `python`: jobs run `python` from PATH
HEAD_RESOURCES = {"learner": 1}  # the learner's node type (learner.resources in the config)
WORKER_RESOURCES = {"generator": 4}  # room for four generators per worker node


def node_ports() -> dict[str, int]:
    """Ports that must differ between raylets sharing one host."""
    return {
        name: free_port()
        for name in (
            "object-manager-port",
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "runtime-env-agent-port",
            "metrics-export-port",
        )
    }


def auth_env(state: dict) -> dict[str, str]:
    """What a client (CLI, JobSubmissionClient, ray.init) needs to talk to this cluster."""
    return {
        "RAY_API_SERVER_ADDRESS": state["dashboard_url"],
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": state["token_path"],
    }


def start_node(args: list[str], env: dict, log: Path) -> int:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                str(BIN / "ray"),
                "start",
                "--block",
                "--disable-usage-stats",
                f"--node-ip-address={HOST}",
                "--min-worker-port=0",
                "--max-worker-port=0",
                "--node-manager-port=0",
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    return proc.pid


def alive_nodes(state: dict) -> list[dict]:
    token = Path(state["token_path"]).read_text().strip()
    request = urllib.request.Request(
        f"{state['dashboard_url']}/api/v0/nodes?limit=100", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=5) as r:
        nodes = json.load(r)["data"]["result"]["result"]
    return [n for n in nodes if n["state"] == "ALIVE"]


def up(state_dir: Path, workers: int, cpus_per_node: int, timeout: float = 120) -> dict:
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if state_dir.stat().st_uid != os.getuid():
        raise SystemExit(f"{state_dir}: not yours; the cluster's token would be readable by its owner")
    state_dir.chmod(0o700)
    if (state_dir / "cluster.json").exists():
        raise SystemExit(f"{state_dir}: a cluster is already recorded there; run `down` first")
    token_path = state_dir / "auth_token"
    token_path.unlink(missing_ok=True)
    private_token(token_path)  # a fresh one, 0600
    gcs_port, dashboard_port, client_port = free_port(), free_port(), free_port()
    state = {
        "gcs_address": f"{HOST}:{gcs_port}",
        "dashboard_url": f"http://{HOST}:{dashboard_port}",
        "client_address": f"ray://{HOST}:{client_port}",
        "token_path": str(token_path),
        # Ray's sockets live under its temp dir, and a unix socket path has at most 107 bytes
        "temp_dir": tempfile.mkdtemp(prefix="selfplay-ray-", dir="/tmp"),
        "nodes": [],
    }
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_path),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        env.pop(var, None)
    try:
        ports = node_ports()
        pid = start_node(
            [
                "--head",
                f"--port={gcs_port}",
                f"--dashboard-port={dashboard_port}",
                f"--dashboard-host={HOST}",
                "--include-dashboard=true",
                f"--ray-client-server-port={client_port}",
                f"--temp-dir={state['temp_dir']}",
                f"--num-cpus={cpus_per_node}",
                f"--resources={json.dumps(HEAD_RESOURCES)}",
                *(f"--{k}={v}" for k, v in ports.items()),
            ],
            env,
            state_dir / "head.log",
        )
        state["nodes"].append(
            {
                "pid": pid,
                "started": started(pid),
                "role": "head",
                "resources": HEAD_RESOURCES,
                "metrics_port": ports["metrics-export-port"],
            }
        )
        _save(state_dir, state)
        _wait(state, 1, timeout)
        for i in range(workers):
            ports = node_ports()
            pid = start_node(
                [
                    f"--address={state['gcs_address']}",
                    f"--num-cpus={cpus_per_node}",
                    f"--resources={json.dumps(WORKER_RESOURCES)}",
                    "--include-log-monitor=false",
                    *(f"--{k}={v}" for k, v in ports.items()),
                ],
                env,
                state_dir / f"worker-{i}.log",
            )
            state["nodes"].append(
                {
                    "pid": pid,
                    "started": started(pid),
                    "role": f"worker-{i}",
                    "resources": WORKER_RESOURCES,
                    "metrics_port": ports["metrics-export-port"],
                }
            )
            _save(state_dir, state)
            _wait(state, 2 + i, timeout)
    except BaseException:
        down(state_dir)
        raise
    return state


def _save(state_dir: Path, state: dict) -> None:
    (state_dir / "cluster.json").write_text(json.dumps(state, indent=2))


def _wait(state: dict, n_nodes: int, timeout: float) -> None:
    """Until n_nodes are alive; a node process that died is an error naming its log."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for node in state["nodes"]:
            if not running(node["pid"]):
                raise RuntimeError(f"ray node {node['role']} exited; see its log beside cluster.json")
        try:
            if len(alive_nodes(state)) >= n_nodes:
                return
        except OSError:
            pass  # the dashboard is not up yet
        time.sleep(0.5)
    raise TimeoutError(f"{n_nodes} ray nodes not alive after {timeout:.0f} s")


def started(pid: int) -> float | None:
    """When process `pid` started (None: gone): with its pid, what names one process for
    good (a pid is reused once its process is gone)."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None


def recorded(node: dict) -> bool:
    """Whether `node`'s pid still names the process cluster.json recorded: a node gone since
    (a crash, a reboot) left its pid to any other process, which `down` killed. With no
    process of that pid, its process group (the node's Ray processes, if any live) is still
    the node's: a pid in use as a group id is not given to a new process."""
    now = started(node["pid"])
    return now is None or now == node.get("started", now)


def running(pid: int) -> bool:
    """Whether process `pid` runs: not gone, and not a zombie (procs.gone: a node process that
    exited is one until reaped, and nothing here reaps it; signal 0 still reached it, so a
    node that died at start was waited for until the timeout, its log not named)."""
    import psutil

    from selfplay.procs import gone

    try:
        return not gone(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return False


def _send(pid: int, sig: int, group: bool = True) -> bool:
    """Deliver `sig` (0: only look) to a process group, or to one process; False if gone."""
    try:
        (os.killpg if group else os.kill)(pid, sig)
    except (ProcessLookupError, PermissionError):  # gone, or another user's now: not ours
        return False
    return True


def _left(pid: int) -> bool:
    """Whether anything of node `pid`'s process group is left. A node this process started
    (`up` and `down` in one program, as a test's) that exited is collected first: as a
    zombie it still took signal 0, and `down` waited out its whole timeout."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return _send(pid, 0)


def down(state_dir: Path, timeout: float = 5) -> None:
    """SIGTERM every node's process group (workers first), then SIGKILL what is left, and
    job drivers of this cluster, which Ray starts in process groups of their own."""
    path = state_dir / "cluster.json"
    if not path.exists():
        return
    state = json.loads(path.read_text())
    nodes = [n for n in state["nodes"] if recorded(n)]
    for node in reversed(nodes):
        _send(node["pid"], signal.SIGTERM)
    deadline = time.time() + timeout
    while time.time() < deadline and any(_left(n["pid"]) for n in nodes):
        time.sleep(0.2)
    for pid in [n["pid"] for n in nodes] + _drivers(state["gcs_address"].rsplit(":", 1)[1]):
        _send(pid, signal.SIGKILL)
    path.unlink()


def _drivers(gcs_port: str) -> list[int]:
    """Processes whose RAY_ADDRESS is this cluster's GCS (by its port: a job's driver may
    name the node by another address): the drivers of its jobs; never this process or its
    ancestors (a shell where the person exported RAY_ADDRESS to reach the cluster, and
    this command run from it)."""
    mine = set()
    pid = os.getpid()
    while pid > 1 and pid not in mine:
        mine.add(pid)
        try:
            pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in mine:
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(v.startswith(b"RAY_ADDRESS=") and v.endswith(f":{gcs_port}".encode()) for v in env):
            found.append(int(proc.name))
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["up", "down", "env"])
    p.add_argument(
        "--state", default="/tmp/selfplay-cluster", help="folder for the cluster's state, token and logs"
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cpus-per-node", type=int, default=2, help="logical CPUs each node offers")
    args = p.parse_args(argv)
    state_dir = Path(args.state).resolve()
    if args.command == "up":
        state = up(state_dir, args.workers, args.cpus_per_node)
        print(json.dumps(state, indent=2))
    elif args.command == "down":
        down(state_dir)
    else:
        state = json.loads((state_dir / "cluster.json").read_text())
        print("\n".join(f"export {k}={v}" for k, v in auth_env(state).items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
