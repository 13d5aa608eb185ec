"""The (variant, seed) grid of a comparison, planned once for ``slurm/compare-array.sbatch``.

``pflalign.compare.plan`` gives every run's config exactly as ``pflalign compare`` would run it
(the same ``--algorithms``/``--variants`` file, precedence and validation, so for a given seed
every variant trains on the same partition and client-sampling stream). This writes them into
the new compare directory for the array's tasks: ``grid/<task>.yaml`` (the run's full config,
for ``pflalign run --config``) and ``grid/tasks.tsv`` (task, label, seed, runtime, run name).

    python slurm/compare_grid.py (--algorithms A,B | --variants FILE) [--seeds 0,1,2] [--config F] [KEY=VALUE ...]

prints "<number of tasks> <compare dir>"; bad input is exit 2 with one line on stderr, before
anything is written.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

from pflalign.compare import algorithm_variants, plan, read_variants
from pflalign.config import SEED_MAX, Config, to_dict
from pflalign.errors import InputError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="compare_grid", description="plan a comparison for a SLURM job array")
    p.add_argument("--algorithms", metavar="A,B,...", help="one variant per algorithm, labelled by its name")
    p.add_argument("--variants", metavar="FILE", help="YAML: label -> method keys or a config file")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--config", metavar="NAME|FILE", help="experiment shared by all runs")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    return p.parse_intermixed_args(argv)  # options and overrides in any order, as `pflalign compare`


def seeds_of(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--seeds must be comma-separated integers, got '{text}'") from None
    if not seeds or len(set(seeds)) < len(seeds) or not all(0 <= s <= SEED_MAX for s in seeds):
        raise InputError(f"--seeds needs distinct integers 0..{SEED_MAX}, e.g. 0,1,2 (got '{text}')")
    return seeds


def grid(args: argparse.Namespace) -> tuple[list[Config], Path, list[str]]:
    """Every run's config (all validated), the compare dir (absolute: the tasks may start
    elsewhere) and compare's notes."""
    names = [a.strip() for a in (args.algorithms or "").split(",") if a.strip()]
    variants = algorithm_variants(names) + (read_variants(args.variants) if args.variants else [])
    if not variants:
        raise InputError("give --algorithms A,B,... or --variants FILE (or both)")
    cfgs, out, notes = plan(variants, seeds_of(args.seeds), args.config, args.overrides)
    out = out.absolute()
    for cfg in cfgs:
        cfg.out_dir = str(out)
    return cfgs, out, notes


def write_grid(cfgs: list[Config], out: Path) -> None:
    (out / "grid").mkdir(parents=True)
    rows = []
    for task, cfg in enumerate(cfgs):
        (out / "grid" / f"{task}.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg))))
        rows.append(f"{task}\t{cfg.label}\t{cfg.seed}\t{cfg.runtime}\t{cfg.name}\n")
    (out / "grid" / "tasks.tsv").write_text("".join(rows))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfgs, out, notes = grid(args)
    except InputError as e:
        print(f"compare_grid: {e}", file=sys.stderr)
        return 2
    write_grid(cfgs, out)
    for note in notes:
        print(f"compare_grid: note: {note}", file=sys.stderr)
    print(len(cfgs), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
