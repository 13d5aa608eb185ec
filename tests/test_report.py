"""`pflalign report`: tables over seeds per label and setting, figures whose plotted data match the
table and the runs' files, sweep sections, and its error lines."""
import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import read_jsonl, run_cli
from pflalign import plots
from pflalign.cli import main
from pflalign.report import figures, load_runs, summary_table
from test_callbacks import closed_port


def _main(args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def compared(tmp_path_factory, data_cache):
    """fedavg, pflalign and local x seeds 0, 1 on the tiny federation (wandb.mode=offline in their
    config, W&B itself disabled by the test environment): (compare dir, overrides)."""
    tiny = [f"data.cache_dir={data_cache}", f"out_dir={tmp_path_factory.mktemp('cmp')}", "data.dataset=digits",
            "data.num_clients=6", "data.alpha=0.5", "model.hidden=[32]", "rounds=3", "wandb.mode=offline",
            "progress=false", "train.batch_size=32"]
    code, out, err = _main(["compare", "--algorithms", "fedavg,pflalign,local", "--seeds", "0,1", *tiny])
    assert code == 0, err
    return Path(out.strip().splitlines()[-1]), tiny


@pytest.fixture(scope="module")
def built(compared):
    """The report's runs, tables and figures of the compare directory, as write_report builds them."""
    runs, _, _ = load_runs([compared[0]])
    tables = {s: summary_table(g) for s, g in runs.groupby("setting", sort=False)}
    figs, notes = figures(runs, tables, "fedavg")
    return runs, tables["all runs"], figs


def _client_means(run_dir: Path) -> np.ndarray:
    """Each client's accuracy averaged over its last 10 evaluations, from metrics.jsonl."""
    return np.mean([r["client_acc"] for r in read_jsonl(run_dir / "metrics.jsonl") if "client_acc" in r][-10:], axis=0)


def test_report_over_seeds_labels_and_settings(compared, tmp_path, monkeypatch):
    compare_dir, tiny = compared
    other = run_cli(tiny + ["algorithm=fedavg", "data.alpha=5", f"out_dir={tmp_path / 'other'}"])

    code, out, _ = _main(["report", str(compare_dir)])  # one dir: the report goes into it
    assert code == 0 and Path(out.strip().splitlines()[-1]) == compare_dir
    md = (compare_dir / "report.md").read_text()
    assert "| fedavg" in md and "| local" in md and "worst client" in md and "bottom 10%" in md
    assert "sample standard deviation (ddof=1)" in md
    assert "Setting: digits, dirichlet(alpha=0.5), 6 clients, model mlp, 3 rounds." in md
    table = pd.read_csv(compare_dir / "report.csv")
    assert set(table["label"]) == {"fedavg", "pflalign", "local"} and set(table["seeds"]) == {2}
    assert (table["setting"] == "all runs").all()
    runs = pd.read_csv(compare_dir / "runs.csv")
    assert len(runs) == 6 and {"acc_mean_last10", "final_acc_worst", "stability_std"} <= set(runs)
    for label, group in runs.groupby("label"):  # report.csv: mean, sample std and n of the runs' values
        row = table.set_index("label").loc[label]
        for metric in ("acc_mean_last10", "final_acc_worst", "stability_std"):
            assert row[f"{metric}_mean"] == pytest.approx(group[metric].mean())
            assert row[f"{metric}_std"] == pytest.approx(np.std(group[metric], ddof=1))
            assert row[f"{metric}_n"] == 2
        mean, std = row["acc_mean_last10_mean"] * 100, row["acc_mean_last10_std"] * 100
        assert f"{mean:.1f} ± {std:.1f}" in md
    stems = ["acc_vs_round", "align_diagnostics", "client_acc", "client_cdf", "client_paired", "partition_0",
             "partition_1"]  # 2 seeds: 2 partitions
    for stem in stems:
        assert (compare_dir / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-" and f"]({stem}.png)" in md
        assert (compare_dir / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    monkeypatch.chdir(tmp_path)  # several dirs (here: run dirs): ./report
    fedavg = sorted(compare_dir.glob("fedavg-*"))
    code, out, _ = _main(["report", *map(str, fedavg), str(other)])
    assert code == 0 and Path(out.strip().splitlines()[-1]) == tmp_path / "report"
    table = pd.read_csv(tmp_path / "report" / "report.csv")
    assert set(zip(table["setting"], table["label"], table["seeds"])) == {
        ("data.alpha=0.5", "fedavg", 2), ("data.alpha=5.0", "fedavg", 1)}
    single = table[table["setting"] == "data.alpha=5.0"].iloc[0]  # one run: no std (not 0)
    assert np.isnan(single["acc_mean_last10_std"]) and single["acc_mean_last10_n"] == 1
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## data.alpha=5.0" in md and "Setting: digits, dirichlet(alpha=5.0), 6 clients" in md


def test_curves_match_the_table_and_the_runs(built):
    runs, table, figs = built
    fig = figs["acc_vs_round"]
    (sub,) = fig.subfigs
    title = sub.get_suptitle()
    assert title.startswith("digits, dirichlet(alpha=0.5), 6 clients, model mlp, 3 rounds") and "std" in title
    legend = [t.get_text() for t in sub.legends[0].get_texts()]
    assert legend == [f"{x} (n=2)" for x in table.index]  # table order
    assert sub.legends[0].get_texts()[0].get_fontsize() >= 9
    axes = {ax.get_ylabel(): ax for ax in sub.axes if ax.get_visible()}
    assert set(axes) == {y for _, y, _ in plots.CURVES[:6]}  # no held-out clients: no new-client panel
    mean_ax = axes["mean personalized acc (%)"]
    assert all(float(t).is_integer() for t in mean_ax.get_xticks())
    lines = {line.get_gid(): line for line in mean_ax.get_lines()}
    for label, row in table.iterrows():
        x, y = lines[label].get_data()
        histories = [read_jsonl(Path(d) / "metrics.jsonl") for d in runs.loc[runs["label"] == label, "run_dir"]]
        per_round = np.mean([[r["acc_mean"] for r in h] for h in histories], axis=0) * 100
        assert list(x) == [1, 2, 3] and np.allclose(y, per_round)
        assert np.mean(y[-10:]) == pytest.approx(row["acc_mean_last10_mean"] * 100)
    global_labels = {line.get_gid() for line in axes["global model acc (%)"].get_lines()}
    assert global_labels == {"fedavg", "pflalign"}  # local has no global model
    band = mean_ax.collections[0].get_paths()[0].vertices[:, 1]  # first label: mean ± sample std
    first = table.index[0]
    accs = np.array([[r["acc_mean"] for r in read_jsonl(Path(d) / "metrics.jsonl")]
                     for d in runs.loc[runs["label"] == first, "run_dir"]]) * 100
    assert band.max() == pytest.approx((accs.mean(0) + accs.std(0, ddof=1)).max())

    align = figs["align_diagnostics"].subfigs[0]
    panels = {ax.get_ylabel(): {line.get_gid() for line in ax.get_lines()} for ax in align.axes if ax.get_visible()}
    assert {"align/gamma_mean", "align/cos_dir"} <= set(panels) and set().union(*panels.values()) == {"pflalign"}


def test_per_client_figures_use_the_last_10_evaluations_and_test_sizes(built):
    runs, table, figs = built
    sizes = {d: json.loads((Path(d) / "partition.json").read_text())["sizes"]["test"] for d in runs["run_dir"]}
    (ax,) = [a for a in figs["client_acc"].subfigs[0].axes if a.get_xlabel()]
    assert [t.get_text() for t in ax.get_yticklabels()] == list(table.index)  # the table's first row on top
    points = {c.get_gid(): c for c in ax.collections if c.get_gid()}
    for label in table.index:
        dirs = runs.loc[runs["label"] == label, "run_dir"]
        expected = np.concatenate([_client_means(Path(d)) for d in dirs]) * 100
        n_test = np.concatenate([sizes[d] for d in dirs])
        got = points[label].get_offsets()[:, 0]
        assert np.allclose(got, expected, atol=1e-9)
        assert np.allclose(points[label].get_sizes(), plots.marker_sizes(n_test, n_test.max()))

    cdf_ax = figs["client_cdf"].subfigs[0].axes[0]
    cdfs = {line.get_gid(): line.get_data() for line in cdf_ax.get_lines()}
    assert list(cdfs) == list(table.index)
    x, y = cdfs["local"]
    local = np.sort(np.concatenate([_client_means(Path(d)) for d in runs.loc[runs["label"] == "local", "run_dir"]]))
    assert y[-1] == 1 and np.allclose(np.unique(x), np.unique(local * 100))

    paired = figs["client_paired"].subfigs[0]
    panels = {ax.collections[0].get_gid(): ax for ax in paired.axes if ax.get_visible()}
    assert set(panels) == {"pflalign", "local"}  # every label but the baseline
    diffs, bases = [], []
    for seed in (0, 1):  # same seed: same partition, so client i is the same client
        pick = runs[(runs["seed"] == seed)].set_index("label")["run_dir"]
        base = _client_means(Path(pick["fedavg"]))
        diffs.append((_client_means(Path(pick["local"])) - base) * 100)
        bases.append(base * 100)
    offsets = panels["local"].collections[0].get_offsets()
    assert np.allclose(offsets[:, 0], np.concatenate(bases)) and np.allclose(offsets[:, 1], np.concatenate(diffs))
    better = int((np.concatenate(diffs) > 0).sum())
    assert f"better on {better}/12" in panels["local"].get_title()


def test_small_clients_are_flagged():
    clients = pd.DataFrame({"setting": "s", "label": "a", "seed": 0, "data_seed": 0, "client": range(4),
                            "acc": [0.2, 0.4, 0.6, 0.8], "n_test": [4, 5, 60, 80]})
    fig = plots.clients_figure(clients, {"s": ["a"]}, {"s": "title"}, plots.label_colors(["a"]))
    ax = fig.subfigs[0].axes[0]
    points = {c.get_gid(): c.get_offsets()[:, 0] for c in ax.collections if c.get_gid()}
    assert np.allclose(points["a (small)"], [20, 40]) and np.allclose(points["a"], [60, 80])
    assert any("< 20 test samples" in t.get_text() for t in fig.subfigs[0].legends[0].get_texts())


def test_partition_heatmap_log_scale_colour_bar_and_sizes():
    from matplotlib.colors import LogNorm

    hist = np.array([[100, 0, 3], [1, 50, 7]])
    sizes = {"train": [103, 58], "val": [0, 0], "test": [30, 20]}
    fig = plots.partition_heatmap(hist, sizes=sizes)
    marginal, heat, bar = fig.axes
    assert isinstance(heat.images[0].norm, LogNorm) and "log scale" in bar.get_ylabel()
    assert [t.get_text() for t in heat.texts] == ["100", "0", "3", "1", "50", "7"]  # counts in the cells
    stacked = {c.get_label(): [p.get_height() for p in c] for c in marginal.containers}
    assert stacked == {"train": [103, 58], "test": [30, 20]}  # an all-zero split is left out


def test_bad_baseline_and_wandb_without_key_exit_2_and_write_nothing(compared, tmp_path, monkeypatch):
    compare_dir = compared[0]
    before = sorted(p.name for p in compare_dir.iterdir())
    code, _, err = _main(["report", str(compare_dir), "--baseline", "fedprox", "--out", str(tmp_path / "r")])
    assert code == 2 and err.count("\n") == 1 and "no run is labelled fedprox" in err
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    code, _, err = _main(["report", str(compare_dir), "--wandb", "--out", str(tmp_path / "r")])
    assert code == 2 and err.count("\n") == 1 and "needs an API key" in err
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # fake: never sent anywhere
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    code, _, err = _main(["report", str(compare_dir), "--wandb", "--out", str(tmp_path / "r")])
    assert code == 2 and err.count("\n") == 1 and "did not answer" in err
    assert not (tmp_path / "r").exists() and sorted(p.name for p in compare_dir.iterdir()) == before


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory, data_cache):
    """A sweep directory as tune/runner.py leaves it: sweep.yaml, trials/<id>/ run directories
    (experiment = the sweep directory's name), trials.csv (best first, a trial ASHA stopped) and
    best.yaml; built without Ray from ordinary runs."""
    import yaml

    root = tmp_path_factory.mktemp("sweeps") / "tiny-20261124-031502"
    base = [f"data.cache_dir={data_cache}", f"out_dir={root / 'trials'}", "data.dataset=digits", "data.num_clients=6",
            "data.alpha=0.5", "model.hidden=[32]", "rounds=3", "wandb.mode=offline", "progress=false",
            "train.batch_size=32", "data.val_fraction=0.2", "algorithm=fedavg", f"experiment={root.name}"]
    rows = []
    for trial, lr in (("t_00000", 0.03), ("t_00001", 0.3)):
        run_dir = run_cli(base + [f"name={trial}", f"label={trial}", f"train.lr={lr}"])
        hist = read_jsonl(run_dir / "metrics.jsonl")
        val = float(np.mean([r["val_acc"] for r in hist]))
        rows.append({"trial": trial, "status": "completed", "round": 3, "val_acc_last10": val,
                     "val_acc_last10 (best round)": val, "test acc (not used)": hist[-1]["acc"], "train.lr": lr})
    rows.append({"trial": "t_00002", "status": "stopped", "round": 1, "val_acc_last10": 0.05,
                 "val_acc_last10 (best round)": 0.05, "test acc (not used)": 0.04, "train.lr": 0.011})
    table = pd.DataFrame(rows).sort_values(["status", "val_acc_last10"], ascending=[True, False])
    table.to_csv(root / "trials.csv", index=False)
    best = table.iloc[0]["trial"]
    (root / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "tiny", "space": {"train.lr": "loguniform(0.01, 0.5)"}, "metric": "val_acc_last10", "mode": "max",
        "num_samples": 3, "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2}}))
    (root / "best.yaml").write_text(f"# Best trial {best} of sweep tiny ({root}):\n# ...\nalgorithm: fedavg\n")
    return root


def test_sweep_report_shows_the_selection_metric_and_hyperparameters(sweep_dir, tmp_path):
    from pflalign.sweep_report import read_sweep, sensitivity_figure

    code, _, err = _main(["report", str(sweep_dir), "--out", str(tmp_path / "r")])
    assert code == 0, err
    md = (tmp_path / "r" / "report.md").read_text()
    trials = pd.read_csv(sweep_dir / "trials.csv", dtype={"trial": str}).set_index("trial")
    best = trials.index[0]
    assert "## Sweep tiny" in md and "Selected on **val_acc_last10** (max, on the validation split)" in md
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if line.startswith("| ")]
    header = next(row for row in cells if row[0] == "trial")
    assert header[3:5] == ["val_acc_last10 (%), validation (selected on)", "val_acc_last10 (%), best round"]
    assert header[5:] == ["train.lr", "test acc (%), last reported round (not used for selection)",
                          "test acc (%), mean, last 10 (not used for selection)"]
    rows = {row[0]: row for row in cells if row[0].replace("*", "").startswith("t_")}
    results = json.loads((sweep_dir / "trials" / best / "results.json").read_text())
    assert rows[f"**{best}** (selected)"] == [f"**{best}** (selected)", "completed", "3",
                                              *[f"{trials.loc[best, 'val_acc_last10'] * 100:.2f}"] * 2,
                                              f"{trials.loc[best, 'train.lr']:.4g}",
                                              f"{trials.loc[best, 'test acc (not used)'] * 100:.2f}",
                                              f"{results['acc_mean_last10'] * 100:.2f}"]
    assert rows["t_00002"][:6] == ["t_00002", "stopped", "1", "5.00", "5.00", "0.011"]  # ASHA's: at its round
    assert "## Results (test split: not used for the sweep's selection)" in md and "![tiny" in md

    ax = sensitivity_figure(read_sweep(sweep_dir)).subfigs[0].axes[0]
    points = {c.get_gid(): c.get_offsets() for c in ax.collections}
    completed = trials[trials["status"] == "completed"]
    assert np.allclose(points["completed"], np.c_[completed["train.lr"], completed["val_acc_last10"] * 100])
    assert np.allclose(points["stopped"], [[0.011, 5.0]]) and ax.get_xscale() == "log"
    assert np.allclose(points["selected"], [[trials.loc[best, "train.lr"], trials.loc[best, "val_acc_last10"] * 100]])


def test_wandb_report_of_a_compare_and_a_sweep(compared, sweep_dir):
    import wandb_workspaces.reports.v2 as wr

    from callbacks.wandb_report import FINALS, build_report, plan_report

    compare_dir = compared[0]
    report = build_report(plan_report([compare_dir, sweep_dir]), "my-team")
    assert (report.entity, report.project) == ("my-team", "pflalign")
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    curves, bars, sweep = grids
    for grid in (curves, bars):  # a runset per experiment (W&B group), filtered on it
        assert [r.name for r in grid.runsets] == [compare_dir.name, sweep_dir.name]
        assert [r.filters for r in grid.runsets] == [f"Metric(\"Group\") == '{g}'" for g in (compare_dir.name,
                                                                                             sweep_dir.name)]
        assert all(p.groupby == "JobType" and p.groupby_aggfunc == "mean" and p.groupby_rangefunc == "stddev"
                   for p in grid.panels)  # by label, band: std over seeds
    assert [p.y for p in curves.panels] == [[k] for k, _, _ in plots.CURVES[:6]]
    assert all(isinstance(p, wr.LinePlot) and p.x == "round" for p in curves.panels)
    assert [p.metrics for p in bars.panels] == [[k] for k in list(FINALS)[:4]]
    assert all(isinstance(p, wr.BarPlot) for p in bars.panels)
    assert [r.name for r in sweep.runsets] == [sweep_dir.name]
    parallel = sweep.panels[0]
    assert isinstance(parallel, wr.ParallelCoordinatesPlot)
    assert [(type(c.metric).__name__, c.metric.name) for c in parallel.columns] == [
        ("Config", "train.lr"), ("SummaryMetric", "val_acc_last10"), ("SummaryMetric", "acc_mean_last10")]
    assert parallel.columns[0].log and "not used for selection" in parallel.columns[2].display_name


def test_report_without_runs_is_bad_input(tmp_path):
    code, out, err = _main(["report", str(tmp_path)])
    assert code == 2 and err.strip().count("\n") == 0 and "no finished runs" in err
    assert not (tmp_path / "report.md").exists()
