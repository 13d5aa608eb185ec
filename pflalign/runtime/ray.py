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
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import ray
import torch
from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..serialize import umask
from ..store import DiskIO, MemoryIO
from ..errors import ConfigError, RunInterrupted, RunStopped

if TYPE_CHECKING:
    from ..config import RayConfig

log = logging.getLogger("pflalign.ray")
IN_FLIGHT = 2  # batches of turns queued at each worker actor
BATCHES_PER_SLOT, MAX_BATCH = 1, 32  # see RayRuntime._batches
DEFAULT_TEMP_DIR = f"/tmp/pflalign-ray-{os.getuid()}"  # per user: another user's would be refused


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
        # minibatches' worth of fixed work; an evaluation (forward passes only), mostly fixed work.
        self.cost = {"train": data.train_sizes() + 2 * cfg.train.batch_size, "evaluate": np.ones(data.num_clients)}
        self.actors = actors or [new_worker(cfg, self.io) for _ in range(pool_size(cfg.ray, data.num_clients))]
        self.num_workers = len(self.actors)
        self.fault_pending = cfg.ray.fault_round is not None

    def _batches(self, method: str, jobs: list) -> Iterator[tuple[int, list]]:
        """Consecutive jobs in batches (start index, jobs) of about equal cost, about
        BATCHES_PER_SLOT per in-flight slot: Ray's per-task cost is paid a few times a round,
        every worker gets as much to do, and the aggregation streams batch by batch. At most
        MAX_BATCH turns a batch (a dead worker's batch is rerun whole)."""
        costs = self.cost[method][[cid for cid, _ in jobs]]
        target = costs.sum() / (len(self.actors) * IN_FLIGHT * BATCHES_PER_SLOT)
        start, acc = 0, 0.0
        for i, cost in enumerate(costs):
            acc += cost
            if acc >= target or i + 1 - start == MAX_BATCH or i + 1 == len(jobs):
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

    def evaluate(self, rnd: int, payload: dict, jobs: list) -> list:
        return list(self._dispatch("evaluate", rnd, payload, jobs))

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


# Ray's single-node switch (off by default on macOS/Windows). Off, services.get_node_ip_address()
# is 127.0.0.1, so ray.init keeps _node_ip_address="127.0.0.1" (resolve_ip_for_localhost would
# otherwise swap in the machine's external address), and with a node IP of exactly 127.0.0.1
# gcs_server, raylet, workers, the agents, the dashboard and the metrics servers bind loopback.
_SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
RAY_SUBDIR = "ray"  # Ray's own temp dir inside ray.temp_dir: <temp_dir>/ray/session_latest


def _token_path() -> Path:
    """Where Ray 2.60 keeps this user's auth token (``$RAY_AUTH_TOKEN_PATH`` wins)."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def _private_dir(path: Path) -> None:
    """Make ``path`` a directory of this user that nobody else can enter.

    Ray 2.60 chmods its temp dir and the session, sockets, logs and runtime_resources dirs in it
    to 0777 whenever one of its processes starts, every worker included (``Node._init_temp`` ->
    ``try_make_directory_shared``), so those cannot stay owner-only; Ray's temp dir therefore
    goes one level below ``path``, which Ray never touches. A ``path`` another user owns (e.g.
    a pre-created ``/tmp/pflalign-ray``) could read or swap the instance's files: refused.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:  # a file, or a symlink to nowhere
        raise ConfigError(f"ray.temp_dir={path} exists and is not a directory") from None
    owners = {os.lstat(path).st_uid, os.stat(path).st_uid}  # the entry and, via a symlink, its target
    foreign = owners - {os.getuid()}
    if foreign:
        raise ConfigError(f"ray.temp_dir={path} belongs to another user (uid {min(foreign)}); "
                          "set ray.temp_dir to a directory of your own")
    os.chmod(path, 0o700)


@contextmanager
def _loopback_owner_only() -> Iterator[None]:
    """Scope for ``ray.init`` of a local instance: it listens on 127.0.0.1 only, writes owner-only.

    The processes ray.init spawns (gcs_server, raylet, then through the raylet the workers and
    agents) inherit the env var and the umask and keep them after this scope restores both here.
    They read ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` when they import ray; this process imported ray
    already, so its copy (``ray_constants.ENABLE_RAY_CLUSTER``) is switched for the same time.
    umask 077 makes every file of the instance, and the auth token Ray generates, 0600.
    """
    from ray._private import ray_constants

    old_env, old_flag = os.environ.get(_SINGLE_NODE_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_SINGLE_NODE_ENV], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    old_umask = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old_umask)
        ray_constants.ENABLE_RAY_CLUSTER = old_flag
        if old_env is None:
            os.environ.pop(_SINGLE_NODE_ENV, None)
        else:
            os.environ[_SINGLE_NODE_ENV] = old_env


def connect(rc: RayConfig) -> bool:
    """Join ``ray.address``/``$RAY_ADDRESS`` or start a local instance; True if we started one.

    A local instance is for this user on this machine: every listener is on 127.0.0.1, its
    temp dir is 0700, its files and the auth token are 0600. Token authentication stays as
    Ray sets it (on by default for a local instance). Ray's worker processes inherit the 077;
    pflalign's actors (driver, workers, Tune trials) set the user's umask back first thing,
    given at their creation, so what a run writes has the modes of ``runtime=local``. (Ray's
    ``worker_process_setup_hook`` could do it for every worker, but a job with a runtime_env
    cannot use the workers Ray pre-starts: each actor then cost seconds more to start.)
    """
    if ray.is_initialized():
        return False
    address = rc.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return True
    temp_dir = Path(rc.temp_dir or DEFAULT_TEMP_DIR).expanduser().absolute()
    _private_dir(temp_dir)
    token = _token_path()
    if token.is_file() and token.stat().st_uid == os.getuid() and token.stat().st_mode & 0o077:
        os.chmod(token, 0o600)  # one made earlier (`ray get-auth-token --generate`) is 0644
    with _loopback_owner_only():
        ray.init(num_cpus=rc.local_cpus, include_dashboard=rc.dashboard, _node_ip_address="127.0.0.1",
                 _temp_dir=str(temp_dir / RAY_SUBDIR), log_to_driver=True)
    return True


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
    from ..experiment import resume_hint, state_io

    started = connect(cfg.ray)
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
        if started:
            ray.shutdown()
