"""Scale: what a round, an evaluation, a checkpoint and a resume cost as the federation grows.

Points: pFLAlign with the MLP on MNIST-1D (IID, ~15 samples a client past 1,000 clients) at
20, 100, 1,000 and 10,000 clients, with full participation and client_fraction=0.1, and 100
clients x ResNet-18 on tiny CIFAR-10-format data this script writes; each on the local runtime
and on Ray with 2 workers; 3 rounds, evaluation and a checkpoint every round, state_store=auto.
Per point: seconds per training round and per evaluation (median of rounds 2-3), peak RSS of the
whole process tree and of the process running the round loop (sampled every 0.2 s from /proc),
checkpoint bytes and seconds, resume seconds (a `--resume` one round further, minus that round),
and the disk the client states use. Then a power-law fit of each cost against the clients.

    python benchmarks/scale.py                               # every point (~1 h on 2 cores)
    python benchmarks/scale.py --only mlp-20,mlp-100         # a few points (prefix match)

Writes benchmarks/results/scale.{md,csv}; finished points are reused (delete the run to redo it).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

OUT = Path("benchmarks/results/scale")
COMMON = ["algorithm=pflalign", "rounds=3", "eval_every=1", "checkpoint_every=1", "wandb.mode=disabled",
          "progress=false", "ray.num_workers=2", "ray.local_cpus=2"]
GB = 1024**3


def mlp(n: int, fraction: float) -> list[str]:
    return ["data.dataset=mnist1d", "data.partition=iid", f"data.num_clients={n}",
            f"data.num_samples={max(5000, 15 * n)}", "model.name=mlp", f"client_fraction={fraction}"]


def resnet(root: Path) -> list[str]:
    return ["data.dataset=cifar10", f"data.root={root}", "data.partition=iid", "data.num_clients=100",
            "model.name=resnet18", "train.batch_size=20"]


def points(cifar_root: Path) -> dict[str, tuple[list[str], str, int]]:
    """name -> (overrides, runtime, clients)."""
    out = {}
    for n in (20, 100, 1000, 10000):
        for fraction in (1.0, 0.1):
            for runtime in ("local", "ray"):
                out[f"mlp-{n}-f{fraction}-{runtime}"] = (mlp(n, fraction), runtime, n)
    for runtime in ("local", "ray"):
        out[f"resnet18-100-f1.0-{runtime}"] = (resnet(cifar_root), runtime, 100)
    return out


def write_tiny_cifar(root: Path, n: int = 2000) -> Path:
    """CIFAR-10's python-batch layout (5 train batches + test) with n random images."""
    folder = root / "cifar-10-batches-py"
    if (folder / "test_batch").is_file():
        return root
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    per = n // 6
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, per).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    return root


# ---- process-tree memory from /proc ----------------------------------------------------------
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(p.name))
    return kids


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class TreeMemory(threading.Thread):
    """Peak summed RSS of a process and its descendants, and of the round-loop process."""

    def __init__(self, pid: int, runtime: str):
        super().__init__(daemon=True)
        self.pid, self.runtime, self.peak, self.driver_peak, self.stop = pid, runtime, 0, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            kids, tree, todo = _children(), [], [self.pid]
            while todo:
                p = todo.pop()
                tree.append(p)
                todo += kids.get(p, [])
            rss = {p: _rss(p) for p in tree}
            self.peak = max(self.peak, sum(rss.values()))
            if self.runtime == "local":
                driver = rss.get(self.pid, 0)
            else:
                driver = max((r for p, r in rss.items() if "Driver" in _cmdline(p)), default=0)
            self.driver_peak = max(self.driver_peak, driver)
            time.sleep(0.2)


def run_cli(args: list[str], runtime: str) -> tuple[float, TreeMemory, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pflalign.cli", "run", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    mem = TreeMemory(proc.pid, runtime)
    mem.start()
    out, err = proc.communicate()
    mem.stop.set()
    mem.join()
    if proc.returncode != 0:
        raise SystemExit(f"pflalign run {' '.join(args)} failed ({proc.returncode}):\n{err[-3000:]}")
    return time.perf_counter() - start, mem, out.strip().splitlines()[-1]


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def dataset_bytes(run_dir: Path) -> int:
    """x (float32) and y (int64) of every sample the run's partition holds."""
    part = json.loads((run_dir / "partition.json").read_text())
    return part["stats"]["total_samples"] * (4 * int(np.prod(part["input_shape"])) + 8)


def measure(name: str, overrides: list[str], runtime: str, clients: int, cache: Path) -> dict:
    record = OUT / "points" / f"{name}.json"
    if record.is_file():
        return json.loads(record.read_text())
    run_dir = OUT / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    args = [*COMMON, *overrides, f"runtime={runtime}", f"data.cache_dir={cache}", f"out_dir={OUT / 'runs'}",
            f"name={name}"]
    wall, mem, _ = run_cli(args, runtime)
    timings = [json.loads(line) for line in (run_dir / "timings.jsonl").read_text().splitlines()]
    results = json.loads((run_dir / "results.json").read_text())
    steady = timings[1:] or timings
    ckpt_bytes = sum(p.stat().st_size for p in run_dir.glob("server.*.safetensors")) + \
        (run_dir / "checkpoint.json").stat().st_size
    state_bytes = du(run_dir / "states")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pflalign.cli", "run", "--resume", str(run_dir), "rounds=4"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    resume_wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"resume of {run_dir} failed:\n{proc.stderr[-3000:]}")
    last = [json.loads(line) for line in (run_dir / "timings.jsonl").read_text().splitlines()][-1]
    row = {
        "point": name, "runtime": runtime, "clients": clients,
        "client_fraction": float(next(o for o in overrides + ["client_fraction=1.0"] if o.startswith("client_fraction")).split("=")[1]),
        "state_store": results["state_store"],
        "train_s": statistics.median(t["train_s"] for t in steady),
        "eval_s": statistics.median(t["eval_s"] for t in steady),
        "checkpoint_s": statistics.median(t["checkpoint_s"] for t in steady),
        "checkpoint_MB": ckpt_bytes / 2**20,
        "peak_rss_GB": mem.peak / GB, "driver_rss_GB": mem.driver_peak / GB,
        "resume_s": resume_wall - last["train_s"] - last.get("eval_s", 0) - last.get("checkpoint_s", 0),
        "state_disk_MB": state_bytes / 2**20, "run_wall_s": wall,
        "dataset_MB": dataset_bytes(run_dir) / 2**20,
    }
    row["checkpoint_share"] = row["checkpoint_s"] / (row["train_s"] + row["eval_s"] + row["checkpoint_s"])
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(row, indent=2))
    return row


def growth(df: pd.DataFrame) -> pd.DataFrame:
    """Exponent b of cost ~ a * clients^b per (runtime, fraction), MLP points only."""
    rows = []
    mlp_points = df[df.point.str.startswith("mlp")]
    for (runtime, fraction), g in mlp_points.groupby(["runtime", "client_fraction"]):
        g = g.sort_values("clients")
        if len(g) < 2:
            continue
        row = {"runtime": runtime, "client_fraction": fraction}
        for col in ("train_s", "eval_s", "checkpoint_s", "checkpoint_MB", "peak_rss_GB", "resume_s", "state_disk_MB"):
            y = g[col].clip(lower=1e-6)
            row[col] = float(np.polyfit(np.log(g.clients), np.log(y), 1)[0])
        rows.append(row)
    return pd.DataFrame(rows)


def targets(df: pd.DataFrame) -> list[str]:
    out = []
    by = df.set_index("point")
    if {"mlp-20-f1.0-local", "mlp-10000-f1.0-local"} <= set(by.index):
        small, big = by.loc["mlp-20-f1.0-local"], by.loc["mlp-10000-f1.0-local"]
        limit = small.peak_rss_GB * 1.3 + big.dataset_MB / 1024
        out.append(f"local peak RSS at 10,000 clients {big.peak_rss_GB:.2f} GB <= 20 clients {small.peak_rss_GB:.2f} GB "
                   f"+ dataset {big.dataset_MB:.0f} MB + 30%: limit {limit:.2f} GB -> "
                   f"{'MET' if big.peak_rss_GB <= limit else 'MISSED'}")
    for runtime in ("local", "ray"):
        key = f"mlp-10000-f0.1-{runtime}"
        if key in by.index:
            share = by.loc[key].checkpoint_share
            out.append(f"checkpoint share of the round at 10,000 clients, fraction 0.1, {runtime}: {100 * share:.2f}% "
                       f"(target < 5%) -> {'MET' if share < 0.05 else 'MISSED'}")
        key = f"resnet18-100-f1.0-{runtime}"
        if key in by.index:
            rss = by.loc[key].peak_rss_GB
            out.append(f"100 x ResNet-18, 3 rounds, {runtime}: peak RSS {rss:.2f} GB (target < 8 GB) -> "
                       f"{'MET' if rss < 8 else 'MISSED'}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated prefixes of point names")
    args = ap.parse_args()
    cache = OUT / "cache"
    todo = points(write_tiny_cifar(OUT / "cifar"))
    if args.only:
        todo = {k: v for k, v in todo.items() if any(k.startswith(p) for p in args.only.split(","))}
    rows = []
    for name, (overrides, runtime, clients) in todo.items():
        print(f"[scale] {name} ...", flush=True)
        rows.append(measure(name, overrides, runtime, clients, cache))
        print(f"[scale] {name}: {json.dumps(rows[-1])}", flush=True)
    done = [json.loads(p.read_text()) for p in sorted((OUT / "points").glob("*.json"))]
    df = pd.DataFrame(done).sort_values(["runtime", "point"], key=lambda s: s if s.name != "point" else
                                        s.str.extract(r"-(\d+)-")[0].astype(int) * 10 + s.str.contains("f0.1"))
    cols = ["point", "state_store", "train_s", "eval_s", "checkpoint_s", "checkpoint_share", "checkpoint_MB",
            "peak_rss_GB", "driver_rss_GB", "resume_s", "state_disk_MB"]
    fits = growth(df)
    lines = ["# Scale benchmark", "", "Command: `python benchmarks/scale.py`", "",
             df[cols].to_markdown(index=False, floatfmt=".3g"), "",
             "Growth exponents b of cost ~ clients^b (MLP points):", "",
             fits.to_markdown(index=False, floatfmt=".2f"), "", "Targets:", "",
             *[f"- {t}" for t in targets(df)], ""]
    (OUT.parent / "scale.md").write_text("\n".join(lines))
    df.to_csv(OUT.parent / "scale.csv", index=False)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
