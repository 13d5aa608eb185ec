"""Throughput: framework overhead, round time vs number of Ray workers, memory per worker.

Per-round wall time of pflalign (local runtime, and Ray with 1..N worker actors) against a bare
PyTorch loop doing the same local steps (same clients, same batches, same model) plus the same
weighted average; FedAvg, evaluation off, 1 torch thread per worker; RSS of each worker actor.

    python benchmarks/throughput.py                   # mlp (MNIST-1D) and cnn (Fashion-MNIST if installed)
    python benchmarks/throughput.py --workloads mlp --rounds 5 --ray-workers 1,2

Prints a markdown table and writes it to benchmarks/results/throughput.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pflalign.algorithms.base import weighted_mean
from pflalign.client import batches, turn_seed
from pflalign.config import load_config
from pflalign.experiment import prepare
from pflalign.federation import Federation
from pflalign.models import build_model
from pflalign.runtime.local import LocalRuntime

WORKLOADS = {
    "mlp": ["data.dataset=mnist1d", "model.name=mlp"],
    # FedAvg CNN (PFLlib leaderboard) on all 70k Fashion-MNIST images over 20 IID clients (~2640 steps/round).
    "cnn": ["data.dataset=fmnist", "data.partition=iid", "data.num_samples=5000", "model.name=cnn",
            "data.num_clients=20", "train.batch_size=20"],
}


def bare_round(cfg, data, model, global_params, rnd: int) -> dict:
    """One FedAvg round written directly in PyTorch, with the framework's batch order."""
    updates = []
    for cid, client in enumerate(data.clients):
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
    mean = weighted_mean(updates)
    return {k: global_params[k] + mean[k] for k in global_params}


def timed(fn, rounds: int) -> float:
    fn(0)  # warm-up (Trainer setup, allocator, actor start)
    times = []
    for r in range(1, rounds + 1):
        t = time.perf_counter()
        fn(r)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(name: str, rounds: int, ray_workers: list[int], cache_dir: str) -> list[dict]:
    cfg = load_config(None, [*WORKLOADS[name], "algorithm=fedavg", f"eval_every={10 ** 6}", "rounds=1000000",
                             "wandb.mode=disabled", f"data.cache_dir={cache_dir}", "train.num_threads=1"])
    data = prepare(cfg)
    torch.set_num_threads(1)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    steps = sum(-(-len(c.train_y) // cfg.train.batch_size) for c in data.clients)
    bare = timed(lambda r: bare_round(cfg, data, model, params, r), rounds)
    rows = [{"workload": name, "runner": "bare PyTorch loop", "round_s": bare, "steps": steps}]

    fed = Federation(cfg, data, LocalRuntime(cfg, data))
    rows.append({"workload": name, "runner": "pflalign local", "round_s": timed(fed.step, rounds), "steps": steps})
    if ray_workers:
        import ray

        from pflalign.config import RayConfig
        from pflalign.runtime.ray import RayRuntime, connect

        connect(RayConfig(local_cpus=os.cpu_count()))  # loopback only, owner-only files
        for n in ray_workers:
            cfg.ray.num_workers = n
            runtime = RayRuntime(cfg, data)
            fed = Federation(cfg, data, runtime)
            t = timed(fed.step, rounds)
            rss = ray.get([a.__ray_call__.remote(lambda self: __import__("psutil").Process().memory_info().rss)
                           for a in runtime.actors])
            runtime.close()
            rows.append({"workload": name, "runner": f"pflalign ray, {n} worker(s)", "round_s": t, "steps": steps,
                         "worker_rss_mb": sum(rss) / len(rss) / 2 ** 20})
    for row in rows:
        row["ratio"] = row["round_s"] / bare
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="mlp,cnn")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ray-workers", default="1,2", help="comma-separated pool sizes; empty to skip Ray")
    ap.add_argument("--cache-dir", default="~/.cache/pflalign")
    ap.add_argument("--out", default="benchmarks/results/throughput.md")
    args = ap.parse_args()
    workers = [int(n) for n in args.ray_workers.split(",") if n]
    rows = []
    for name in args.workloads.split(","):
        if name == "cnn" and not Path("/usr/share/datasets/fashion-mnist").exists():
            print("skipping cnn: Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
            continue
        rows += measure(name, args.rounds, workers, args.cache_dir)
    lines = ["| workload | runner | steps/round | round time (s, median) | vs bare | worker RSS (MB) |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        rss = f"{r['worker_rss_mb']:.0f}" if "worker_rss_mb" in r else ""
        lines.append(f"| {r['workload']} | {r['runner']} | {r['steps']} | {r['round_s']:.3f} | {r['ratio']:.2f}x | {rss} |")
    table = "\n".join(lines)
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
