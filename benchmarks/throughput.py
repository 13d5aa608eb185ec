"""Throughput: framework overhead per client turn and per round, start-up, memory per worker.

FedAvg on the same clients, batches and model, 1 torch thread per worker. Reference loops in
one process:
- bare: a plain PyTorch loop doing the same local steps on the same batches (in-memory batches
  by index, as pflalign makes them), then the same weighted average, then evaluation;
- PFLlib-style: per-client DataLoader(TensorDataset, shuffle=True) with per-sample collate and
  a model copy per turn, the way PFLlib's clients train (training only).
"train" is local training (with the streaming average, for pflalign); "round" adds the
evaluation of every client. The runners take turns round by round (this host's speed drifts),
and a ratio is the median of same-round ratios. Start-up: a fresh `pflalign run` process to
the end of round 1, and with --flower-python the same workload as a Flower simulation
(flower_sim.py), median of --startup-runs.

    python benchmarks/throughput.py                   # mlp (MNIST-1D) and cnn (Fashion-MNIST if installed)
    python benchmarks/throughput.py --workloads mlp --rounds 40 --ray-workers 1,2 --flower-python ~/flower-venv/bin/python

Prints markdown tables and writes them to benchmarks/results/throughput.md.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pflalign.algorithms.base import weighted_mean
from pflalign.client import batches
from pflalign.config import load_config
from pflalign.experiment import prepare
from pflalign.federation import Federation
from pflalign.models import build_model
from pflalign.runtime.local import LocalRuntime
from pflalign.seeds import turn_seed

WORKLOADS = {
    "mlp": ["data.dataset=mnist1d", "model.name=mlp"],
    # FedAvg CNN (PFLlib leaderboard) on all 70k Fashion-MNIST images over 20 IID clients (~2640 steps/round).
    "cnn": ["data.dataset=fmnist", "data.partition=iid", "data.num_samples=5000", "model.name=cnn",
            "data.num_clients=20", "train.batch_size=20"],
}


def bare_train(cfg, data, model, global_params, rnd: int, clients: list[int] | None = None) -> list:
    """Each client's local steps (default: every client) written directly in PyTorch, with the
    framework's batch order."""
    updates = []
    for cid in range(data.num_clients) if clients is None else clients:
        client = data.clients[cid]
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.copy_(global_params[k])
        opt = torch.optim.SGD(model.parameters(), lr=cfg.train.lr)
        seed = turn_seed(cfg.seed, cid, rnd, 0, 1, 0)
        for x, y in batches(client.train_x, client.train_y, cfg.train.batch_size, seed):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        updates.append(({k: p.detach() - global_params[k] for k, p in model.named_parameters()}, len(client.train_y)))
    return updates


@torch.no_grad()
def bare_evaluate(data, model, params) -> list[float]:
    for k, p in model.named_parameters():
        p.copy_(params[k])
    model.eval()
    accs = [float((model(c.test_x).argmax(1) == c.test_y).float().mean()) for c in data.clients]
    model.train()
    return accs


def bare_round(cfg, data, model, global_params, rnd: int) -> tuple[float, float]:
    """Train, average, evaluate every client: the whole FedAvg round as plain PyTorch.
    Returns (train, whole round) seconds."""
    t = time.perf_counter()
    mean = weighted_mean(bare_train(cfg, data, model, global_params, rnd))
    new = {k: global_params[k] + mean[k] for k in global_params}
    train = time.perf_counter() - t
    bare_evaluate(data, model, new)
    return train, time.perf_counter() - t


def pfllib_train(cfg, data, model, global_params, rnd: int) -> None:
    """PFLlib's client loop: a model copy per client, a DataLoader over a TensorDataset with
    shuffle and per-sample collate, the same number of steps."""
    for cid, client in enumerate(data.clients):
        local = copy.deepcopy(model)
        with torch.no_grad():
            for k, p in local.named_parameters():
                p.copy_(global_params[k])
        opt = torch.optim.SGD(local.parameters(), lr=cfg.train.lr)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(client.train_x, client.train_y),
                                             batch_size=cfg.train.batch_size, shuffle=True, drop_last=False,
                                             generator=torch.Generator().manual_seed(turn_seed(cfg.seed, cid, rnd)))
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(local(x), y).backward()
            opt.step()


class BareActor:
    """The bare loop inside a Ray actor, for a share of the clients: what any framework on Ray
    could reach at best on this machine (Ray's task cost and the actors' CPU contention only)."""

    def __init__(self, cfg, data):
        torch.set_num_threads(1)
        self.cfg, self.data = cfg, data
        self.model = build_model(cfg.model, data.input_shape, data.num_classes)

    def train(self, global_params: dict, clients: list[int], rnd: int) -> list:
        params = {k: torch.from_numpy(np.array(v)) for k, v in global_params.items()}
        updates = bare_train(self.cfg, self.data, self.model, params, rnd, clients)
        return [({k: v.numpy() for k, v in u.items()}, n) for u, n in updates]


def bare_ray_train(actors: list, cfg, data, global_params: dict, rnd: int) -> float:
    """Training seconds of the bare loop split over ``actors`` (consecutive client blocks), averaged here."""
    import ray

    t = time.perf_counter()
    ref = ray.put({k: v.numpy() for k, v in global_params.items()})
    blocks = np.array_split(np.arange(data.num_clients), len(actors))
    outs = ray.get([a.train.remote(ref, b.tolist(), rnd) for a, b in zip(actors, blocks)])
    weighted_mean([({k: torch.from_numpy(np.array(v)) for k, v in u.items()}, n) for out in outs for u, n in out])
    return time.perf_counter() - t


def timed(fn, rnd: int) -> float:
    t = time.perf_counter()
    fn(rnd)
    return time.perf_counter() - t


def fed_round(fed, rnd: int) -> tuple[float, float]:
    """(train, whole round) seconds of one Federation step; evaluation every round."""
    t = time.perf_counter()
    fed.step(rnd)
    return fed.timing["train_s"], time.perf_counter() - t


def interleaved(runners: dict, rounds: int) -> dict[str, list[tuple[float, float | None]]]:
    """Each runner's (train, round) seconds, the runners taking turns round by round: this
    machine's speed drifts by up to 2x within minutes (a shared host), and a runner timed in
    one block, the next in another, would compare two machines."""
    times: dict = {name: [] for name in runners}
    for rnd in range(rounds + 1):  # round 0: warm-up (allocator, actors' first turns)
        for name, run in runners.items():
            if rnd:
                times[name].append(run(rnd))
            else:
                run(rnd)
    return times


def startup(workload: list[str], runtime: str, cache_dir: str) -> tuple[float, float]:
    """Seconds from launching a fresh `pflalign run` process to the end of round 1 (its line in
    metrics.jsonl, rounds=1, evaluated), and to the process's exit (Ray's shutdown included)."""
    out = Path(tempfile.mkdtemp(prefix="pfl-startup-"))
    args = [*workload, "algorithm=fedavg", "rounds=1", "wandb.mode=disabled", "progress=false",
            f"data.cache_dir={cache_dir}", f"runtime={runtime}", f"out_dir={out}", "ray.local_cpus=2"]
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pflalign.cli", "run", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return _wait_for_round_1(proc, lambda: any(f.stat().st_size for f in out.glob("*/metrics.jsonl")), t,
                             f"pflalign run {' '.join(args)}")


def export_partition(path: Path, cache_dir: str) -> None:
    """The mlp workload's clients, initial weights and settings as one .npz, for flower_sim.py."""
    cfg = load_config(None, [*WORKLOADS["mlp"], "algorithm=fedavg", f"data.cache_dir={cache_dir}"])
    data = prepare(cfg)
    torch.manual_seed(cfg.seed)  # the federation's initial weights
    weights = [p.detach().numpy() for p in build_model(cfg.model, data.input_shape, data.num_classes).parameters()]
    arrays = {f"w{i}": w for i, w in enumerate(weights)}
    for cid, c in enumerate(data.clients):
        arrays.update({f"train_x{cid}": c.train_x.numpy(), f"train_y{cid}": c.train_y.numpy(),
                       f"test_x{cid}": c.test_x.numpy(), f"test_y{cid}": c.test_y.numpy()})
    np.savez(path, num_clients=data.num_clients, lr=cfg.train.lr, batch_size=cfg.train.batch_size,
             num_weights=len(weights), **arrays)


def flower_startup(python: str, cache_dir: str) -> tuple[float, float]:
    """Seconds from launching flower_sim.py (Flower's simulation, its own venv) to the end of
    round 1 and to the process's exit."""
    out = Path(tempfile.mkdtemp(prefix="pfl-flower-"))
    export_partition(out / "partition.npz", cache_dir)
    marker = out / "round-1-done"
    t = time.perf_counter()
    proc = subprocess.Popen([python, str(Path(__file__).with_name("flower_sim.py")), str(out / "partition.npz"), str(marker)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return _wait_for_round_1(proc, lambda: marker.exists(), t, "flower_sim.py")


def _wait_for_round_1(proc: subprocess.Popen, round_1_done, start: float, what: str) -> tuple[float, float]:
    round_1 = None
    while proc.poll() is None or round_1 is None:
        if round_1 is None and round_1_done():
            round_1 = time.perf_counter() - start
        if proc.returncode is not None and (proc.returncode or round_1 is None):
            raise RuntimeError(f"{what} exited ({proc.returncode}) before the end of round 1")
        time.sleep(0.02)
    return round_1, time.perf_counter() - start


def measure(name: str, rounds: int, ray_workers: list[int], cache_dir: str) -> list[dict]:
    cfg = load_config(None, [*WORKLOADS[name], "algorithm=fedavg", "eval_every=1", "rounds=1000000",
                             "wandb.mode=disabled", f"data.cache_dir={cache_dir}", "train.num_threads=1"])
    data = prepare(cfg)
    torch.set_num_threads(1)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    runners = {"bare PyTorch loop": lambda r: bare_round(cfg, data, model, params, r),
               "PFLlib-style loop": lambda r: (timed(lambda r: pfllib_train(cfg, data, model, params, r), r), None)}
    local = Federation(cfg, data, LocalRuntime(cfg, data))
    runners["pflalign local"] = lambda r: fed_round(local, r)
    pools: dict = {}
    if ray_workers:
        import ray

        from pflalign.config import RayConfig
        from pflalign.runtime.cluster import connect
        from pflalign.runtime.ray import RayRuntime

        connect(RayConfig(local_cpus=os.cpu_count()))  # loopback only, owner-only files
        for n in ray_workers:
            # Every pool stays up for the interleaving: half a CPU per worker, a tenth per bare
            # actor in Ray's books (placement only; each trains on one thread either way), so that
            # pools of 1 and 2 all fit 2 CPUs.
            fed = Federation(cfg, data, RayRuntime(replace(cfg, ray=replace(cfg.ray, num_workers=n, num_cpus=0.5)), data))
            pools[f"pflalign ray, {n} worker(s)"] = fed.runtime
            runners[f"pflalign ray, {n} worker(s)"] = lambda r, fed=fed: fed_round(fed, r)
            actors = [ray.remote(num_cpus=0.1)(BareActor).remote(cfg, data) for _ in range(n)]
            runners[f"bare loop in {n} Ray actor(s) (ceiling)"] = (
                lambda r, actors=actors: (bare_ray_train(actors, cfg, data, params, r), None))
    times = interleaved(runners, rounds)
    steps = sum(-(-len(c.train_y) // cfg.train.batch_size) for c in data.clients)
    bare = times["bare PyTorch loop"]
    rows = []
    for runner, ts in times.items():
        row = {"workload": name, "steps": steps, "runner": runner, "train_s": statistics.median(t for t, _ in ts),
               "train_ratio": statistics.median(t / b for (t, _), (b, _) in zip(ts, bare))}
        if ts[0][1] is not None:
            row.update(round_s=statistics.median(w for _, w in ts),
                       round_ratio=statistics.median(w / b for (_, w), (_, b) in zip(ts, bare)))
        if runner in pools:
            rss = ray.get([a.__ray_call__.remote(lambda self: int(open("/proc/self/statm").read().split()[1])
                                                 * os.sysconf("SC_PAGE_SIZE")) for a in pools[runner].actors])
            row["worker_rss_mb"] = sum(rss) / len(rss) / 2 ** 20
        rows.append(row)
    if ray_workers:
        ray.shutdown()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="mlp,cnn")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ray-workers", default="1,2", help="comma-separated pool sizes; empty to skip Ray")
    ap.add_argument("--cache-dir", default="~/.cache/pflalign")
    ap.add_argument("--out", default="benchmarks/results/throughput.md")
    ap.add_argument("--startup", action=argparse.BooleanOptionalAction, default=True,
                    help="also time a fresh process to the end of round 1")
    ap.add_argument("--startup-runs", type=int, default=3)
    ap.add_argument("--flower-python", help="python of a venv with flwr[simulation]==1.42.0: also time Flower's start-up")
    args = ap.parse_args()
    workers = [int(n) for n in args.ray_workers.split(",") if n]
    rows = []
    for name in args.workloads.split(","):
        if name == "cnn" and not Path("/usr/share/datasets/fashion-mnist").exists():
            print("skipping cnn: Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
            continue
        rows += measure(name, args.rounds, workers, args.cache_dir)
    lines = ["| workload | runner | steps/round | train (s) | vs bare | round incl. eval (s) | vs bare | worker RSS (MB) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        rss = f"{r['worker_rss_mb']:.0f}" if "worker_rss_mb" in r else ""
        whole = f"{r['round_s']:.3f} | {r['round_ratio']:.2f}x" if "round_s" in r else " | "
        lines.append(f"| {r['workload']} | {r['runner']} | {r['steps']} | {r['train_s']:.3f} | {r['train_ratio']:.2f}x "
                     f"| {whole} | {rss} |")
    if args.startup:
        starts = {"pflalign local": lambda: startup(WORKLOADS["mlp"], "local", args.cache_dir),
                  "pflalign ray (local instance, driver actor, 2 workers)": lambda: startup(WORKLOADS["mlp"], "ray", args.cache_dir)}
        if args.flower_python:
            starts["Flower 1.42 simulation (flower_sim.py, 2 client actors)"] = lambda: flower_startup(args.flower_python,
                                                                                                       args.cache_dir)
        times: dict = {name: [] for name in starts}
        for _ in range(args.startup_runs):  # in turn, like the rounds
            for name, start in starts.items():
                times[name].append(start())
        lines += ["", f"| start-up of a fresh process (mlp), median of {args.startup_runs} | to the end of round 1 (s) "
                      "| to the process's exit (s) |", "|---|---:|---:|"]
        for name, ts in times.items():
            lines.append(f"| {name} | {statistics.median(r for r, _ in ts):.1f} | {statistics.median(d for _, d in ts):.1f} |")
    table = "\n".join(lines)
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
