"""Ray runtime: a pool of ``ClientWorker`` actors, and a ``Driver`` actor running the round loop.

Each actor holds ONE long-lived Lightning module and trainer and reads the client data from
the on-disk data cache itself. A client's state travels with its turn as a handle (``store``):
an ObjectRef owned by the driver (memory store) or a version of a file the worker reads and
writes (disk store), so any actor can train any client, a dead actor loses nothing, and
retrying its turn reproduces the result bit for bit. The global payload goes out once per
round as one object of numpy buffers (zero-copy on the workers).
"""
from __future__ import annotations

import logging
import math
import os
import warnings
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import ray
import torch
from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..errors import ConfigError, RunInterrupted, RunStopped
from ..serialize import umask
from ..models import model_bytes
from ..store import MODEL_COPIES, DiskIO, MemoryIO
from .cluster import connected

log = logging.getLogger("pflalign.ray")
IN_FLIGHT = 2  # batches of turns queued at each worker actor
BATCHES_PER_SLOT, MAX_BATCH, BATCH_BYTES = 1, 32, 256 * 2**20  # see RayRuntime._batches
TURN_LOG_ENV = "PFLALIGN_TURN_LOG"  # a file: each worker appends which node trains which client (off by default)


def log_turns(path: str, rnd: int, clients: list) -> None:
    """One JSON line per training turn (round, client, host, Ray node id): where a multi-node
    cluster ran what (slurm/README.md, tests/test_slurm_multinode.py); it changes no result."""
    import json
    import socket

    node, host = ray.get_runtime_context().get_node_id(), socket.gethostname()
    with open(path, "a") as f:
        f.write("".join(json.dumps({"round": rnd + 1, "client": int(c), "host": host, "node": node}) + "\n"
                        for c in clients))


def to_numpy(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy()
    if isinstance(obj, dict):
        return {k: to_numpy(v) for k, v in obj.items()}
    return obj


def to_torch(obj: Any, copy: bool = False) -> Any:
    """numpy buffers -> tensors: read-only views of the object store, or writable copies."""
    if isinstance(obj, np.ndarray):
        if copy:
            return torch.from_numpy(np.array(obj))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "non-writable array": we never write
            return torch.from_numpy(obj)
    if isinstance(obj, dict):
        return {k: to_torch(v, copy) for k, v in obj.items()}
    return obj


@ray.remote
class WorkerActor:
    """Runs a batch of turns per task: Ray's per-task cost (submission, scheduling, the reply)
    is paid once per batch, not once per turn. Tensors cross the object store as numpy buffers:
    zero-copy reads and ~10x cheaper to serialize than torch's pickling of the same tensors."""

    def __init__(self, cfg, io, mask: int):
        os.umask(mask)  # see connect(): Ray's processes run under 077, what a run writes under the user's
        from ..client import ClientWorker  # Lightning: imported by the workers only, not by the driver

        if ray.get_gpu_ids():
            cfg.train.accelerator = "gpu"
        self.worker = ClientWorker(cfg, None, io)  # its data: from the on-disk cache, not a pickled copy

    def train(self, rnd, payload, clients, fault, separate, *handles):
        """Train ``clients`` from their state ``handles`` (refs are resolved by Ray before the task
        starts). ``separate``: return the uploads, then each new state as its own object, so a
        memory-store state stays in the object store under its own ref."""
        if fault:
            os._exit(1)  # fault injection (ray.fault_round): die mid-turn, like an OOM kill
        if os.environ.get(TURN_LOG_ENV):
            log_turns(os.environ[TURN_LOG_ENV], rnd, clients)
        payload, uploads, states = to_torch(payload), [], []
        for client_id, handle in zip(clients, handles):
            upload, state = self.worker.train(client_id, rnd, payload, to_torch(handle, copy=True))
            upload.data = to_numpy(upload.data)
            uploads.append(upload)
            states.append(to_numpy(state))
        return [uploads, *states] if separate else list(zip(uploads, states))

    def evaluate(self, rnd, payload, clients, fault, separate, *handles):
        payload = to_torch(payload)
        return [self.worker.evaluate(c, rnd, payload, to_torch(h, copy=True)) for c, h in zip(clients, handles)]

    def evaluate_new(self, rnd, payload, clients, fault, separate, *handles):
        """Held-out clients, each served as a newcomer from the payload alone (no state)."""
        payload = to_torch(payload)
        return [self.worker.evaluate_new(c, rnd, payload) for c in clients]


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


def new_worker(cfg, io: MemoryIO | DiskIO) -> Any:
    """A WorkerActor; it imports Lightning and maps its data while the caller goes on."""
    rc = cfg.ray
    return WorkerActor.options(num_cpus=rc.num_cpus, num_gpus=rc.num_gpus).remote(cfg, io, umask())


class RayRuntime:
    def __init__(self, cfg, data, io: MemoryIO | DiskIO | None = None, actors: list | None = None):
        """``actors``: a pool already started (``run_on_ray`` starts it with the driver), else one
        that fits the cluster is started here."""
        self.cfg, self.io = cfg, io or MemoryIO()
        # What a turn costs, roughly (see _batches): training, its samples plus about two
        # minibatches' worth of fixed work; an evaluation (forward passes only), mostly fixed work;
        # a held-out client's (evaluate_new), its adaptation epochs.
        train_cost = data.train_sizes() + 2 * cfg.train.batch_size
        self.cost = {"train": train_cost, "evaluate": np.ones(data.num_clients),
                     "evaluate_new": 1 + cfg.eval.adapt_epochs * train_cost}
        # A training batch's uploads (a model each) and memory-store states (up to MODEL_COPIES
        # models each) sit in the worker until the batch ends: at most BATCH_BYTES of them.
        turn_bytes = model_bytes(cfg.model, data.input_shape, data.num_classes) * (
            1 + (MODEL_COPIES if self.io.kind == "memory" else 0))
        self.max_turns = {"train": max(1, min(MAX_BATCH, BATCH_BYTES // turn_bytes)), "evaluate": MAX_BATCH,
                          "evaluate_new": MAX_BATCH}
        self.actors = actors or [new_worker(cfg, self.io) for _ in range(pool_size(cfg.ray, data.num_clients))]
        self.num_workers = len(self.actors)
        self.fault_pending = cfg.ray.fault_round is not None

    def _batches(self, method: str, jobs: list) -> Iterator[tuple[int, list]]:
        """Consecutive jobs in batches (start index, jobs) of about equal cost, about
        BATCHES_PER_SLOT per in-flight slot: Ray's per-task cost is paid a few times a round,
        every worker gets as much to do, and the aggregation streams batch by batch. At most
        ``max_turns`` a batch (a dead worker's batch is rerun whole; a batch's outputs wait in
        the worker's memory until it ends)."""
        costs = self.cost[method][[cid for cid, _ in jobs]]
        target = costs.sum() / (len(self.actors) * IN_FLIGHT * BATCHES_PER_SLOT)
        start, acc = 0, 0.0
        for i, cost in enumerate(costs):
            acc += cost
            if acc >= target or i + 1 - start == self.max_turns[method] or i + 1 == len(jobs):
                yield start, jobs[start:i + 1]
                start, acc = i + 1, 0.0

    def _dispatch(self, method: str, rnd: int, payload: dict, jobs: list, separate: bool = False) -> Iterator:
        """Run ``jobs`` on the pool in batches, IN_FLIGHT batches per actor; yield results in job order.

        With two batches queued at each actor, the next starts as soon as the last ends,
        without waiting for the driver's round trip. A result is yielded as soon as it and all
        earlier ones are in, so the caller reduces uploads while later clients still train. A
        dead actor is replaced (once per death) and its batches rerun.
        """
        payload_ref = ray.put(to_numpy(payload))
        queue = deque(self._batches(method, jobs))
        slots = deque(a for _ in range(IN_FLIGHT) for a in range(len(self.actors)))
        pending: dict = {}  # first return ref -> (batch, actor index, actor, all refs)
        ready: dict[int, Any] = {}
        next_out = 0
        while next_out < len(jobs):
            while queue and slots:
                batch = queue.popleft()
                a = slots.popleft()
                # fault_round counts from 1, like every round number users see (metrics.jsonl, logs)
                fault = method == "train" and self.fault_pending and rnd + 1 == self.cfg.ray.fault_round
                self.fault_pending &= not fault
                clients, handles = zip(*batch[1])
                refs = getattr(self.actors[a], method).options(num_returns=1 + len(clients) if separate else 1).remote(
                    rnd, payload_ref, list(clients), fault, separate, *handles)
                refs = refs if isinstance(refs, list) else [refs]
                pending[refs[0]] = (batch, a, self.actors[a], refs)
            (done,), _ = ray.wait(list(pending), num_returns=1)
            batch, a, actor, refs = pending.pop(done)
            try:
                first = ray.get(done)
            except (RayActorError, WorkerCrashedError) as e:
                if self.actors[a] is actor:  # its other queued batch finds the replacement in place
                    log.warning("worker %d died during round %d (%s of clients %d-%d): %s; replacing it and "
                                "rerunning its turns", a, rnd + 1, method, batch[1][0][0], batch[1][-1][0],
                                type(e).__name__)
                    ray.kill(actor, no_restart=True)
                    self.actors[a] = new_worker(self.cfg, self.io)
                queue.appendleft(batch)
                slots.append(a)
                continue
            slots.append(a)
            results = zip(first, refs[1:]) if separate else first
            for i, result in enumerate(results, start=batch[0]):
                if method == "train":
                    result[0].data = to_torch(result[0].data, copy=True)  # the algorithm may write to it
                ready[i] = result
            while next_out in ready:
                yield ready.pop(next_out)
                next_out += 1

    def train(self, rnd: int, payload: dict, jobs: list):
        """Yields (upload, state handle) per client. Memory store: the handle is a ref, the state
        stays in the object store; disk store: the worker wrote the file, the handle is tiny."""
        return self._dispatch("train", rnd, payload, jobs, separate=self.io.kind == "memory")

    def evaluate(self, rnd: int, payload: dict, jobs: list, new: bool = False) -> list:
        """``new``: the jobs are held-out clients, each served as a newcomer (no state)."""
        return list(self._dispatch("evaluate_new" if new else "evaluate", rnd, payload, jobs))

    def fetch_states(self, handles: list) -> list:
        """Memory-store handles -> states, one at a time (a checkpoint fetches only changed ones)."""
        return (to_torch(ray.get(h), copy=True) if isinstance(h, ray.ObjectRef) else h for h in handles)

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []


@ray.remote(num_cpus=0)
class Driver:
    """Runs the whole experiment (round loop, aggregation, callbacks) inside the cluster."""

    def __init__(self, mask: int):
        os.umask(mask)  # see connect()

    def run(self, cfg, callbacks, run_dir: str, snapshot: dict | None, io: MemoryIO | DiskIO, actors: list) -> str:
        from ..experiment import prepare, run_federation

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        data = prepare(cfg)
        return str(run_federation(cfg, data, Path(run_dir), snapshot, callbacks, RayRuntime(cfg, data, io, actors)))


def _rounds_done(run_dir: Path) -> int:
    try:
        return len((run_dir / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def run_on_ray(cfg, data, callbacks, open_run: Callable[[], tuple[Path, dict | None]]) -> Path:
    """The ``runtime=ray`` entry point: the driver actor runs on this node (its files land here).

    ``open_run`` makes (or reopens) the run directory once the cluster is known to fit the
    request, so a request it cannot serve leaves nothing behind. The worker pool starts here,
    alongside the driver: both import their libraries and load the data at the same time.
    """
    with connected(cfg.ray):
        return _run_driver(cfg, data, callbacks, open_run)


def _run_driver(cfg, data, callbacks, open_run: Callable[[], tuple[Path, dict | None]]) -> Path:
    """The run dir, the driver and the pool, on a connected cluster; the actors end with the run."""
    from ..experiment import resume_hint, state_io

    driver, actors = None, []
    try:
        num_workers = pool_size(cfg.ray, data.num_clients)  # fail fast, before any actor starts
        run_dir, snapshot = open_run()
        io = state_io(cfg, data, run_dir)
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        driver = Driver.options(scheduling_strategy=here).remote(umask())
        actors = [new_worker(cfg, io) for _ in range(num_workers)]
        try:
            return Path(ray.get(driver.run.remote(cfg, callbacks, str(run_dir), snapshot, io, actors)))
        except RayTaskError as e:
            if isinstance(e.cause, Exception):
                raise e.cause from None
            raise
        except RayActorError as e:
            why = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise RunStopped(f"the driver actor died at round {_rounds_done(run_dir) + 1} ({why}); "
                             f"run dir {run_dir}; {resume_hint(run_dir)}") from None
        except KeyboardInterrupt:
            raise RunInterrupted(f"interrupted at round {_rounds_done(run_dir) + 1}; {resume_hint(run_dir)}") from None
    finally:
        for actor in [driver, *actors]:  # on a shared cluster they would go on running
            if actor is not None:
                ray.kill(actor, no_restart=True)
