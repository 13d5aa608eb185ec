"""`pflalign report`: tables over seeds per label and setting, plots, and its error line."""
import contextlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli
from pflalign.cli import main


def _main(args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def test_report_over_seeds_labels_and_settings(tiny, tmp_path, monkeypatch):
    code, out, _ = _main(["compare", "--algorithms", "fedavg,local", "--seeds", "0,1", *tiny])
    assert code == 0
    compare_dir = Path(out.strip().splitlines()[-1])
    other = run_cli(tiny + ["algorithm=fedavg", "data.alpha=5", f"out_dir={tmp_path / 'other'}"])

    code, out, _ = _main(["report", str(compare_dir)])  # one dir: the report goes into it
    assert code == 0 and Path(out.strip().splitlines()[-1]) == compare_dir
    md = (compare_dir / "report.md").read_text()
    assert "| fedavg" in md and "| local" in md and "worst client" in md and "bottom 10%" in md
    assert "sample standard deviation (ddof=1)" in md
    table = pd.read_csv(compare_dir / "report.csv")
    assert set(table["label"]) == {"fedavg", "local"} and set(table["seeds"]) == {2}
    assert (table["setting"] == "all runs").all()
    runs = pd.read_csv(compare_dir / "runs.csv")
    assert len(runs) == 4 and {"acc_mean_last10", "final_acc_worst", "stability_std"} <= set(runs)
    for label, group in runs.groupby("label"):  # report.csv: mean, sample std and n of the runs' values
        row = table.set_index("label").loc[label]
        for metric in ("acc_mean_last10", "final_acc_worst", "stability_std"):
            assert row[f"{metric}_mean"] == pytest.approx(group[metric].mean())
            assert row[f"{metric}_std"] == pytest.approx(np.std(group[metric], ddof=1))
            assert row[f"{metric}_n"] == 2
        mean, std = row["acc_mean_last10_mean"] * 100, row["acc_mean_last10_std"] * 100
        assert f"{mean:.1f} ± {std:.1f}" in md
    pngs = {p.name for p in compare_dir.glob("*.png")}
    assert {"acc_vs_round.png", "client_acc.png", "partition_0.png", "partition_1.png"} <= pngs  # 2 seeds
    assert all((compare_dir / p).stat().st_size > 5000 for p in pngs)

    monkeypatch.chdir(tmp_path)  # several dirs: ./report
    code, out, _ = _main(["report", str(compare_dir), str(other)])
    assert code == 0 and Path(out.strip().splitlines()[-1]) == tmp_path / "report"
    table = pd.read_csv(tmp_path / "report" / "report.csv")
    assert set(zip(table["setting"], table["label"], table["seeds"])) == {
        ("data.alpha=0.5", "fedavg", 2), ("data.alpha=0.5", "local", 2), ("data.alpha=5.0", "fedavg", 1)}
    single = table[table["setting"] == "data.alpha=5.0"].iloc[0]  # one run: no std (not 0)
    assert np.isnan(single["acc_mean_last10_std"]) and single["acc_mean_last10_n"] == 1
    assert "## data.alpha=5.0" in (tmp_path / "report" / "report.md").read_text()


def test_report_without_runs_is_bad_input(tmp_path):
    code, out, err = _main(["report", str(tmp_path)])
    assert code == 2 and err.strip().count("\n") == 0 and "no finished runs" in err
    assert not (tmp_path / "report.md").exists()
