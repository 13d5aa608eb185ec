"""``pflalign`` command line: the composition root (Ray, W&B and Tune are imported lazily).

Exit codes: 0 success, 2 bad input (one line on stderr), 130 interrupted (Ctrl-C), 1 anything else
(a run that stopped early says in one line why, and how to resume it).
"""
from __future__ import annotations

import argparse
import errno
import sys
import traceback
from contextlib import nullcontext
from pathlib import Path

from .errors import InputError, RunStopped

LISTS = ("algorithms", "datasets", "models", "partitions", "keys")


def _keys_help() -> str:
    from .config import describe

    rows = [f"  {k:<26} {str(d):<18} {h}" for k, d, h in describe()]
    return ("config keys (KEY=VALUE, defaults shown; algorithm hyperparameters are algo.<name>,\n"
            "see `pflalign list algorithms`):\n" + "\n".join(rows))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pflalign", description="Personalized federated learning with gradient alignment (pFLAlign) "
        "and pFL baselines, on Lightning clients, locally or on Ray.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run one federation", epilog=_keys_help(),
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Run one experiment; prints the run directory as its last line.")
    run.add_argument("--config", help="YAML experiment file (e.g. configs/default.yaml)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoint")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.alpha=0.5")
    cmp = sub.add_parser("compare", help="run algorithms x seeds on identical partitions and tabulate",
                         description="Every algorithm runs on the same data partition and client-sampling "
                         "stream for a given seed; prints a mean +- std table and writes it as .md/.csv.")
    cmp.add_argument("--algorithms", required=True, help="comma-separated, e.g. pflalign,fedavg_ft,local")
    cmp.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    cmp.add_argument("--config", help="YAML experiment file shared by all runs")
    cmp.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (local runtime)")
    cmp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every run")
    tun = sub.add_parser("tune", help="hyperparameter sweep with Ray Tune (ASHA), selected on validation",
                         description="Run the sweep of a sweep file (configs/sweeps/*.yaml); writes best.yaml and "
                         "trials.csv/.md into the sweep directory and prints it as its last line.")
    tun.add_argument("--sweep", metavar="FILE", help="sweep file, e.g. configs/sweeps/pflalign.yaml")
    tun.add_argument("--resume", metavar="SWEEP_DIR", help="continue an interrupted sweep (errored trials too)")
    tun.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                     help="base config overrides (rounds=30); sweep.KEY=VALUE sets sweep keys (sweep.num_samples=8)")
    rep = sub.add_parser("report", help="tables (mean +- std over seeds) and plots from run/compare/sweep dirs")
    rep.add_argument("dirs", nargs="+", metavar="DIR", help="run directories or directories containing runs")
    rep.add_argument("--out", help="output directory (default: DIR when one is given, else ./report)")
    lst = sub.add_parser("list", help="list algorithms, datasets, models, partitions or config keys")
    lst.add_argument("what", nargs="?", choices=LISTS, default="algorithms")
    return parser


def cmd_run(args) -> int:
    from callbacks import default_callbacks

    from .config import load_config

    if args.resume:
        if args.config:
            raise InputError("--resume takes the run's own config.yaml; drop --config")
        from .experiment import finished_rounds, load_run_config

        cfg = load_run_config(Path(args.resume), args.overrides)
        done = finished_rounds(Path(args.resume))
        if done is not None and done >= cfg.rounds:
            print(f"pflalign: {args.resume} already finished its {done} rounds; nothing to resume "
                  f"(raise rounds=... to continue it)", file=sys.stderr)
            print(args.resume)
            return 0
    else:
        cfg = load_config(args.config, args.overrides)
    ray_scope = nullcontext()
    if cfg.runtime == "ray":  # a local instance starts while torch and the engine load
        from .runtime.cluster import connected

        ray_scope = connected(cfg.ray, "pflalign.experiment", "pflalign.runtime.ray")
    with ray_scope:
        from .experiment import launch

        run_dir = launch(cfg, default_callbacks, resume=Path(args.resume) if args.resume else None)
    print(run_dir)
    return 0


def cmd_compare(args) -> int:
    from datetime import datetime

    from callbacks import default_callbacks

    from .compare import load_results, run_many, summary_table, write_table
    from .config import SEED_MAX, load_config

    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--seeds must be comma-separated integers, got '{args.seeds}'") from None
    for flag, values, example in (("--algorithms", algorithms, "pflalign,fedavg_ft"), ("--seeds", seeds, "0,1,2")):
        if not values:
            raise InputError(f"{flag} needs at least one value, e.g. {example} (got '{getattr(args, flag[2:])}')")
        if len(set(values)) < len(values):
            raise InputError(f"{flag} lists {next(v for v in values if values.count(v) > 1)} twice")
    if not all(0 <= s <= SEED_MAX for s in seeds):
        raise InputError(f"--seeds: {next(s for s in seeds if not 0 <= s <= SEED_MAX)} is out of range "
                         f"(seeds are integers 0..{SEED_MAX})")
    if args.jobs < 1:
        raise InputError(f"--jobs must be >= 1 (got {args.jobs})")
    base = load_config(args.config, args.overrides)  # validates shared keys once
    if base.name is not None:
        raise InputError("name cannot be set for compare: every run gets its own directory under out_dir/compare-<time>")
    if base.label is not None and len(algorithms) > 1:
        raise InputError("label would give every algorithm of the comparison the same row; drop it (labels default "
                         "to the algorithm)")
    out = Path(base.out_dir) / f"compare-{datetime.now():%Y%m%d-%H%M%S}"
    # Validate every run's config before any starts (algo.* keys must fit each algorithm).
    cfgs = [load_config(args.config, [*args.overrides, f"algorithm={a}", f"seed={s}", f"out_dir={out}"])
            for a in algorithms for s in seeds]
    jobs = 1 if base.runtime == "ray" else args.jobs
    run_dirs = run_many(cfgs, jobs, default_callbacks)
    print(write_table(summary_table(load_results(run_dirs)), out / "compare"))
    print(out)
    return 0


def cmd_tune(args) -> int:
    from tune import load_sweep

    if args.resume:
        if args.sweep or args.overrides:
            raise InputError("--resume continues the sweep saved in SWEEP_DIR/sweep.yaml; drop --sweep and overrides")
    elif not args.sweep:
        raise InputError("give --sweep FILE (or --resume SWEEP_DIR)")
    else:
        sweep = load_sweep(args.sweep, args.overrides)  # bad input fails here, before Ray starts
    from tune.runner import resume_sweep, run_sweep, table_markdown

    out = resume_sweep(Path(args.resume)) if args.resume else run_sweep(sweep)
    print(table_markdown(out.table))
    if out.best is not None:
        print(f"best: trial {out.best['trial']} -> {out.sweep_dir / 'best.yaml'}")
    if out.incomplete:
        print(f"pflalign: {out.incomplete} trial(s) failed or were interrupted; continue with: "
              f"pflalign tune --resume {out.sweep_dir}", file=sys.stderr)
    print(out.sweep_dir)
    return 1 if out.incomplete else 0


def cmd_report(args) -> int:
    from .report import write_report

    if args.out is not None and not args.out.strip():
        raise InputError("--out must name a directory (got an empty string)")
    out = write_report([Path(d) for d in args.dirs], Path(args.out) if args.out else None)
    print(out)
    return 0


def cmd_list(args) -> int:
    import dataclasses

    from .algorithms import ALGORITHMS
    from .config import describe
    from .data import DATASETS, PARTITIONS
    from .models import MODELS

    if args.what == "algorithms":
        for name, cls in ALGORITHMS.items():
            print(f"{name:<12} {(cls.__doc__ or sys.modules[cls.__module__].__doc__ or '').strip().splitlines()[0]}")
            for f in dataclasses.fields(cls.Hparams):
                print(f"    algo.{f.name:<20} {str(f.default):<10} {f.metadata.get('help', '')}")
    elif args.what == "keys":
        for key, default, help_ in describe():
            print(f"{key:<26} {str(default):<18} {help_}")
    else:
        print("\n".join({"datasets": DATASETS, "models": MODELS, "partitions": PARTITIONS}[args.what]))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"run": cmd_run, "compare": cmd_compare, "list": cmd_list, "tune": cmd_tune,
                "report": cmd_report}[args.command](args)
    except InputError as e:
        print(f"pflalign: error: {e}", file=sys.stderr)
        return 2
    except RunStopped as e:
        print(f"pflalign: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("pflalign: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno != errno.ENOSPC:
            traceback.print_exc()
            return 1
        print(f"pflalign: no space left on device (ENOSPC) writing {e.filename or 'a file'}", file=sys.stderr)
        return 1
    except Exception:  # noqa: BLE001 - the contract: anything else is exit 1 with its traceback
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
