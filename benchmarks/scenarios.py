"""FL scenarios (issue 16): client dropout, clients never seen in training, feature shift.

Each scenario is a few `pflalign compare` runs (the same algorithms and seeds on the same
partitions), one per setting; the tables put the settings side by side. Finished comparisons are
reused: a setting whose directory under --out already holds a compare.csv is not rerun, so the
script can be stopped and continued.

    python benchmarks/scenarios.py                       # all three, 3 seeds, CPU scale (~20 min on 2 cores)
    python benchmarks/scenarios.py --scenarios dropout --seeds 0

Writes the tables to benchmarks/results/scenarios.md.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

COMMON = ["rounds=60", "wandb.mode=disabled", "progress=false", "checkpoint_every=0"]
MNIST1D = ["data.dataset=mnist1d", "data.num_clients=20", "data.alpha=0.1"]
# Fashion-MNIST (Debian package dataset-fashion-mnist): 6000 images over 20 IID clients, so the
# clients differ only in their rotation (pure feature shift, as in rotated-MNIST benchmarks).
FMNIST = ["data.dataset=fmnist", "data.max_samples=6000", "data.partition=iid", "data.num_clients=20",
          "model.name=mlp", "train.lr=0.05"]
SCENARIOS = {
    # scenario -> (algorithms, {setting: overrides}, columns read from compare.csv: header -> metric)
    "dropout": ("fedavg,ditto,fedrep,pflalign", {
        "no dropout": MNIST1D,
        "30% dropout": [*MNIST1D, "sim.dropout=0.3"],
    }, {"acc (mean, last 10)": "acc_mean_last10", "global model": "global_acc_last10"}),
    "new-clients": ("fedavg,fedavg_ft,ditto,fedrep,pflalign", {
        "5 of 20 clients held out": [*MNIST1D, "data.holdout_clients=5", "eval.adapt_epochs=1"],
    }, {"training clients (mean, last 10)": "acc_mean_last10",
        "new clients (mean, last 10)": "new_acc_mean_last10", "new clients (worst, last 10)": "new_acc_worst_last10"}),
    "feature-shift": ("local,fedavg,fedrep,ditto,pflalign", {
        "IID, no shift": FMNIST,
        "IID + rotation (up to 45 degrees)": [*FMNIST, "data.feature_shift=rotate", "data.shift_strength=45"],
    }, {"acc (mean, last 10)": "acc_mean_last10"}),
}


def run_setting(out: Path, algorithms: str, seeds: str, overrides: list[str], jobs: int) -> pd.DataFrame:
    """compare.csv of this setting: an earlier run's when there is one, else a new comparison."""
    done = sorted(out.glob("compare-*/compare.csv"))
    if not done:
        cmd = [sys.executable, "-m", "pflalign.cli", "compare", "--algorithms", algorithms, "--seeds", seeds,
               "--jobs", str(jobs), *COMMON, *overrides, f"out_dir={out}"]
        print("+", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        done = sorted(out.glob("compare-*/compare.csv"))
    return pd.read_csv(done[-1], index_col=0)


def cell(stats: pd.DataFrame, label: str, metric: str) -> str:
    if f"{metric}_mean" not in stats or label not in stats.index:
        return ""
    mean, std, n = (stats.loc[label, f"{metric}_{s}"] for s in ("mean", "std", "n"))
    if not n:
        return "-"  # the method has no such model (e.g. FedRep's global model)
    return f"{100 * mean:.1f}" + ("" if pd.isna(std) else f" ± {100 * std:.1f}") + f" (n={int(n)})"


def table(name: str, args) -> str:
    algorithms, settings, columns = SCENARIOS[name]
    results = {s: run_setting(Path(args.out_dir) / name / s.replace(" ", "_").replace("%", "pct"), algorithms,
                              args.seeds, overrides, args.jobs) for s, overrides in settings.items()}
    heads = [f"{h}: {s}" if len(settings) > 1 else h for s in settings for h in columns]
    lines = [f"### {name}", "", "| algorithm | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    for label in algorithms.split(","):
        cells = [cell(results[s], label, m) for s in settings for m in columns.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out-dir", default="runs/scenarios")
    ap.add_argument("--out", default="benchmarks/results/scenarios.md")
    args = ap.parse_args()
    text = "\n\n".join(table(name, args) for name in args.scenarios.split(","))
    text += ("\n\nAccuracies in %, mean ± sample std (ddof=1) over seeds, of the per-run means over the last 10 "
             "evaluations.\n")
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
