"""ALGORITHM.md's reference setting: MNIST-1D, 20 clients, Dirichlet(0.1), MLP 40-128-128-10,
150 rounds, all clients, 1 local epoch, batch 20, SGD lr 0.05, 3 seeds; mean personalized test
accuracy over the last 10 rounds, and stability (std of the mean accuracy, last 50 rounds).

    python benchmarks/reference.py --jobs 2            # writes benchmarks/results/reference.{md,csv}
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from pflalign.compare import load_results, run_many, summary_table, write_table
from pflalign.config import load_config

VARIANTS = {
    "pFLAlign mechanism 1 only": ["algorithm=pflalign", "algo.m2=false"],
    "pFLAlign full, gate B": ["algorithm=pflalign"],
    "pFLAlign full, gate A": ["algorithm=pflalign", "algo.gate_scope=head", "algo.gamma0=1", "algo.lam_g=0"],
    "pFLAlign mechanism 2 only": ["algorithm=pflalign", "algo.m1=false"],
    "pFLAlign mechanism 1 only, direction=gradient": ["algorithm=pflalign", "algo.m2=false", "algo.direction=gradient"],
    "control: FedAvg+FT, persistent momentum": ["algorithm=fedavg_ft", "algo.persistent_momentum=true"],
    "FedAvg + fine-tune": ["algorithm=fedavg_ft"],
    "Local": ["algorithm=local"],
    "FedAvg (global model)": ["algorithm=fedavg"],
}


def files_only(cfg, run_dir):
    return []  # metrics.jsonl is always written; no progress bar or W&B


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/reference")
    ap.add_argument("--only", default="", help="comma-separated substrings of variant labels to run")
    ap.add_argument("overrides", nargs="*", help="extra KEY=VALUE for every run (e.g. rounds=30)")
    args = ap.parse_args()
    runs_dir = Path(args.out).parent / "runs" / Path(args.out).name
    chosen = {k: v for k, v in VARIANTS.items() if not args.only or any(s in k for s in args.only.split(","))}
    cfgs = [load_config(None, [*ov, f"seed={s}", "experiment=reference", "progress=false", "wandb.mode=disabled",
                               f"out_dir={runs_dir}", "checkpoint_every=0", *args.overrides], {"label": label})
            for label, ov in chosen.items() for s in args.seeds.split(",")]
    shutil.rmtree(runs_dir, ignore_errors=True)  # this benchmark's own runs: always fresh
    dirs = run_many(cfgs, args.jobs, files_only)
    print(write_table(summary_table(load_results(dirs)), Path(args.out)))


if __name__ == "__main__":
    main()
