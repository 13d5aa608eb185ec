"""The command-line contract: outputs of a run, determinism, exit codes and error lines."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import read_jsonl, run_cli
from pflalign.cli import main
from pflalign.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]


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
    ("data.alpah=1", "unknown config key 'data.alpah'"),
    ("rounds=many", "rounds"),
    ("data.alpha=0", "data.alpha must be > 0"),
    ("data.alpha=-1", "data.alpha must be > 0"),
    ("algo.kappa=-1", "algo.kappa must be >= 0"),
    ("algo.nope=1", "unknown config key 'algo.nope'"),
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


def test_default_yaml_is_the_embedded_default():
    assert load_config(ROOT / "configs" / "default.yaml") == load_config()
    assert load_config() == load_config(None, [], {"algo": {}}) and load_config().algorithm == "pflalign"
    assert isinstance(load_config(), Config)


@pytest.mark.parametrize("algorithm", ["pflalign", "fedrep", "ditto"])
def test_presets_load_for_any_algorithm(algorithm):
    cfg = load_config(ROOT / "configs" / "fmnist.yaml", [f"algorithm={algorithm}"])
    assert cfg.data.max_samples == 10000 and cfg.model.name == "cnn"


def test_list_and_help(capsys):
    assert main(["list", "algorithms"]) == 0
    out = capsys.readouterr().out
    assert "pflalign" in out and "algo.kappa" in out and "fedavg_ft" in out
    proc = subprocess.run([sys.executable, "-m", "pflalign.cli", "run", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "data.alpha" in proc.stdout and "--resume" in proc.stdout


def test_compare_runs_algorithms_on_identical_partitions(tiny, tmp_path, capsys):
    assert main(["compare", "--algorithms", "local,fedavg", "--seeds", "0,1", *tiny, "rounds=2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    compare_dir = Path(out[-1])
    table = (compare_dir / "compare.md").read_text()
    assert "| local" in table and "| fedavg" in table and (compare_dir / "compare.csv").exists()
    parts = {}
    for run in compare_dir.iterdir():
        if run.is_dir():
            r = json.loads((run / "results.json").read_text())
            parts.setdefault(r["seed"], set()).add((run / "partition.json").read_text())
    assert sorted(parts) == [0, 1] and all(len(p) == 1 for p in parts.values())  # same split per seed


def test_non_finite_loss_stops_with_exit_1_and_keeps_last_checkpoint(tiny, tmp_path, capsys):
    # lr 1e8 on this tiny setting overflows float32 in round 3, after two good rounds
    code = main(["run", *tiny, "rounds=8", "train.lr=1e8", "checkpoint_every=1", "name=nan"])
    err = capsys.readouterr().err
    assert code == 1 and "non-finite loss at round 3" in err and len(err.strip().splitlines()) == 1
    assert "the checkpoint of round 2 is kept" in err
    from pflalign.checkpoint import load_checkpoint
    assert load_checkpoint(tmp_path / "runs" / "nan")["round"] == 2 == len(read_jsonl(tmp_path / "runs" / "nan" / "metrics.jsonl"))
