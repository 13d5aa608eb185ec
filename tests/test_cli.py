"""The command-line contract: outputs of a run, determinism, exit codes and error lines."""
import dataclasses
import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import read_jsonl, run_cli
from pflalign.algorithms import ALGORITHMS
from pflalign.cli import build_parser, main
from pflalign.config import Config, DataConfig, WandbConfig, description, packaged


def test_run_writes_the_run_directory(tiny):
    run_dir = run_cli(tiny + ["algorithm=pflalign", "algo.diag_every=2"])
    assert {"config.yaml", "metrics.jsonl", "metrics.csv", "results.json", "partition.json"} <= \
        {p.name for p in run_dir.iterdir()}
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2, 3]
    for key in ("acc", "acc_mean", "acc_std", "acc_worst", "acc_bottom10", "loss", "global_acc"):
        assert 0 <= rows[-1][key] <= (1 if "loss" not in key else 10), key
    assert len(rows[-1]["client_acc"]) == 6
    assert {"align/grad_var_pre", "align/grad_var_sgd", "align/cos_pre", "align/cos_sgd"} <= set(rows[0])
    assert {"align/gamma_mean", "align/gamma_std", "align/cos_dir"} <= set(rows[1])
    results = json.loads((run_dir / "results.json").read_text())
    assert results["final"]["acc"] == rows[-1]["acc"] and results["seed"] == 0
    assert results["versions"]["torch"] and results["wall_time_s"] > 0
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["num_clients"] == 6 and saved["algo"]["kappa"] == 1.0
    part = json.loads((run_dir / "partition.json").read_text())
    assert part["num_clients"] == 6


def test_same_seed_same_metrics(tiny):
    a = run_cli(tiny + ["client_fraction=0.5", "name=a"])
    b = run_cli(tiny + ["client_fraction=0.5", "name=b"])
    c = run_cli(tiny + ["client_fraction=0.5", "name=c", "seed=1"])
    assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()
    assert (a / "metrics.jsonl").read_text() != (c / "metrics.jsonl").read_text()


def test_resume_continues_exactly(tiny):
    full = run_cli(tiny + ["rounds=4", "name=full"])
    part = run_cli(tiny + ["rounds=2", "name=part", "checkpoint_every=1"])
    from pflalign.cli import main as cli_main
    assert cli_main(["run", "--resume", str(part), "rounds=4"]) == 0
    assert (full / "metrics.jsonl").read_text() == (part / "metrics.jsonl").read_text()


@pytest.mark.parametrize("override, needle", [
    ("data.alpah=1", "unknown config key 'data.alpah' (did you mean data.alpha?)"),
    ("rounds=many", "rounds"),
    ("data.alpha=0", "data.alpha must be > 0"),
    ("data.alpha=-1", "data.alpha must be > 0"),
    ("algo.kappa=-1", "algo.kappa must be >= 0"),
    ("algo.nope=1", "unknown config key 'algo.nope'"),
    ("algo.kapa=1", "unknown config key 'algo.kapa' (did you mean algo.kappa?)"),
    ("algorithm=fedavgg", "unknown algorithm 'fedavgg'"),
    ("data.num_clients=5000", "num_clients"),
    ("data.dataset=fmnist", "data.root"),
    ("runtime=slurm", "runtime must be one of"),
    ("noequals", "expected key=value"),
])
def test_bad_input_exit_2_one_line_nothing_written(tiny, tmp_path, capsys, override, needle):
    extra = ["data.root=" + str(tmp_path / "missing")] if "fmnist" in override else []
    code = main(["run", *tiny, *extra, override])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_missing_config_file(capsys, tmp_path):
    assert main(["run", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_options_and_overrides_in_any_order(tiny, tmp_path):
    """`pflalign run rounds=2 --config X wandb.mode=disabled`: overrides before and after an option."""
    (tmp_path / "exp.yaml").write_text("rounds: 5\nname: ordered\n")
    rest = [o for o in tiny if not o.startswith("rounds=")]
    run_dir = run_cli(["rounds=2", "--config", str(tmp_path / "exp.yaml"), *rest, "wandb.mode=disabled"])
    assert run_dir.name == "ordered" and [r["round"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2]
    parser = build_parser()
    for command, option, value in (("compare", "--algorithms", "fedavg"), ("tune", "--sweep", "pflalign")):
        args = parser.parse_args([command, "rounds=2", option, value, "data.alpha=0.5"])
        assert getattr(args, option[2:]) == value and args.overrides == ["rounds=2", "data.alpha=0.5"], command


def test_list_and_help(capsys):
    assert main(["list", "algorithms"]) == 0
    out = capsys.readouterr().out
    assert "pflalign" in out and "algo.kappa" in out and "fedavg_ft" in out
    precond = next(line.split() for line in out.splitlines() if line.startswith("    algo.precond "))
    assert precond[:2] == ["algo.precond", "snr"] and " ".join(precond).endswith("[one of: snr, var, fisher, rms, none]")
    flat = " ".join(out.split())
    for name, cls in ALGORITHMS.items():  # the whole first paragraph, not its first line
        doc = inspect.cleandoc(cls.__doc__ or sys.modules[cls.__module__].__doc__)
        assert " ".join(doc.split("\n\n")[0].replace("``", "").split()) in flat, name
    assert "limits client drift under heterogeneity. Evaluated as the global model." in flat  # fedprox's 2nd line
    assert max(len(line) for line in out.splitlines() if not line.startswith("    algo.")) <= 100
    proc = subprocess.run([sys.executable, "-m", "pflalign.cli", "run", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "data.alpha" in proc.stdout and "--resume" in proc.stdout
    assert "[one of: auto, online, offline, disabled]" in proc.stdout and "pflalign list configs" in proc.stdout


def test_list_keys_shows_every_choice(capsys):
    assert main(["list", "keys"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    for key, field in (("runtime", "runtime"), ("data.partition", "partition"), ("wandb.mode", "mode")):
        section = {"data": DataConfig, "wandb": WandbConfig}.get(key.split(".")[0], Config)
        choices = next(f for f in dataclasses.fields(section) if f.name == field).metadata["choices"]
        assert lines[key].endswith(f"[one of: {', '.join(choices)}]"), lines[key]


def test_list_configs_names_every_packaged_file(capsys):
    assert main(["list", "configs"]) == 0
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    assert out.startswith("presets (--config NAME):") and "sweeps (--sweep NAME):" in out
    for kind in ("preset", "sweep"):
        for name, path in packaged(kind).items():
            assert f"{name} {description(path)}" in flat, name


def test_compare_runs_algorithms_on_identical_partitions(tiny, tmp_path, capsys):
    assert main(["compare", "--algorithms", "local,fedavg", "--seeds", "0,1", *tiny, "rounds=2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    compare_dir = Path(out[-1])
    table = (compare_dir / "compare.md").read_text()
    assert "| local" in table and "| fedavg" in table and "ddof=1" in table
    parts, acc = {}, {}
    for run in compare_dir.iterdir():
        if run.is_dir():
            r = json.loads((run / "results.json").read_text())
            parts.setdefault(r["seed"], set()).add((run / "partition.json").read_text())
            acc.setdefault(r["label"], []).append(r["acc_last10"])
    assert sorted(parts) == [0, 1] and all(len(p) == 1 for p in parts.values())  # same split per seed
    csv = pd.read_csv(compare_dir / "compare.csv", index_col="label")
    for label, values in acc.items():  # the CSV's numbers are the runs' results.json values, over seeds
        assert csv.loc[label, "acc_last10_mean"] == pytest.approx(np.mean(values))
        assert csv.loc[label, "acc_last10_std"] == pytest.approx(np.std(values, ddof=1))
        assert csv.loc[label, "acc_last10_n"] == 2 == len(values)


def test_non_finite_loss_stops_with_exit_1_and_keeps_last_checkpoint(tiny, tmp_path, capsys):
    # lr 1e8 on this tiny setting overflows float32 in round 3, after two good rounds
    code = main(["run", *tiny, "rounds=8", "train.lr=1e8", "checkpoint_every=1", "name=nan"])
    err = capsys.readouterr().err
    assert code == 1 and "non-finite loss at round 3" in err and len(err.strip().splitlines()) == 1
    assert "the checkpoint of round 2 is kept" in err
    from pflalign.checkpoint import load_checkpoint
    assert load_checkpoint(tmp_path / "runs" / "nan")["round"] == 2 == len(read_jsonl(tmp_path / "runs" / "nan" / "metrics.jsonl"))
