"""`pflalign compare`: labelled variants on identical partitions, numeric tables, quiet parallel output."""
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from callbacks.progress import LINES_ENV, ProgressBar
from conftest import run_cli
from pflalign.cli import main
from pflalign.compare import format_table, load_results, summary_table
from pflalign.config import load_config, to_dict

VARIANTS = """\
gateA: {algorithm: pflalign, algo.gate_scope: head, algo.gamma0: 1, algo.lam_g: 0}
ditto-l1: {algorithm: ditto, algo: {lam: 1}}
tuned: sweep/best.yaml
"""


def write_best(path: Path, tiny: list[str]) -> None:
    """A sweep's best.yaml as tune/runner.py writes it: a comment header and the whole config,
    tuned on another setting (30 rounds, a validation split, 20 clients, another model and budget)."""
    cfg = load_config(None, [*tiny, "rounds=30", "data.val_fraction=0.2", "data.num_clients=20", "model.hidden=[16]",
                             "train.local_epochs=2", "algo.kappa=2.5", "train.lr=0.08"])
    path.parent.mkdir(parents=True)
    path.write_text("# Best trial 1 of sweep pflalign\n" + OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg))))


def results_of(compare_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(compare_dir.glob("*/results.json"))]


def test_variants_run_labelled_on_the_same_partitions_and_tabulate(tiny, tmp_path, monkeypatch, capsys):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "variants.yaml").write_text(VARIANTS)
    write_best(tmp_path / "v" / "sweep" / "best.yaml", tiny)
    monkeypatch.chdir(tmp_path)  # the config path is relative to the variants file, not the cwd
    assert main(["compare", "--algorithms", "local", "--variants", "v/variants.yaml", "--seeds", "0,1",
                 *tiny, "rounds=2"]) == 0
    captured = capsys.readouterr()
    compare_dir = Path(captured.out.strip().splitlines()[-1])
    note = next(line for line in captured.err.splitlines() if "variant 'tuned' takes" in line)
    assert all(f"{k} (-> {v})" in note for k, v in (("data.val_fraction=0.2", 0.0), ("model.hidden=[16]", [32]),
                                                  ("train.local_epochs=2", 1), ("rounds=30", 2)))

    runs = results_of(compare_dir)
    assert sorted((r["label"], r["seed"]) for r in runs) == sorted(
        (label, s) for label in ("local", "gateA", "ditto-l1", "tuned") for s in (0, 1))
    by = {(r["label"], r["seed"]): r for r in runs}
    assert by["gateA", 0]["config"]["algo"]["gate_scope"] == "head" and by["gateA", 0]["config"]["algo"]["lam_g"] == 0
    assert by["ditto-l1", 0]["algorithm"] == "ditto" and by["ditto-l1", 0]["config"]["algo"]["lam"] == 1
    tuned = by["tuned", 1]["config"]  # its method keys from best.yaml, the setting of the comparison
    assert tuned["algo"]["kappa"] == 2.5 and tuned["train"]["lr"] == 0.08
    assert tuned["rounds"] == 2 and tuned["data"]["val_fraction"] == 0.0 and tuned["data"]["num_clients"] == 6
    assert tuned["model"]["hidden"] == [32] and tuned["train"]["local_epochs"] == 1
    parts = {}
    for run_dir in (p for p in compare_dir.iterdir() if p.is_dir()):
        r = json.loads((run_dir / "results.json").read_text())
        assert run_dir.name.startswith(f"{r['label']}-digits-s{r['seed']}-")
        parts.setdefault(r["seed"], set()).add((run_dir / "partition.json").read_text())
    assert sorted(parts) == [0, 1] and all(len(p) == 1 for p in parts.values())  # one partition per seed

    table = pd.read_csv(compare_dir / "compare.csv", index_col="label")
    for label in ("local", "gateA", "ditto-l1", "tuned"):
        values = [by[label, s]["acc_mean_last10"] for s in (0, 1)]
        assert table.loc[label, "acc_mean_last10_mean"] == pytest.approx(np.mean(values))
        assert table.loc[label, "acc_mean_last10_std"] == pytest.approx(np.std(values, ddof=1))
        assert table.loc[label, "acc_mean_last10_n"] == 2 and table.loc[label, "seeds"] == 2
        worst = [by[label, s]["final"]["acc_worst"] for s in (0, 1)]
        assert table.loc[label, "final_acc_worst_mean"] == pytest.approx(np.mean(worst))
    assert list(table["acc_mean_last10_mean"]) == sorted(table["acc_mean_last10_mean"], reverse=True)
    md = (compare_dir / "compare.md").read_text()
    mean, std = table.loc["gateA", ["acc_mean_last10_mean", "acc_mean_last10_std"]] * 100
    assert "| gateA " in md and f"{mean:.1f} ± {std:.1f}" in md and "ddof=1" in md


def test_summary_table_sample_std_and_n():
    runs = pd.DataFrame({"label": ["a", "a", "a", "b"], "seed": [0, 1, 2, 0],
                         "acc (mean, last 10)": [0.5, 0.6, 0.7, 0.9], "worst client": [0.1, np.nan, 0.3, 0.2],
                         "acc (weighted, last 10)": np.nan, "bottom 10%": np.nan, "stability std": np.nan,
                         "global model acc": np.nan})
    stats = summary_table(runs)
    assert list(stats.index) == ["b", "a"]  # best mean personalized accuracy first
    assert list(stats.columns) == ["seeds", "acc_mean_last10_mean", "acc_mean_last10_std", "acc_mean_last10_n",
                                   "final_acc_worst_mean", "final_acc_worst_std", "final_acc_worst_n"]
    assert stats.loc["a", "acc_mean_last10_std"] == pytest.approx(0.1)  # ddof=1 (ddof=0 would be 0.0816)
    assert np.isnan(stats.loc["b", "acc_mean_last10_std"]) and stats.loc["b", "acc_mean_last10_n"] == 1
    assert stats.loc["a", "final_acc_worst_n"] == 2 and stats.loc["a", "final_acc_worst_mean"] == pytest.approx(0.2)
    shown = format_table(stats)
    assert shown.loc["a", "acc (mean, last 10)"] == "60.0 ± 10.0"
    assert shown.loc["a", "worst client"] == "20.0 ± 14.1 (n=2)"
    assert shown.loc["b", "acc (mean, last 10)"] == "90.0"  # one run: no "± 0.0"


@pytest.mark.parametrize("variants, args, needle", [
    (None, ["--seeds", "0"], "compare needs --algorithms A,B,... or --variants FILE"),
    (None, ["--algorithms", "pflalign,ditto", "algo.lam=0.5"],
     "variant 'pflalign' (algorithm pflalign): unknown config key 'algo.lam'"),
    (None, ["--algorithms", "fedavg", "seed=3"], "seed cannot be set for compare"),
    (None, ["--algorithms", "fedavg", "label=x"], "label cannot be set for compare"),
    (None, ["--algorithms", "fedavg", "data.alpah=1"], "unknown config key 'data.alpah'"),
    ("missing", [], "variants file not found"),
    ("- a\n- b\n", [], "must be a mapping of label -> variant"),
    ("a: [1\n", [], "cannot read variants file"),
    ("'a b': {algorithm: fedavg}\n", [], "label 'a b' is not a valid name"),
    ("x: 3\n", [], "variant 'x' must be a mapping of config keys or the path of a config file"),
    ("x: {algorithm: fedavg, data.alpha: 1}\n", [], "variant 'x' sets 'data.alpha', but a variant sets only"),
    ("x: {algorithm: fedavg, seed: 1}\n", [], "variant 'x' sets 'seed'"),
    ("x: {algorithm: fedavg, model: {hidden: [8]}}\n", [], "variant 'x' sets 'model'"),
    ("x: {algorithm: fedavg, train: {lr: 0.1, local_epochs: 2}}\n", [], "variant 'x' sets 'train.local_epochs'"),
    ("x: {algorithm: fedavg, algo.nope: 1}\n", [], "variant 'x' (algorithm fedavg): unknown config key 'algo.nope'"),
    ("x: {algorithm: fedavg, sed: 1}\n", [], "variant 'x': unknown config key 'sed'"),
    ("x: nope.yaml\n", [], "variant 'x': config file not found"),
    ("fedavg: {algorithm: fedavg}\n", ["--algorithms", "fedavg"], "variant label 'fedavg' is given twice"),
])
def test_bad_compare_input_is_one_line_and_writes_nothing(tiny, tmp_path, capsys, variants, args, needle):
    path = tmp_path / "variants.yaml"
    if variants not in (None, "missing"):
        path.write_text(variants)
    code = main(["compare", *(["--variants", str(path)] if variants else []), *args, *tiny])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "runs").exists()


def test_help_states_the_precedence(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    out = capsys.readouterr().out
    assert "--variants FILE" in out and "defaults <- --config <- KEY=VALUE <- the variant's keys" in out


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class Fed:
    class cfg:
        rounds, algorithm, label, seed = 10, "pflalign", "gateA", 2
    round = 0


def test_progress_bar_is_labelled_and_gives_way_to_lines_for_parallel_runs(monkeypatch):
    monkeypatch.delenv(LINES_ENV, raising=False)
    bar = ProgressBar(stream=Tty())
    bar.on_run_start(Fed)
    assert bar.bar is not None and bar.bar.desc == "gateA s2"
    bar.on_run_end(Fed, {})
    monkeypatch.setenv(LINES_ENV, "lines")  # what compare --jobs N sets in its workers
    out = Tty()
    bar = ProgressBar(stream=out)
    bar.on_run_start(Fed)
    bar.on_round_end(Fed, {"round": 1, "acc": 0.8123, "global_acc": 0.5})
    assert bar.bar is None and out.getvalue() == "[gateA s2] round 1/10 acc 81.2 global_acc 50.0\n"


@pytest.mark.slow  # two worker processes import torch, Lightning and W&B: ~18 s on an idle 2-core host
def test_parallel_runs_print_labelled_lines_and_no_wandb_banners(tiny, tmp_path, monkeypatch, capfd):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # W&B on (offline), as for a user without a key
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    assert main(["compare", "--algorithms", "fedavg,local", "--seeds", "0", "--jobs", "2", *tiny,
                 "wandb.mode=offline", "progress=true"]) == 0
    out, err = capfd.readouterr()  # the worker processes write to the same file descriptors
    compare_dir = Path(out.strip().splitlines()[-1])
    assert [line for line in err.splitlines() if "round 3/3" in line and line.startswith("[")] != []
    assert {line.split("]")[0] for line in err.splitlines() if line.startswith("[")} == {"[fedavg s0", "[local s0"}
    assert "wandb:" not in err and "wandb:" not in out
    assert len(list(compare_dir.glob("*/wandb/offline-run-*"))) == 2  # W&B did log, quietly


def test_tables_show_new_client_accuracy_when_clients_are_held_out(tiny):
    run_dir = run_cli(tiny + ["data.holdout_clients=2"])
    results = json.loads((run_dir / "results.json").read_text())
    stats = summary_table(load_results([run_dir]))
    assert stats.loc["pflalign", "new_acc_mean_last10_mean"] == results["new_acc_mean_last10"]
    assert "new clients acc (mean, last 10)" in format_table(stats)
