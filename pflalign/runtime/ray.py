"""Ray runtime: a pool of ``ClientWorker`` actors, and a ``Driver`` actor running the round loop.

Each actor holds ONE long-lived Lightning module and trainer; client state travels with the
turn as an ObjectRef owned by the driver, so any actor can train any client, a dead actor
loses nothing, and retrying its turn reproduces the result bit for bit. The global payload
goes out once per round as one object of numpy buffers (zero-copy on the workers).
"""
from __future__ import annotations

import logging
import math
import os
import warnings
from collections import deque
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import ray
import torch
from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..client import ClientWorker
from ..errors import ConfigError

log = logging.getLogger("pflalign.ray")
DEFAULT_TEMP_DIR = "/tmp/pflalign-ray"


def to_numpy(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy()
    if isinstance(obj, dict):
        return {k: to_numpy(v) for k, v in obj.items()}
    return obj


def to_torch(obj: Any) -> Any:
    """Wrap numpy buffers without copying (read-only views of the object store)."""
    if isinstance(obj, np.ndarray):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "non-writable array": we never write
            return torch.from_numpy(obj)
    if isinstance(obj, dict):
        return {k: to_torch(v) for k, v in obj.items()}
    return obj


@ray.remote
class WorkerActor:
    def __init__(self, cfg, data):
        if ray.get_gpu_ids():
            cfg.train.accelerator = "gpu"
        self.worker = ClientWorker(cfg, data)

    def train(self, client_id, rnd, payload, state, fault=False):
        if fault:
            os._exit(1)  # fault injection (ray.fault_round): die mid-turn, like an OOM kill
        return self.worker.train(client_id, rnd, to_torch(payload), state)

    def evaluate(self, client_id, rnd, payload, state):
        return self.worker.evaluate(client_id, rnd, to_torch(payload), state)


def pool_size(rc, num_clients: int) -> int:
    """Workers that fit the cluster; a clear error instead of actors pending forever."""
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    fits = math.inf
    if rc.num_cpus > 0:
        fits = math.floor(cpus / rc.num_cpus + 1e-9)
    if rc.num_gpus > 0:
        fits = min(fits, math.floor(gpus / rc.num_gpus + 1e-9))
    have = f"the cluster has {cpus:g} CPUs and {gpus:g} GPUs"
    if rc.num_workers and rc.num_workers > fits:
        raise ConfigError(f"ray.num_workers={rc.num_workers} workers of ray.num_cpus={rc.num_cpus:g}, "
                          f"ray.num_gpus={rc.num_gpus:g} need more than {have}")
    if fits < 1:
        raise ConfigError(f"one worker needs ray.num_cpus={rc.num_cpus:g}, ray.num_gpus={rc.num_gpus:g}; {have}")
    if fits == math.inf and not rc.num_workers:
        raise ConfigError("ray.num_cpus=0 and ray.num_gpus=0: set ray.num_workers explicitly")
    return rc.num_workers or int(min(fits, num_clients))


class RayRuntime:
    def __init__(self, cfg, data):
        self.cfg = cfg
        self.num_workers = pool_size(cfg.ray, len(data.clients))
        self.data_ref = ray.put(data)
        self.actors = [self._new_actor() for _ in range(self.num_workers)]
        self.fault_pending = cfg.ray.fault_round is not None

    def _new_actor(self):
        rc = self.cfg.ray
        return WorkerActor.options(num_cpus=rc.num_cpus, num_gpus=rc.num_gpus).remote(self.cfg, self.data_ref)

    def _dispatch(self, method: str, rnd: int, payload: dict, jobs: list, num_returns: int) -> Iterator:
        """Run ``jobs`` on the pool (one in flight per actor); yield results in job order.

        A result is yielded as soon as it and all earlier ones are in, so the caller reduces
        uploads while later clients still train. A dead actor is replaced and its job rerun.
        """
        payload_ref = ray.put(to_numpy(payload))
        queue, idle = deque(enumerate(jobs)), deque(range(len(self.actors)))
        pending: dict = {}  # first return ref -> (job index, job, actor index, all refs)
        ready: dict[int, Any] = {}
        next_out = 0
        while next_out < len(jobs):
            while queue and idle:
                i, (cid, state) = queue.popleft()
                a = idle.popleft()
                fault = method == "train" and self.fault_pending and rnd == self.cfg.ray.fault_round
                self.fault_pending &= not fault
                args = (cid, rnd, payload_ref, state) + ((fault,) if method == "train" else ())
                refs = getattr(self.actors[a], method).options(num_returns=num_returns).remote(*args)
                refs = refs if isinstance(refs, list) else [refs]
                pending[refs[0]] = (i, (cid, state), a, refs)
            (done,), _ = ray.wait(list(pending), num_returns=1)
            i, job, a, refs = pending.pop(done)
            try:
                first = ray.get(done)
            except (RayActorError, WorkerCrashedError) as e:
                log.warning("worker %d died during round %d (%s of client %d): %s; replacing it and "
                            "rerunning the turn", a, rnd + 1, method, job[0], type(e).__name__)
                ray.kill(self.actors[a], no_restart=True)
                self.actors[a] = self._new_actor()
                queue.appendleft((i, job))
                idle.append(a)
                continue
            idle.append(a)
            ready[i] = (first, refs[1]) if num_returns == 2 else first
            while next_out in ready:
                yield ready.pop(next_out)
                next_out += 1

    def train(self, rnd: int, payload: dict, jobs: list):
        """Yields (upload, state ref) per client: the state stays in the object store."""
        return self._dispatch("train", rnd, payload, jobs, 2)

    def evaluate(self, rnd: int, payload: dict, jobs: list) -> list:
        return list(self._dispatch("evaluate", rnd, payload, jobs, 1))

    def fetch_states(self, states: list) -> list:
        return [ray.get(s) if isinstance(s, ray.ObjectRef) else s for s in states]

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []


@ray.remote(num_cpus=0)
class Driver:
    """Runs the whole experiment (round loop, aggregation, callbacks) inside the cluster."""

    def run(self, cfg, callbacks, resume: str | None) -> str:
        from ..experiment import run_experiment

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        return str(run_experiment(cfg, callbacks, Path(resume) if resume else None))


def connect(rc) -> bool:
    """Join ``ray.address``/``$RAY_ADDRESS`` or start a local instance; True if we started one."""
    if ray.is_initialized():
        return False
    address = rc.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return True
    ray.init(num_cpus=rc.local_cpus, include_dashboard=rc.dashboard, _node_ip_address="127.0.0.1",
             _temp_dir=rc.temp_dir or DEFAULT_TEMP_DIR, log_to_driver=True)
    return True


def run_on_ray(cfg, callbacks, resume: Path | None = None) -> Path:
    """The ``runtime=ray`` entry point: the driver actor runs on this node (its files land here)."""
    started = connect(cfg.ray)
    try:
        pool_size(cfg.ray, cfg.data.num_clients)  # fail fast, before any actor starts
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        driver = Driver.options(scheduling_strategy=here).remote()
        try:
            return Path(ray.get(driver.run.remote(cfg, callbacks, str(resume) if resume else None)))
        except RayTaskError as e:
            if isinstance(e.cause, Exception):
                raise e.cause from None
            raise
    finally:
        if started:
            ray.shutdown()
