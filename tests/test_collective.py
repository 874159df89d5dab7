"""The collective weight broadcast (selfplay/collective.py) over real gloo groups: ranks are
threads of this process, each with its own group, as the learner and generators are
processes of their own in a run. NCCL needs GPUs: here only its choice and how its group is
made are tested."""

from __future__ import annotations

import os
import threading
import time

import psutil
import pytest
import torch
import torch.distributed as dist

from selfplay import collective


def weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "b.weight": torch.randn(3, 4, generator=g).to(torch.bfloat16),
        "a.bias": torch.arange(10, dtype=torch.float32),
        "c.big": torch.randn(300, generator=g),  # 1,200 bytes: alone in a 100-byte bucket
        "d.half": torch.randn(2, 2, generator=g).to(torch.float16),
    }


def test_manifest_names_each_tensor_in_name_order_with_dtype_and_shape():
    assert collective.manifest(weights()) == [
        ["a.bias", "float32", [10]],
        ["b.weight", "bfloat16", [3, 4]],
        ["c.big", "float32", [300]],
        ["d.half", "float16", [2, 2]],
    ]


def test_buckets_pack_in_order_up_to_the_size_and_a_larger_tensor_travels_alone():
    entries = collective.manifest(weights())  # 40, 24, 1200 and 8 bytes
    assert [collective.entry_bytes(e) for e in entries] == [40, 24, 1200, 8]
    assert collective.buckets(entries, 100) == [[0, 1], [2], [3]]
    assert collective.buckets(entries, 64) == [[0, 1], [2], [3]]
    assert collective.buckets(entries, 63) == [[0], [1], [2], [3]]
    assert collective.buckets(entries, 10_000) == [[0, 1, 2, 3]]
    with pytest.raises(ValueError, match="bucket_bytes must be > 0"):
        collective.buckets(entries, 0)


def test_auto_picks_nccl_on_a_gpu_learner_and_gloo_on_a_cpu_one(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert collective.pick_backend("auto", cpu) == "gloo"
    assert collective.pick_backend("gloo", gpu) == "gloo"  # asked for: host tensors over TCP
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    assert collective.pick_backend("auto", gpu) == "nccl"
    assert collective.pick_backend("nccl", gpu) == "nccl"


def test_nccl_buffers_go_on_the_learners_gpu_and_gloos_stay_on_the_host(monkeypatch):
    """A learner on cuda:1 (outside Ray, where every GPU is visible) sends from cuda:1, not
    from the process's current GPU; without an index (or under Ray's one visible GPU), the
    current one; gloo's buffers are host memory whatever the learner's device."""
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert collective.device_of("nccl", torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert collective.device_of("nccl", torch.device("cuda")) == torch.device("cuda", 0)
    assert collective.device_of("nccl") == torch.device("cuda", 0)
    assert collective.device_of("gloo", torch.device("cuda", 1)) == torch.device("cpu")
    rendezvous = collective.Rendezvous(
        "127.0.0.1", timeout_s=2, backend="nccl", device=torch.device("cuda", 3)
    )
    assert rendezvous.device == torch.device("cuda", 3)
    rendezvous.close()


def test_nccl_without_a_gpu_or_without_nccl_and_an_unknown_backend_are_refused(monkeypatch):
    with pytest.raises(
        ValueError, match="^learner.sync_backend: nccl sends from a GPU, but the learner trains on cpu$"
    ):
        collective.pick_backend("nccl", torch.device("cpu"))
    monkeypatch.setattr(dist, "is_nccl_available", lambda: False)  # as this CPU build of torch
    with pytest.raises(ValueError, match="built without NCCL"):
        collective.pick_backend("auto", torch.device("cuda", 0))
    with pytest.raises(ValueError, match="auto, gloo or nccl, got 'mpi'"):
        collective.pick_backend("mpi", torch.device("cpu"))


def test_an_nccl_group_is_made_with_blocking_waits_and_the_environment_is_restored(monkeypatch):
    """A broadcast's NCCL group is made while NCCL_ENV holds (a failure raises from wait()
    rather than ending the process) with the broadcast's timeout, under its prefix; the
    process's environment is as it was afterwards, a value set before kept."""
    made = {}

    class NcclOptions:
        _timeout = None

    class Group:  # torch's ProcessGroupNCCL (absent from a CPU build) takes these four
        Options = NcclOptions

        def __init__(self, store, rank, world, opts):
            made.update(env={k: os.environ.get(k) for k in collective.NCCL_ENV}, store=store)
            made.update(rank=rank, world=world, timeout=opts._timeout)

    monkeypatch.setattr(dist, "ProcessGroupNCCL", Group, raising=False)
    monkeypatch.setenv("TORCH_NCCL_BLOCKING_WAIT", "0")
    monkeypatch.delenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", raising=False)
    store = dist.HashStore()
    collective._group(store, "v7/", 2, 3, "127.0.0.1", 12.0, "nccl")
    assert made["env"] == collective.NCCL_ENV and (made["rank"], made["world"]) == (2, 3)
    assert made["timeout"].total_seconds() == 12.0
    made["store"].set("k", "x")  # the group's keys live under the broadcast's prefix
    assert not store.check(["k"]) and dist.PrefixStore("v7/", store).get("k") == b"x"
    assert os.environ["TORCH_NCCL_BLOCKING_WAIT"] == "0"
    assert "TORCH_NCCL_ASYNC_ERROR_HANDLING" not in os.environ


def test_a_manifest_with_an_unknown_dtype_or_a_bad_shape_is_refused():
    with pytest.raises(ValueError, match="dtype 'Tensor'"):
        collective.entry_bytes(["x", "Tensor", [2]])
    with pytest.raises(ValueError, match="shape \\[-1\\]"):
        collective.entry_bytes(["x", "float32", [-1]])


def run_receivers(rendezvous, prefix, world, entries, plan, ranks, timeout_s=10.0):
    """Each rank in `ranks` receives on a thread: {rank: tensors or the exception raised}."""
    got: dict[int, object] = {}

    def take(rank):
        try:
            got[rank] = collective.receive(rendezvous.address, prefix, rank, world, entries, plan, timeout_s)
        except Exception as err:  # noqa: BLE001 - the test reads it
            got[rank] = err

    threads = [threading.Thread(target=take, args=(r,)) for r in ranks]
    for t in threads:
        t.start()
    return got, threads


def test_every_rank_receives_exactly_the_tensors_sent_in_their_dtypes():
    sent = weights()
    entries = collective.manifest(sent)
    plan = collective.buckets(entries, 100)
    rendezvous = collective.Rendezvous("127.0.0.1", timeout_s=10)
    try:
        for version in (1, 2):  # a new group per version under the same store
            sent = {k: v + version for k, v in sent.items()}
            got, threads = run_receivers(rendezvous, f"v{version}/", 3, entries, plan, [1, 2])
            assert rendezvous.send(f"v{version}/", 3, sent, plan) == 1272
            for t in threads:
                t.join()
            for rank in (1, 2):
                assert sorted(got[rank]) == sorted(sent)
                for name, tensor in sent.items():
                    assert got[rank][name].dtype == tensor.dtype and torch.equal(got[rank][name], tensor)
    finally:
        rendezvous.close()


def test_the_store_and_the_groups_listen_on_the_host_given_only():
    entries = collective.manifest(weights())
    plan = collective.buckets(entries, 100)
    rendezvous = collective.Rendezvous("127.0.0.1", timeout_s=10)

    def listens() -> list[tuple[str, int]]:
        return [tuple(c.laddr) for c in psutil.Process().net_connections(kind="inet") if c.status == "LISTEN"]

    # the store: listening since the rendezvous was made, so apart from those sampled below
    assert {ip for ip, port in listens() if port == rendezvous.port} == {"127.0.0.1"}
    before = set(listens())  # this process's own (a Ray driver's, when a test before started Ray)
    listening = []
    try:
        got, threads = run_receivers(rendezvous, "v1/", 2, entries, plan, [1])
        sender = threading.Thread(target=rendezvous.send, args=("v1/", 2, weights(), plan))
        sender.start()
        while sender.is_alive():  # sample the sockets while the group is up
            listening += [ip for ip, port in listens() if (ip, port) not in before]
            time.sleep(0.001)
        sender.join()
        threads[0].join()
        assert isinstance(got[1], dict)
    finally:
        rendezvous.close()
    assert listening and set(listening) == {"127.0.0.1"}, set(listening)


def test_a_rank_binds_gloo_to_its_own_address_on_the_way_to_the_learner():
    """A receiver on another node bound its gloo device to the learner's address, which gloo
    refuses: every gloo broadcast across nodes waited out its timeout and fell back."""
    assert collective.local_address("127.0.0.1") == "127.0.0.1"
    learner = "192.0.2.10"  # TEST-NET-1 (RFC 5737), standing for another node's address
    if learner in psutil.net_if_addrs().__repr__():
        pytest.skip(f"{learner} is this machine's")
    with pytest.raises(RuntimeError, match="local"):
        collective.gloo_options(learner, 5)  # what the receiver did
    try:
        mine = collective.local_address(learner)
    except OSError:
        pytest.skip(f"no route to {learner} here")
    assert mine != learner and collective.gloo_options(mine, 5)._devices


def test_a_ranks_group_binds_gloo_through_local_address(monkeypatch):
    """What the group is made with: the rank's own address on the way to the learner
    (local_address), not the learner's (the helpers above were right while the group
    was made with the learner's)."""
    bound = []
    monkeypatch.setattr(collective, "local_address", lambda host: {"192.0.2.10": "10.9.8.7"}.get(host, host))
    monkeypatch.setattr(collective, "gloo_options", lambda host, timeout_s: bound.append(host))
    monkeypatch.setattr(dist, "ProcessGroupGloo", lambda store, rank, world, options: "group")
    assert collective._group(dist.HashStore(), "v1/", 1, 2, "192.0.2.10", 5.0) == "group"
    assert bound == ["10.9.8.7"]


def test_a_broadcast_that_fails_half_way_raises_everywhere_and_returns_no_tensors():
    """Rank 2 joins, takes the first bucket and leaves: the sender and the rank that stayed
    raise within the timeout, and neither has anything to load."""
    sent = weights()
    entries = collective.manifest(sent)
    plan = collective.buckets(entries, 100)
    assert len(plan) == 3
    rendezvous = collective.Rendezvous("127.0.0.1", timeout_s=3)
    try:
        got, threads = run_receivers(rendezvous, "v1/", 3, entries, plan, [1], timeout_s=3)
        quitter = threading.Thread(
            target=collective.receive, args=(rendezvous.address, "v1/", 2, 3, entries, plan[:1], 3)
        )
        quitter.start()
        start = time.monotonic()
        with pytest.raises(RuntimeError):
            rendezvous.send("v1/", 3, sent, plan)
        assert time.monotonic() - start < 30
        for t in (*threads, quitter):
            t.join()
        assert isinstance(got[1], RuntimeError), got[1]
    finally:
        rendezvous.close()


def test_a_rank_that_never_joins_fails_the_broadcast_within_the_timeout():
    entries = collective.manifest(weights())
    rendezvous = collective.Rendezvous("127.0.0.1", timeout_s=2)
    try:
        start = time.monotonic()
        with pytest.raises(RuntimeError):
            rendezvous.send("v1/", 2, weights(), collective.buckets(entries, 100))
        assert time.monotonic() - start < 20
    finally:
        rendezvous.close()
