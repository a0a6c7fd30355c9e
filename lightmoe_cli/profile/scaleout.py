"""Where calibration shards run: in this process (the model already loaded), in local worker processes, or as
Ray tasks on a cluster. Workers load the model themselves from its folder (once per process), with
`device_map`/`max_memory` when it does not fit one device; results come back as plain tensors and are merged in
shard order by the caller, so the statistics do not depend on where or how many workers ran.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from lightmoe_cli.errors import LightMoEError


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads the model: a folder or cached hub id, and how to place it."""

    name: str
    dtype: str = "float32"
    device: str = "cpu"
    device_map: str | None = None  # "auto": accelerate places layers over devices, CPU and disk
    max_memory: dict[str, str] | None = None  # device -> size, e.g. {"cpu": "200MiB"}
    offload_folder: str | None = None  # where layers placed on "disk" live
    threads: int | None = None  # torch threads per worker


@dataclass(frozen=True)
class ShardJob:
    """One shard's work, self-contained: its token windows (tokenised once by the caller), not the recipe."""

    task: str
    index: int
    count: int
    windows: list[list[int]]
    settings: dict  # ProfileSettings as a dict
    quota: int
    max_tokens: int
    pad_id: int


_LOADED: dict = {}


def _load(spec: ModelSpec):
    key = asdict(spec).__repr__()
    if key not in _LOADED:
        import torch

        from lightmoe_cli.loading import load_model_and_tokenizer
        from lightmoe_cli.models import get_adapter

        if spec.threads:
            torch.set_num_threads(spec.threads)
        folder = f"{spec.offload_folder}/worker-{os.getpid()}" if spec.offload_folder else None  # one per process
        model, tok = load_model_and_tokenizer(spec.name, device=spec.device, dtype=spec.dtype,
                                              device_map=spec.device_map, max_memory=spec.max_memory,
                                              offload_folder=folder)
        _LOADED.clear()
        _LOADED[key] = (model, tok, get_adapter(model).moe_layers(model))
    return _LOADED[key]


def run_job(spec: ModelSpec, job: ShardJob, worker: str = ""):
    """A worker's entry point: load (or reuse) the model and profile one shard."""
    from lightmoe_cli.profile.settings import ProfileSettings
    from lightmoe_cli.profile.shards import Shard, profile_shard

    model, _, layers = _load(spec)
    return profile_shard(model, layers, job.windows, Shard(job.task, job.index, job.count),
                         ProfileSettings(**job.settings), job.quota, job.max_tokens, job.pad_id,
                         worker=worker or f"pid {os.getpid()}")


def _local_job(args):
    spec, job = args
    return run_job(spec, job)


def run_local(spec: ModelSpec, jobs: list[ShardJob], workers: int) -> Iterator:
    """Jobs on `workers` local processes (spawned: no fork of a process holding torch threads); results in
    completion order."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_local_job, (spec, j)) for j in jobs]
        for f in as_completed(futures):
            yield f.result()


def check_ray_address(address: str, timeout: float = 3.0) -> None:
    """A cluster address must answer within `timeout` seconds (ray.init would retry for much longer)."""
    if address in ("local", "auto"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host or hostport, int(port or 6379)), timeout=timeout):
            pass
    except (OSError, ValueError) as e:
        raise LightMoEError(f"cannot reach a Ray cluster at {address} ({e}): check the address, or run without "
                            "--ray-address to use local processes") from None


@contextmanager
def ray_session(address: str, num_cpus: int) -> Iterator:
    """The `ray` module, connected to the cluster at `address` ("local": a local Ray with `num_cpus` CPUs) for the
    block, and disconnected after it if this call connected. Profile shards and eval bundles both run here."""
    try:
        import ray
    except ImportError:
        raise LightMoEError("--ray-address needs Ray: pip install 'lightmoe[ray]' (or drop --ray-address to use "
                            "local processes)") from None
    check_ray_address(address)
    started = not ray.is_initialized()
    if started:
        if address == "local":
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def run_ray(spec: ModelSpec, jobs: list[ShardJob], workers: int, address: str) -> Iterator:
    """Jobs as Ray tasks (`address` "local": a local Ray with `workers` CPUs); results in completion order."""
    with ray_session(address, workers) as ray:
        remote = ray.remote(num_cpus=1)(run_job)
        pending = [remote.remote(spec, j) for j in jobs]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
