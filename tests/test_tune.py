"""`pflalign tune`: sweep-file validation (no Ray), a tiny ASHA sweep, resume after a fault,
and W&B offline trial runs. The sweeps share the session's 2-CPU Ray instance."""
import contextlib
import io
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import read_jsonl, run_cli
from pflalign.cli import main
from pflalign.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _main(args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def sweep_file(tmp_path, **keys) -> Path:
    spec = {"base": {"data.val_fraction": 0.2, "checkpoint_every": 1},
            "space": {"train.lr": "loguniform(0.02, 0.2)", "algo.kappa": "default"},
            "num_samples": 2, "scheduler": "fifo", **keys}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("keys, needle", [
    ({"metric": "acc"}, "sweep metric 'acc' reads the test split"),
    ({"metric": "global_acc"}, "reads the test split"),
    ({"base": {"rounds": 3}}, "data.val_fraction is 0"),
    ({"space": {"algo.kapa": "uniform(0, 1)"}}, "unknown config key 'algo.kapa'"),
    ({"space": {"algo.gamma0": "uniform(0, 2)"}}, "algo.gamma0 must be <= 1"),
    ({"space": {"train.lr": "loguniform(0, 1)"}}, "needs 0 < lo < hi"),
    ({"space": {"algo.kappa": "normal(0, 1)"}}, "expected one of uniform(...)"),
    ({"space": {"train.lr": "default"}}, "no default range"),
    ({"space": {"algo.precond": "choice([snr, nope])"}}, "algo.precond must be one of"),
    ({"scheduler": {"name": "asha", "grace": 2}}, "unknown key 'grace' for scheduler asha"),
    ({"sheduler": "fifo"}, "unknown sweep key 'sheduler'"),
    ({"config": "missing.yaml"}, "base config 'missing.yaml' not found"),
    ({"include_defaults": "yes"}, "include_defaults must be true or false"),
    ({"include_defaults": True, "space": {"train.lr": "grid([0.1, 0.2])"}}, "include_defaults needs sampled keys"),
])
def test_bad_sweeps_fail_before_anything_starts(tiny, tmp_path, keys, needle):
    code, _, err = _main(["tune", "--sweep", str(sweep_file(tmp_path, **keys)), *tiny])
    assert code == 2 and needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


def test_shipped_sweeps_load_and_ray_tune_stays_lazy():
    from tune import load_sweep

    names = {p.stem for p in (ROOT / "pflalign" / "configs" / "sweeps").glob("*.yaml")}
    assert {"pflalign", "fedprox", "ditto", "fedala"} <= names
    for name in sorted(names):
        sweep = load_sweep(ROOT / "pflalign" / "configs" / "sweeps" / f"{name}.yaml")
        assert sweep.metric.startswith("val_") and sweep.cfg.data.val_fraction > 0
    assert load_sweep(ROOT / "pflalign/configs/sweeps/fedprox.yaml").space["algo.mu"] == "loguniform(0.001, 1)"
    code = "import sys, pflalign.cli, tune, callbacks; assert not {'ray', 'ray.tune', 'wandb'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tiny_sweep_writes_best_yaml_and_table(ray_cluster, tiny, tmp_path):
    path = sweep_file(tmp_path, num_samples=4, scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2},
                      name="tiny", include_defaults=True)
    code, out, err = _main(["tune", "--sweep", str(path), *tiny, "sweep.seed=3"])
    assert code == 0, err
    sweep_dir = Path(out.strip().splitlines()[-1])
    assert sweep_dir.name.startswith("tiny-") and (sweep_dir / "sweep.yaml").is_file()
    table = pd.read_csv(sweep_dir / "trials.csv", dtype={"trial": str})
    assert len(table) == 4 and set(table["status"]) <= {"completed", "stopped"}
    assert table.loc[0, "status"] == "completed" and table["val_acc_last10"].notna().all()  # the default
    assert "| trial" in (sweep_dir / "trials.md").read_text()
    defaults = table[(table["train.lr"] == 0.05) & (table["algo.kappa"] == 1.0)]  # include_defaults
    assert len(defaults) == 1 and len(set(table["train.lr"])) == 4
    best = table.iloc[0]
    run_dir = sweep_dir / "trials" / best["trial"]
    assert (run_dir / "results.json").is_file()  # completed trials are whole run directories
    vals = [r["val_acc"] for r in read_jsonl(run_dir / "metrics.jsonl")]
    assert best["val_acc_last10"] == pytest.approx(sum(vals) / len(vals))
    assert best["val_acc_last10"] == table.loc[table["status"] == "completed", "val_acc_last10"].max()
    checkpoints = list(sweep_dir.glob(f"tune_{best['trial']}/checkpoint_*"))
    assert len(checkpoints) == 1  # bounded: CheckpointConfig(num_to_keep=1)
    cfg = load_config(sweep_dir / "best.yaml")  # ready to run: the best trial's config
    assert cfg.train.lr == pytest.approx(best["train.lr"]) and cfg.algo.kappa == pytest.approx(best["algo.kappa"])
    assert cfg.runtime == "local" and cfg.name is None and cfg.label is None
    rerun = run_cli(["--config", str(sweep_dir / "best.yaml"), f"out_dir={tmp_path / 'rerun'}"])
    assert read_jsonl(rerun / "metrics.jsonl") == read_jsonl(run_dir / "metrics.jsonl")
    code, out, _ = _main(["report", str(sweep_dir)])
    md = (sweep_dir / "report.md").read_text()
    assert code == 0 and f"**{best['trial']}** (selected)" in md and "Selected on **val_acc_last10**" in md
    assert (sweep_dir / "sweep_0.pdf").is_file()  # hyperparameter sensitivity
    assert len(pd.read_csv(sweep_dir / "runs.csv")) == (table["status"] == "completed").sum()  # no checkpoint copies


def test_resume_continues_an_interrupted_sweep(ray_cluster, tiny, tmp_path):
    path = sweep_file(tmp_path, fault_round=2)  # the first trial to reach round 2 raises, once
    code, out, err = _main(["tune", "--sweep", str(path), *tiny, "rounds=4"])
    sweep_dir = Path(out.strip().splitlines()[-1])
    assert code == 1 and f"pflalign tune --resume {sweep_dir}" in err
    table = pd.read_csv(sweep_dir / "trials.csv", dtype={"trial": str})
    assert sorted(table["status"]) == ["completed", "error"] and not (sweep_dir / "best.yaml").exists()
    failed = table.loc[table["status"] == "error", "trial"].item()

    code, out, err = _main(["tune", "--resume", str(sweep_dir)])
    assert code == 0, err
    table = pd.read_csv(sweep_dir / "trials.csv", dtype={"trial": str})
    assert list(table["status"]) == ["completed", "completed"] and list(table["round"]) == [4, 4]
    assert (sweep_dir / "best.yaml").is_file()
    run_dir = sweep_dir / "trials" / failed
    assert yaml.safe_load((run_dir / "results.json").read_text())["resumed_from_round"] == 2
    # The resumed trial ends with exactly the numbers of an uninterrupted run of its config.
    fresh = run_cli(["--config", str(run_dir / "config.yaml"), f"out_dir={tmp_path / 'fresh'}", "name=fresh"])
    assert (fresh / "metrics.jsonl").read_text() == (run_dir / "metrics.jsonl").read_text()


def test_a_diverged_trial_is_a_result_not_an_error(ray_cluster, tiny, tmp_path):
    """A trial whose loss becomes non-finite ends the sweep normally (its hyperparameters are bad,
    there is nothing to resume) and is never selected; a sweep where every trial diverges says so."""
    path = sweep_file(tmp_path, space={"train.lr": "grid([0.05, 1.0e+12])"}, num_samples=1)
    code, out, err = _main(["tune", "--sweep", str(path), *tiny])
    assert code == 0, err
    sweep_dir = Path(out.strip().splitlines()[-1])
    table = pd.read_csv(sweep_dir / "trials.csv", dtype={"trial": str})
    assert list(table["status"]) == ["completed", "diverged"] and table["val_acc_last10"].isna().tolist() == [False, True]
    diverged = table.loc[1, "trial"]
    assert "non-finite loss" in yaml.safe_load((sweep_dir / "trials" / diverged / "diverged.json").read_text())["error"]
    assert load_config(sweep_dir / "best.yaml").train.lr == 0.05

    path = sweep_file(tmp_path, space={"train.lr": "grid([1.0e+12])"}, num_samples=1)
    code, out, err = _main(["tune", "--sweep", str(path), *tiny])
    assert code == 1 and "every trial diverged" in err
    assert not (Path(out.strip().splitlines()[-1]) / "best.yaml").exists()


def test_trials_log_to_wandb_offline(ray_cluster, tiny, tmp_path, monkeypatch):
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    path = sweep_file(tmp_path, num_samples=1, name="wb-sweep")
    code, out, err = _main(["tune", "--sweep", str(path), *tiny, "rounds=2", "wandb.mode=auto"])
    assert code == 0, err
    sweep_dir = Path(out.strip().splitlines()[-1])
    (trial,) = pd.read_csv(sweep_dir / "trials.csv", dtype={"trial": str})["trial"]
    (run_file,) = (sweep_dir / "trials" / trial / "wandb").glob("offline-run-*/run-*.wandb")
    data = run_file.read_bytes()
    assert sweep_dir.name.encode() in data and trial.encode() in data  # group = this sweep's directory, run = trial id


def test_numeric_looking_trial_ids_stay_text_in_the_table():
    from tune.runner import table_markdown

    md = table_markdown(pd.DataFrame({"trial": ["12345_00000", "12345_00001"], "val_acc": [0.5, 0.25]}))
    assert md.splitlines()[0].startswith("| trial ") and "| 12345_00000 |" in md


@pytest.mark.parametrize("exposure", ["group-writable", "symlink"])
def test_resume_refuses_a_sweep_others_could_have_written(tmp_path, capsys, exposure):
    """Tune unpickles its state on restore: a sweep dir someone else can write is refused first."""
    import os

    from tune.runner import check_only_mine

    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "sweep.yaml").write_text("name: x\n")
    marker = tmp_path / "pwned"
    (sweep_dir / "tuner.pkl").write_bytes(
        b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")  # a pickle that runs a command
    check_only_mine(sweep_dir)  # private: passes
    if exposure == "group-writable":
        os.chmod(sweep_dir / "tuner.pkl", 0o664)
    else:
        (sweep_dir / "link").symlink_to("/etc/passwd")
    code, _, err = _main(["tune", "--resume", str(sweep_dir)])
    assert code == 2 and err.count("\n") == 1 and "--resume:" in err and "chmod -R go-w" in err, err
    assert not marker.exists()
