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

LISTS = ("algorithms", "datasets", "models", "partitions", "keys", "configs")


class IntermixedParser(argparse.ArgumentParser):
    """A subcommand's parser that takes options and ``KEY=VALUE`` overrides in any order
    (``pflalign run rounds=2 --config fmnist wandb.mode=disabled``).

    argparse's intermixed parsing does exactly this, but the top-level parser cannot use it (it
    refuses parsers with subcommands), so each subcommand's parser switches to it when the
    top-level parser hands it its arguments.
    """

    _inside = False  # argparse's intermixed parsing calls parse_known_args itself (its two passes)

    def parse_known_args(self, args=None, namespace=None):
        if self._inside:
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def _keys_help() -> str:
    from .config import describe

    rows = [f"  {k:<26} {str(d):<18} {h}" for k, d, h in describe()]
    return ("config keys (KEY=VALUE, defaults shown; algorithm hyperparameters are algo.<name>,\n"
            "see `pflalign list algorithms`):\n" + "\n".join(rows))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pflalign", description="Personalized federated learning with gradient alignment (pFLAlign) "
        "and pFL baselines, on Lightning clients, locally or on Ray.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=IntermixedParser)
    run = sub.add_parser("run", help="run one federation", epilog=_keys_help(),
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Run one experiment; prints the run directory as its last line.\n"
                         "Options and KEY=VALUE overrides may come in any order.")
    run.add_argument("--config", metavar="NAME|FILE",
                     help="experiment: a packaged preset (`pflalign list configs`, e.g. fmnist) or a YAML file")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoint")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.alpha=0.5")
    cmp = sub.add_parser("compare", help="run algorithms/variants x seeds on identical partitions and tabulate",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Every variant runs on the same data partition and client-sampling stream for "
                         "a given seed;\nprints a mean +- std table and writes it as compare.md/.csv with every run "
                         "under out_dir/compare-<time>/.",
                         epilog="A variant sets only algorithm, algo.* and train.* (not train.local_epochs); every "
                         "other key is shared.\nPrecedence, last wins: defaults <- --config <- KEY=VALUE <- the variant's keys "
                         "<- seed (--seeds),\nlabel, out_dir and name (set per run by compare).\n\n"
                         "variants file (YAML), label -> keys or -> a config file (relative to the variants file):\n"
                         "  pflalign: {algorithm: pflalign}\n"
                         "  gateA: {algorithm: pflalign, algo.gate_scope: head, algo.gamma0: 1, algo.lam_g: 0}\n"
                         "  ditto-l1: {algorithm: ditto, algo.lam: 1}\n"
                         "  tuned: runs/pflalign-20261124-035610/best.yaml   # its algorithm, algo.*, train.*")
    cmp.add_argument("--algorithms", metavar="A,B,...",
                     help="comma-separated, e.g. pflalign,fedavg_ft,local: one variant each, labelled by its name")
    cmp.add_argument("--variants", metavar="FILE", help="YAML file of labelled variants (below); combines with "
                     "--algorithms (labels must differ)")
    cmp.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    cmp.add_argument("--config", metavar="NAME|FILE", help="experiment shared by all runs: a packaged preset "
                     "(`pflalign list configs`) or a YAML file")
    cmp.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (local runtime); each prints "
                     "a labelled line every 10%% of its rounds")
    cmp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every run")
    tun = sub.add_parser("tune", help="hyperparameter sweep with Ray Tune (ASHA), selected on validation",
                         description="Run the sweep of a sweep file or packaged sweep (`pflalign list configs`); "
                         "writes best.yaml and trials.csv/.md into the sweep directory and prints it as its last line.")
    tun.add_argument("--sweep", metavar="NAME|FILE", help="a packaged sweep (e.g. pflalign) or a sweep YAML file")
    tun.add_argument("--resume", metavar="SWEEP_DIR", help="continue an interrupted sweep (errored trials too)")
    tun.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                     help="base config overrides (rounds=30); sweep.KEY=VALUE sets sweep keys (sweep.num_samples=8)")
    rep = sub.add_parser("report", help="tables (mean +- std over seeds) and plots from run/compare/sweep dirs")
    rep.add_argument("dirs", nargs="+", metavar="DIR", help="run directories or directories containing runs")
    rep.add_argument("--out", help="output directory (default: DIR when one is given, else ./report)")
    rep.add_argument("--baseline", metavar="LABEL", help="label the paired per-client plot compares every other "
                     "label against (default: fedavg when present, else the table's last row)")
    rep.add_argument("--wandb", action="store_true", help="also save a W&B Report of the runs (needs wandb-workspaces: "
                     "pip install 'pflalign[reports]', an API key and network; checked before anything is written)")
    lst = sub.add_parser("list", help="list algorithms, datasets, models, partitions, config keys or packaged configs")
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
    from callbacks import default_callbacks
    from callbacks.progress import LINES_ENV

    from .compare import algorithm_variants, load_results, plan, read_variants, run_many, summary_table, write_table
    from .config import SEED_MAX

    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()] if args.algorithms is not None else None
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--seeds must be comma-separated integers, got '{args.seeds}'") from None
    for flag, values, example in (("--algorithms", algorithms, "pflalign,fedavg_ft"), ("--seeds", seeds, "0,1,2")):
        if values is None:
            continue
        if not values:
            raise InputError(f"{flag} needs at least one value, e.g. {example} (got '{getattr(args, flag[2:])}')")
        if len(set(values)) < len(values):
            raise InputError(f"{flag} lists {next(v for v in values if values.count(v) > 1)} twice")
    if algorithms is None and args.variants is None:
        raise InputError("compare needs --algorithms A,B,... or --variants FILE (or both)")
    if not all(0 <= s <= SEED_MAX for s in seeds):
        raise InputError(f"--seeds: {next(s for s in seeds if not 0 <= s <= SEED_MAX)} is out of range "
                         f"(seeds are integers 0..{SEED_MAX})")
    if args.jobs < 1:
        raise InputError(f"--jobs must be >= 1 (got {args.jobs})")
    variants = algorithm_variants(algorithms or []) + (read_variants(args.variants) if args.variants else [])
    cfgs, out, notes = plan(variants, seeds, args.config, args.overrides)  # every run validated before any starts
    for note in notes:
        print(f"pflalign: note: {note}", file=sys.stderr)
    jobs = 1 if cfgs[0].runtime == "ray" else min(args.jobs, len(cfgs))
    print(f"pflalign: compare: {len(variants)} variant(s) x {len(seeds)} seed(s), {jobs} at a time, into {out}",
          file=sys.stderr)
    # Runs sharing the terminal: labelled progress lines instead of bars, no W&B banners.
    quiet = {"WANDB_SILENT": "true", LINES_ENV: "lines"} if jobs > 1 else {}
    run_dirs = run_many(cfgs, jobs, default_callbacks, env=quiet)
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
    elif out.best is None:
        print("pflalign: every trial diverged (non-finite loss): no best config; narrow the space "
              "(e.g. a lower train.lr range)", file=sys.stderr)
    print(out.sweep_dir)
    return 1 if out.incomplete or out.best is None else 0


def cmd_report(args) -> int:
    from .report import write_report

    if args.out is not None and not args.out.strip():
        raise InputError("--out must name a directory (got an empty string)")
    dirs, plan = [Path(d) for d in args.dirs], None
    if args.wandb:  # saving needs the package, a key and the host: checked before anything is written
        from callbacks.wandb_report import check_online, plan_report

        plan = plan_report(dirs)
        check_online()
    out = write_report(dirs, Path(args.out) if args.out else None, args.baseline)
    if plan is not None:
        from callbacks.wandb_report import publish

        if plan.offline:
            print(f"pflalign: note: {len(plan.offline)} run(s) here logged offline show in the report once uploaded: "
                  f"wandb sync {' '.join(map(str, plan.offline))}", file=sys.stderr)
        print(f"W&B report: {publish(plan)}")
    print(out)
    return 0


def _summary(cls: type) -> str:
    """The first paragraph of an algorithm's docstring (its module's when the class has none)."""
    import inspect

    doc = inspect.cleandoc(cls.__doc__ or sys.modules[cls.__module__].__doc__ or "")
    return " ".join(doc.split("\n\n")[0].split()).replace("``", "")


def _wrapped(name: str, text: str, indent: int) -> str:
    """``name`` then ``text`` wrapped to the terminal (at most 100 columns) under a hanging indent."""
    import shutil
    import textwrap

    width = max(60, min(100, shutil.get_terminal_size((100, 24)).columns))
    return textwrap.fill(text, width, initial_indent=f"{name:<{indent - 1}} ", subsequent_indent=" " * indent) or name


def cmd_list(args) -> int:
    from .config import describe, description, packaged

    if args.what == "configs":
        for kind, flag in (("preset", "--config"), ("sweep", "--sweep")):
            print(f"{kind}s ({flag} NAME):")
            for name, path in packaged(kind).items():
                print(_wrapped(f"  {name}", description(path), 14))
    elif args.what == "keys":
        for key, default, help_ in describe():
            print(f"{key:<26} {str(default):<18} {help_}")
    elif args.what == "algorithms":
        from .algorithms import ALGORITHMS

        for name, cls in ALGORITHMS.items():
            print(_wrapped(name, _summary(cls), 13))
            for key, default, help_ in describe(cls.Hparams, "algo."):
                print(f"    {key:<25} {str(default):<10} {help_}")
    else:
        from .data import DATASETS, PARTITIONS
        from .models import MODELS

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
