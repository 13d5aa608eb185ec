"""The accuracy suite: every setting x every algorithm x seeds, with fair tuning, on test.

1. Tune (validation only). For each setting, pFLAlign and each method in ``TUNED`` get the same
   budget: one Ray Tune sweep of ``--trials`` trials (the defaults first, then random draws),
   ASHA on ``val_acc_last10``, ``--tune-rounds`` rounds, seed 0. A method's search space is its
   packaged sweep's space (``pflalign/configs/sweeps/<method>.yaml``) when there is one, else
   every hyperparameter the algorithm declares a sweep range for; ``train.lr`` always, over the
   setting's range.
   ALGORITHM.md's control (FedAvg+FT with persistent momentum, ``fedavg_ft_pm``) is tuned too, in
   its own space, and so are pFLAlign's two PAC-Bayes variants (``VARIANTS``), in pFLAlign's.
2. Test. Every algorithm (tuned ones with their best trial's values, the others with their
   defaults), the control, the variants and pFLAlign's ablation (its tuned config with
   mechanism 1 / 2 / both off, and gate A) on each seed, ``rounds`` rounds, on the same
   partitions and sampling stream per seed.
3. Statistics (``accuracy_stats.py``): pFLAlign paired by seed against every tuned method per
   setting, win/tie/loss across settings, mean ranks with their spread, and each variant
   against the default.

    python benchmarks/accuracy.py                          # all settings (hours on 2 CPU cores)
    python benchmarks/accuracy.py --settings synthetic --seeds 0,1,2 --jobs 2

Writes ``benchmarks/results/accuracy/<setting>/`` (table.md/csv, tuning.md, gradvar.md,
``pflalign report`` plots, and what the summary reads back: runs.csv, curves.csv, gradvar.csv,
diverged.json, protocol.json last) and ``benchmarks/results/accuracy/summary.md``. Finished sweeps
and runs under ``--runs`` are reused, so an interrupted suite continues where it stopped. The
summary covers every setting stored under ``--results`` with this invocation's protocol (trials,
tuning rounds, seeds, algorithms, overrides), so the suite may also be run a few settings at a time,
on other machines or after ``--runs`` is gone (``--summary-only`` just rewrites the summary).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import yaml

from accuracy_stats import statistics_section
from gradvar import collect as collect_gradvar
from gradvar import summarize as summarize_gradvar
from pflalign.algorithms import ALGORITHMS
from pflalign.checkpoint import experiment_identity, identity_of
from pflalign.compare import format_table, load_results, metric_names, summary_table
from pflalign.config import load_config, packaged, to_dict
from pflalign.errors import NonFiniteLossError
from pflalign.experiment import launch
from pflalign.report import history_rows, plot_history, read_history, write_report
from tune import load_sweep
from tune.runner import run_sweep
from tune.spec import nest

ROOT = Path(__file__).resolve().parents[1]
FMNIST = ["data.dataset=fmnist", "data.root=/usr/share/datasets/fashion-mnist", "data.max_samples=4000",
          "model.name=mlp"]
# name -> (overrides, train.lr search range). Sizes keep one run to ~1 CPU-minute or less.
SETTINGS = {
    "mnist1d-dir": ([], (0.01, 0.3)),
    "mnist1d-path": (["data.partition=pathological", "data.classes_per_client=2"], (0.01, 0.3)),
    "fmnist-dir": (FMNIST, (0.01, 0.3)),
    "fmnist-path": ([*FMNIST, "data.partition=pathological", "data.classes_per_client=2"], (0.01, 0.3)),
    "synthetic": (["data.dataset=synthetic", "data.partition=natural", "data.num_clients=30",
                   "model.hidden=[64]"], (0.01, 0.3)),
    "shakespeare": (["data.dataset=shakespeare", f"data.root={ROOT.parent / 'shared/data/tinyshakespeare.txt'}",
                     "model.name=charlstm", "model.width=64", "data.seq_len=40", "data.client_samples=128",
                     "data.num_clients=10", "train.lr=0.5", "rounds=30"], (0.1, 2.0)),
}
COMMON = ["rounds=40", "eval_every=2", "stability_window=10", "data.val_fraction=0.2", "checkpoint_every=0",
          "progress=false", "wandb.mode=disabled"]
# ALGORITHM.md's control (isolates the preconditioner from plain persistence), tuned like a method
# in its own space.
CONTROLS = {"fedavg_ft_pm": ("fedavg_ft", ["algo.persistent_momentum=true"])}
# pFLAlign's PAC-Bayes variants (options, not the default), tuned with pFLAlign's space and budget.
VARIANTS = {"pflalign_tensor_gates": ("pflalign", ["algo.gate_shape=tensor"]),
            "pflalign_client_kappa": ("pflalign", ["algo.kappa_mode=client"])}
TUNED = ["pflalign", *VARIANTS, "fedavg_ft_pm", "local", "fedavg_ft", "ditto", "apfl", "fedper", "fedrep",
         "fedala", "fedrod", "fedas", "fedcac", "fedbabu", "fedcp", "gpfl"]
# pFLAlign's tuned config with these changes (they win over tuned values).
ABLATION = {"pflalign: mechanism 1 only": ["algo.m2=false"], "pflalign: mechanism 2 only": ["algo.m1=false"],
            "pflalign: neither (= FedAvg+FT)": ["algo.m1=false", "algo.m2=false"],
            "pflalign: gate A": ["algo.gate_scope=head", "algo.gamma0=1", "algo.lam_g=0"]}
FOCUS = ["pflalign", "pflalign: mechanism 1 only", "fedavg_ft_pm", "local", "fedavg_ft", "fedrep", "ditto"]
DIVERGED = "diverged.json"
PROTOCOL = "protocol.json"  # written last: a setting without it is incomplete
COLUMNS = ["acc (weighted, last 10)", "worst client", "bottom 10%", "stability std", "acc (mean, last 10)",
           "global model acc"]


def search_space(method: str, lr_range: tuple[float, float], base: list[str]) -> dict:
    sweep_file = packaged("sweep").get(method)
    if sweep_file is not None:
        space = dict(yaml.safe_load(sweep_file.read_text())["space"])
    else:
        hparams = load_config(None, [*base, f"algorithm={method}"]).algo
        space = {f"algo.{f.name}": "default" for f in type(hparams).__dataclass_fields__.values()
                 if f.metadata.get("sweep")}
    return {**space, "train.lr": f"loguniform({lr_range[0]}, {lr_range[1]})"}


def tune_method(method: str, algorithm: str, extra: list[str], base: list[str], lr_range, args,
                sweeps_dir: Path) -> dict:
    """The best trial's values of the searched keys (a finished sweep of the same spec is reused)."""
    spec = {"name": method, "space": search_space(algorithm, lr_range, base), "num_samples": args.trials,
            "include_defaults": True, "seed": 0, "metric": "val_acc_last10",
            "scheduler": {"name": "asha", "grace_period": 5, "reduction_factor": 2}}
    sweeps_dir.mkdir(parents=True, exist_ok=True)
    (sweeps_dir / f"{method}.yaml").write_text(yaml.safe_dump(spec))
    sweep = load_sweep(sweeps_dir / f"{method}.yaml", [*base, f"algorithm={algorithm}", *extra,
                                                       f"rounds={args.tune_rounds}", "eval_every=1", "seed=0",
                                                       f"out_dir={sweeps_dir}"])
    done = [p for p in sorted(sweeps_dir.glob(f"{method}-*/best.yaml"))
            if (p.parent / "sweep.yaml").read_text() == sweep.to_yaml()]
    if not done:
        from pflalign.config import RayConfig
        from pflalign.runtime.cluster import connect

        connect(RayConfig(local_cpus=args.jobs))  # no-op when Ray is up already
        outcome = run_sweep(sweep)
        if outcome.best is None:
            raise SystemExit(f"sweep {outcome.sweep_dir} did not finish: pflalign tune --resume it, then rerun"
                             if outcome.incomplete else f"sweep {outcome.sweep_dir}: every trial diverged")
        done = [outcome.sweep_dir / "best.yaml"]
    trials = pd.read_csv(done[-1].parent / "trials.csv", dtype={"trial": str})
    best = trials.iloc[0]
    return {k: best[k].item() if hasattr(best[k], "item") else best[k] for k in trials.columns
            if k.startswith(("algo.", "train.")) and pd.notna(best[k])} | {"val_acc_last10": best["val_acc_last10"]}


def setting_configs(name: str, args) -> tuple[list, pd.DataFrame]:
    overrides, lr_range = SETTINGS[name]
    base = [*COMMON, *overrides, *args.overrides]
    out = args.runs / name
    methods = {m: (m, []) for m in args.algorithms} | {c: v for c, v in {**CONTROLS, **VARIANTS}.items()
                                                        if v[0] in args.algorithms}
    tuned = {m: tune_method(m, *methods[m], base, lr_range, args, out / "tuning")
             for m in TUNED if m in methods and args.trials > 0}
    variants = {m: (m, algorithm, extra) for m, (algorithm, extra) in methods.items()}
    if "pflalign" in args.algorithms:
        variants |= {label: ("pflalign", "pflalign", ov) for label, ov in ABLATION.items()}
    cfgs = []
    for label, (method, algorithm, extra) in variants.items():
        params = {k: v for k, v in tuned.get(method, {}).items() if k != "val_acc_last10"}
        changes = nest({k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in extra)})
        for seed in args.seeds:
            run_name = f"{label.replace(' ', '_').replace(':', '').replace('(', '').replace(')', '')}-s{seed}"
            cfgs.append(load_config(None, [*base, f"algorithm={algorithm}", f"seed={seed}", f"out_dir={out / 'test'}",
                                           f"experiment=accuracy-{name}"],
                                    nest(params), changes, {"label": label, "name": run_name}))
    tuning = pd.DataFrame([{"method": m, "val acc (tuning, %)": round(v["val_acc_last10"] * 100, 1),
                            "chosen": ", ".join(f"{k}={x:.3g}" if isinstance(x, float) else f"{k}={x}"
                                                for k, x in v.items() if k != "val_acc_last10")}
                           for m, v in tuned.items()])
    return cfgs, tuning


def same_experiment(saved: dict, cfg) -> bool:
    """``saved`` (a results.json config) is ``cfg``'s experiment: the same keys that decide the
    numbers, where keys added to pflalign since it ran count as their defaults."""
    now = experiment_identity(cfg)
    defaults = experiment_identity(load_config(None, [f"algorithm={cfg.algorithm}"]))
    old = identity_of(json.loads(json.dumps(saved)))
    return saved.get("rounds") == cfg.rounds and \
        all(old.get(k, defaults.get(k)) == json.loads(json.dumps(v)) for k, v in now.items())


def finished(cfg) -> bool:
    """A run of this config has finished (or diverged) under its name."""
    for record in ("results.json", DIVERGED):
        path = Path(cfg.out_dir) / cfg.name / record
        if path.is_file() and same_experiment(json.loads(path.read_text())["config"], cfg):
            return True
    return False


def run_one(cfg) -> None:
    """One test run; a diverged one (non-finite loss) is recorded, not fatal: it is a result."""
    try:
        launch(cfg, lambda cfg, run_dir: [])  # metrics.jsonl only
    except NonFiniteLossError as e:
        run_dir = Path(cfg.out_dir) / cfg.name
        (run_dir / DIVERGED).write_text(json.dumps({"label": cfg.label, "seed": cfg.seed, "error": str(e),
                                                    "config": to_dict(cfg)}))


def protocol(args) -> dict:
    """What must match for stored settings to share one summary."""
    return {"trials": args.trials, "tune_rounds": args.tune_rounds, "seeds": args.seeds,
            "algorithms": args.algorithms, "overrides": args.overrides}


def run_setting(name: str, args) -> None:
    """Tune, run, and write the setting's tables and the files the summary reads back."""
    cfgs, tuning = setting_configs(name, args)
    todo = [c for c in cfgs if not finished(c)]
    for c in todo:  # an interrupted run, or a run of an older config under this name, starts over
        shutil.rmtree(Path(c.out_dir) / c.name, ignore_errors=True)
    with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
        list(pool.map(run_one, todo))
    dirs = [Path(c.out_dir) / c.name for c in cfgs if (Path(c.out_dir) / c.name / "results.json").is_file()]
    diverged = [json.loads((Path(c.out_dir) / c.name / DIVERGED).read_text()) for c in cfgs
                if (Path(c.out_dir) / c.name / DIVERGED).is_file()]
    if not dirs:
        raise SystemExit(f"{name}: every run diverged ({diverged[0]['error']})")
    dest = args.results / name
    (dest / PROTOCOL).unlink(missing_ok=True)
    write_report(dirs, dest)  # runs.csv among them
    results = load_results(dirs)
    table = format_table(summary_table(results))
    order = results.groupby("label")[COLUMNS[0]].mean().sort_values(ascending=False).index
    table = table.loc[order, ["seeds", *[c for c in COLUMNS if c in table]]]
    table.to_csv(dest / "table.csv")
    note = "".join(f"\nDiverged (non-finite loss; left out of its row, which so has fewer seeds): "
                   f"{d['label']}, seed {d['seed']}: {d['error']}\n" for d in diverged)
    (dest / "table.md").write_text(table.to_markdown() + "\n" + note)
    (dest / "tuning.md").write_text(tuning.to_markdown(index=False) + "\n" if len(tuning) else "no tuning\n")
    (dest / DIVERGED).write_text(json.dumps([{k: d[k] for k in ("label", "seed", "error")} for d in diverged]))
    gv = collect_gradvar(dirs)
    gv = summarize_gradvar(gv).round(3).reset_index() if not gv.empty else pd.DataFrame(columns=["label"])
    if len(gv):
        (dest / "gradvar.md").write_text(gv.set_index("label").to_markdown() + "\n")
    gv.to_csv(dest / "gradvar.csv", index=False)
    focus = [(label, d) for label, d in zip(results["label"], dirs) if label in FOCUS]
    (dest / "curves.csv").unlink(missing_ok=True)
    if focus:
        rows = history_rows(pd.DataFrame({"setting": name, "label": [label for label, _ in focus],
                                          "history": [read_history(d) for _, d in focus]}))
        rows.to_csv(dest / "curves.csv", index=False)
    (dest / PROTOCOL).write_text(json.dumps(protocol(args), indent=1) + "\n")
    print(f"\n## {name}\n\n{table.to_markdown()}\n{note}", flush=True)


def stored_settings(args) -> tuple[list[str], list[str]]:
    """The settings stored under ``--results`` with this protocol, and those stored with another."""
    saved = {s: json.loads((args.results / s / PROTOCOL).read_text()) for s in SETTINGS
             if (args.results / s / PROTOCOL).is_file()}
    ours = protocol(args)
    return [s for s, p in saved.items() if p == ours], [s for s, p in saved.items() if p != ours]


def load_setting(name: str, results_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[dict]]:
    """A stored setting's per-run results (headed as ``load_results``), gradient variance, focus
    curves (empty if not stored) and diverged runs."""
    dest = results_dir / name
    runs = pd.read_csv(dest / "runs.csv").rename(columns={v: k for k, v in metric_names().items()})
    runs = runs[["label", "seed", *[c for c in metric_names() if c in runs]]].assign(setting=name)
    gv = pd.read_csv(dest / "gradvar.csv")
    curves = pd.read_csv(dest / "curves.csv") if (dest / "curves.csv").is_file() else pd.DataFrame()
    diverged = [{**d, "setting": name} for d in json.loads((dest / DIVERGED).read_text())]
    return runs, gv.assign(setting=name) if len(gv) else gv, curves, diverged


def across_settings(results: pd.DataFrame, labels, settings: list[str], column: str = COLUMNS[0]) -> pd.DataFrame:
    """``column`` as mean ± sample std over seeds, one column per setting, plus the mean rank
    (stability: lower ranks first). A cell over fewer seeds than its setting ran (a diverged run)
    says n=k."""
    rows = results[results["label"].isin(labels)]
    if rows.empty:
        return pd.DataFrame({"(no runs)": []})
    stats = rows.groupby(["label", "setting"])[column].agg(mean="mean", std=lambda x: x.std(ddof=1), n="count")
    seeds = results.groupby("setting")["seed"].nunique()
    short = stats["n"] < seeds.reindex(stats.index.get_level_values("setting")).to_numpy()
    means = stats["mean"].unstack()[settings] * 100
    wide = ((stats["mean"] * 100).map("{:.1f}".format) + " ± " + (stats["std"] * 100).map("{:.1f}".format)
            + stats["n"].map(" (n={})".format).where(short, "")).unstack()[settings]
    wide.insert(0, "mean rank", means.rank(ascending=column == "stability std").mean(axis=1).round(1))
    return wide.sort_values("mean rank")


def focus_curves(curves: pd.DataFrame, path: Path) -> bool:
    """Accuracy vs round of pFLAlign, the control and the reference baselines, one panel per setting
    (False: none of them ran, nothing drawn)."""
    if curves.empty:  # --algorithms with none of them
        return False
    plot_history(curves, path)
    return True


def heatmap(results: pd.DataFrame, settings: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = results.groupby(["label", "setting"])[COLUMNS[0]].mean().unstack()[settings] * 100
    acc = acc.loc[acc.rank(ascending=False).mean(axis=1).sort_values().index]
    fig, ax = plt.subplots(figsize=(1.6 * len(settings) + 3, 0.32 * len(acc) + 1.5))
    ax.imshow(acc.rank(ascending=False).values, cmap="RdYlGn_r", aspect="auto")
    for (i, j), v in pd.DataFrame(acc.values).stack().items():
        ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7)
    ax.set(xticks=range(len(settings)), yticks=range(len(acc)), title="weighted personalized test acc (%), "
           "colour = rank in the setting")
    ax.set_xticklabels(settings, rotation=20)
    ax.set_yticklabels(acc.index, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {', '.join(SETTINGS)}")
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS), help="comma-separated (default: all)")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--trials", type=int, default=16, help="sweep trials per tuned method (0: no tuning)")
    ap.add_argument("--tune-rounds", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=2, help="runs (and trials) in parallel")
    ap.add_argument("--runs", type=Path, default=ROOT / "benchmarks/results/runs/accuracy")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks/results/accuracy")
    ap.add_argument("--summary-only", action="store_true", help="run nothing; rewrite summary.md from the "
                    "settings stored under --results")
    ap.add_argument("overrides", nargs="*", help="extra KEY=VALUE for every run and trial (e.g. rounds=60)")
    args = ap.parse_args()
    args.settings, args.algorithms = args.settings.split(","), args.algorithms.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    unknown = sorted(set(args.settings) - set(SETTINGS)) + sorted(set(args.algorithms) - set(ALGORITHMS))
    if unknown:
        raise SystemExit(f"unknown setting or algorithm: {unknown[0]}")
    if not args.summary_only:
        for name in args.settings:
            run_setting(name, args)
    settings, other = stored_settings(args)
    if not settings:
        raise SystemExit(f"no setting under {args.results} was stored with this protocol ({protocol(args)})")
    parts = [load_setting(name, args.results) for name in settings]
    results = pd.concat([r for r, _, _, _ in parts])
    gradvar = pd.concat([g for _, g, _, _ in parts if not g.empty] or [pd.DataFrame()])
    diverged = [d for _, _, _, ds in parts for d in ds]
    heatmap(results[results["label"].isin([*args.algorithms, *CONTROLS, *VARIANTS])], settings,
            args.results / "summary.png")
    curves = focus_curves(pd.concat([c for _, _, c, _ in parts]), args.results / "acc_vs_round.png")
    no_curves = [name for name, (_, _, c, _) in zip(settings, parts) if c.empty]
    methods = [*args.algorithms, *[c for c, (algorithm, _) in CONTROLS.items() if algorithm in args.algorithms]]
    variants = [v for v in VARIANTS if "pflalign" in args.algorithms]
    text = ["# Accuracy suite summary", "", f"Settings: {', '.join(settings)}"
            + (f" (stored with another protocol, left out: {', '.join(other)})" if other else "") + ".",
            f"Protocol: {args.trials} trials per tuned method, {args.tune_rounds} tuning rounds, seeds {args.seeds}"
            + (f", overrides {args.overrides}" if args.overrides else "") + ".",
            "", f"Mean ± sample std over seeds {args.seeds}, in %; mean rank over the settings. A cell marked "
            "(n=k) lost runs to divergence (listed below): its mean, and so its rank, are over the surviving seeds.",
            "", "## Personalized test accuracy (weighted by test size, last 10 evaluations)", "",
            across_settings(results, methods, settings).to_markdown(), "",
            "## Bottom 10% of clients (final round)", "",
            across_settings(results, methods, settings, "bottom 10%").to_markdown(), "",
            "## Stability (std of the mean accuracy over the last `stability_window` evaluations, points)", "",
            across_settings(results, methods, settings, "stability std").to_markdown(), "",
            "## pFLAlign ablation (weighted accuracy)", "",
            across_settings(results, ["pflalign", *VARIANTS, *ABLATION, *CONTROLS], settings).to_markdown(), "",
            *statistics_section(results, "pflalign", [m for m in TUNED if m in methods and m != "pflalign"],
                                variants, [m for m in methods if m != "pflalign"], COLUMNS[0], len(SETTINGS)),
            "## Diverged runs (non-finite loss; left out of the tables above)", "",
            *([f"- {d['setting']}: {d['label']}, seed {d['seed']}: {d['error']}" for d in diverged] or ["none"]), "",
            "## Gradient variance (pFLAlign's diagnostic; mean over measured rounds and seeds)", "",
            gradvar.to_markdown(index=False) if len(gradvar) else "(no pFLAlign runs)", "", "![summary](summary.png)", "",
            *(["![accuracy vs round](acc_vs_round.png)", ""] if curves else []),
            *([f"(No per-round curves stored for {', '.join(no_curves)}: run before curves.csv was kept.)", ""]
              if curves and no_curves else [])]
    (args.results / "summary.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
