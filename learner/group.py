"""A learner group (`learner.num_workers` > 1): N ranks of one data-parallel learner, the
model sharded over them by FSDP2 (`Learner(sharded=True)`). Rank 0 is the LearnerActor,
whose LearnerService drives training and broadcasts as it does alone; ranks 1..N-1 are
`LearnerWorker` actors. `GroupLearner` makes the group look like one Learner to the
service: every call the ranks must make together (a step on the same batch, an export,
a checkpoint, a reference reset) goes to each worker first, runs on rank 0, and then
the workers' answers are awaited (a worker's error is raised).

The ranks meet on torch.distributed's default process group (gloo on CPUs, NCCL on GPUs)
through a TCP store that rank 0 hosts on `learner.sync_host` (127.0.0.1 for one
machine), at a port picked on rank 0's node before the ranks start. The batch travels to
the workers as an Arrow table through Ray; weights never do (each rank loads the model
directory itself)."""

from __future__ import annotations

import datetime

import ray
import torch.distributed as dist

from learner.learner import Learner
from selfplay import collective
from selfplay.config import LearnerConfig, ModelConfig
from selfplay.device import pick_device
from selfplay.net import free_port

TOGETHER = ("train_step", "export", "export_tensors", "save", "save_model", "reset_reference", "set_lr")


def join_group(group: dict, cfg: LearnerConfig) -> None:
    """Join the learner group's default process group as `group["rank"]` of
    `group["world"]`, at `group["address"]` (host:port; rank 0 hosts the store, listening on
    that host alone). gloo binds each rank's connections to its own address on the way to
    that host (collective.local_address: rank 0's is the host)."""
    host, port = group["address"].rsplit(":", 1)
    timeout = datetime.timedelta(seconds=cfg.ack_timeout_s)
    store = collective.store(host, int(port), group["rank"] == 0, cfg.ack_timeout_s)
    backend = {"backend": collective.pick_backend("auto", pick_device(cfg.device))}  # nccl on a GPU
    if backend["backend"] == "gloo":
        backend["pg_options"] = collective.gloo_options(collective.local_address(host), cfg.ack_timeout_s)
    dist.init_process_group(
        store=store, rank=group["rank"], world_size=group["world"], timeout=timeout, **backend
    )


@ray.remote(num_cpus=0)
def group_address(host: str) -> str:
    """host:port for a learner group's store, run on rank 0's node: `host` ("node": this
    node's address) and a port free there now."""
    if host == "node":
        host = ray.util.get_node_ip_address()
    return f"{host}:{free_port(host)}"


class GroupLearner:
    """Rank 0's Learner and the group's other ranks, as one Learner: attributes are rank
    0's (set ones too, e.g. the version the service bumps); the calls in TOGETHER run on
    every rank at once."""

    def __init__(self, learner: Learner, workers: list, transport):
        object.__setattr__(self, "learner", learner)
        object.__setattr__(self, "workers", workers)
        object.__setattr__(self, "transport", transport)

    def __getattr__(self, name: str):
        value = getattr(self.learner, name)
        if name in TOGETHER:
            return lambda *args: self._together(name, *args)
        return value

    def __setattr__(self, name: str, value) -> None:
        setattr(self.learner, name, value)

    def _together(self, method: str, *args):
        futures = [self.transport.call(w, "run", method, *args) for w in self.workers]
        try:
            return getattr(self.learner, method)(*args)
        finally:
            self.transport.get(futures)  # a worker's error is raised here


@ray.remote
class LearnerWorker:
    """Rank 1..N-1 of a learner group: a sharded Learner that makes the calls rank 0 makes."""

    def __init__(
        self,
        cfg: LearnerConfig,
        model_cfg: ModelConfig,
        model_path: str,
        seed: int,
        temperature: float,
        group: dict,
        resume_dir: str | None = None,
    ):
        join_group(group, cfg)
        self.learner = Learner(cfg, model_cfg, model_path, seed, temperature, sharded=True)
        if resume_dir:
            self.learner.load(resume_dir)

    def run(self, method: str, *args) -> None:
        """One of TOGETHER, as rank 0 makes it; its answer stays here (rank 0's is the
        group's)."""
        if method not in TOGETHER:
            raise ValueError(f"LearnerWorker.run: {method!r} is not a call the group makes together")
        getattr(self.learner, method)(*args)
