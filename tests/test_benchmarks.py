"""The accuracy suite's settings and search spaces are valid configs and sweeps, its statistics say
what the numbers say, and its summary is assembled from stored settings (one tiny end-to-end run)."""
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pflalign.config import load_config
from tune import load_sweep

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import accuracy  # noqa: E402
import accuracy_stats  # noqa: E402


@pytest.mark.parametrize("setting", list(accuracy.SETTINGS))
def test_every_setting_and_tuned_space_validates(setting, tmp_path):
    overrides, lr_range = accuracy.SETTINGS[setting]
    base = [*overrides, *accuracy.COMMON]
    assert load_config(None, base).data.val_fraction > 0  # tuning reads validation only
    for method in accuracy.TUNED:
        algorithm, extra = {**accuracy.CONTROLS, **accuracy.VARIANTS}.get(method, (method, []))
        space = accuracy.search_space(algorithm, lr_range, base)
        assert space["train.lr"] == f"loguniform({lr_range[0]}, {lr_range[1]})"
        path = tmp_path / f"{method}.yaml"
        path.write_text(yaml.safe_dump({"space": space, "include_defaults": True}))
        sweep = load_sweep(path, [*base, f"algorithm={algorithm}", *extra])  # every range checked by the schema
        point = sweep.defaults()[0]
        assert point["train.lr"] == load_config(None, base).train.lr and None not in point.values()


def test_pflalign_is_tuned_on_algorithm_md_hyperparameters():
    space = accuracy.search_space("pflalign", (0.01, 0.3), [])
    assert {"algo.kappa", "algo.pmax", "algo.gamma0", "algo.eta_g", "algo.lam_g", "algo.gate_scope",
            "algo.direction", "train.lr"} == set(space)
    assert space["algo.gate_scope"] == "choice([all, head])" and space["algo.direction"] == "choice([momentum, gradient])"
    assert set(accuracy.search_space("local", (0.01, 0.3), [])) == {"train.lr"}
    # the control keeps its own space: fedavg_ft's hyperparameters, none of pFLAlign's
    assert set(accuracy.search_space("fedavg_ft", (0.01, 0.3), [])) == {"algo.b1", "train.lr"}
    assert all(accuracy.VARIANTS[v][0] == "pflalign" and v in accuracy.TUNED for v in accuracy.VARIANTS)


def _results(diffs: dict[str, dict[str, list[float]]]) -> pd.DataFrame:
    """setting -> label -> per-seed accuracy (fractions), as the suite's results frame."""
    col = accuracy.COLUMNS[0]
    return pd.DataFrame([{"setting": s, "label": label, "seed": i, col: v}
                         for s, labels in diffs.items() for label, vals in labels.items() for i, v in enumerate(vals)])


def test_paired_statistics_wins_ties_losses_and_the_variant_rule():
    col = accuracy.COLUMNS[0]
    base = [0.80, 0.82, 0.78, 0.81, 0.79]
    up = [b + 0.02 + 0.001 * i for i, b in enumerate(base)]  # +2 points on every seed: a win
    noisy = [b + d for b, d in zip(base, [0.03, -0.03, 0.01, -0.02, 0.0])]  # mean -0.2 points, spread: a tie
    res = _results({"a": {"pflalign": up, "fedrep": base, "var": up},
                    "b": {"pflalign": base, "fedrep": up, "var": [u + 0.01 for u in up]},
                    "c": {"pflalign": noisy, "fedrep": base, "var": noisy}})
    tables = accuracy_stats.paired_by_setting(res, "pflalign", ["fedrep"], col)
    assert [tables[s].loc["fedrep", "outcome"] for s in "abc"] == ["win", "loss", "tie"]
    assert tables["a"].loc["fedrep", "mean_diff"] == pytest.approx(2.2)  # points
    verdicts = accuracy_stats.variant_verdicts(res, "pflalign", ["var"], ["fedrep"], col)
    # var ties a and c, wins b; ranks 1, 1, 2 vs the default's 1, 2, 2: it replaces the default
    assert verdicts.loc["var", ["win", "tie", "loss"]].tolist() == [1, 2, 0]
    assert verdicts.loc["var", "verdict"] == "replaces the default"
    worse = res.assign(**{col: [v - 0.05 if (lab == "var" and s == "a") else v
                                for v, lab, s in zip(res[col], res["label"], res["setting"])]})
    assert accuracy_stats.variant_verdicts(worse, "pflalign", ["var"], ["fedrep"], col).loc["var", "verdict"] \
        == "stays an option"  # one loss is enough
    text = "\n".join(accuracy_stats.statistics_section(res, "pflalign", ["fedrep"], ["var"], ["fedrep"], col))
    assert "+2.20 [" in text and "replaces the default" in text
    partial = accuracy_stats.variant_verdicts(res, "pflalign", ["var"], ["fedrep"], col, suite_settings=6)
    assert partial.loc["var", "verdict"] == "provisional (3 of 6 settings): replaces the default"
    row = next(line for line in accuracy_stats.compact_markdown(tables).splitlines() if line.startswith("| fedrep"))
    assert [c.strip() for c in row.split("|")[2:-1]] == ["+2.2 [+2.0, +2.4] W", "-2.2 [-2.4, -2.0] L", "-0.2 [-3.2, +2.8] T"]  # t(4) half-width 2.96


def test_summary_is_assembled_from_stored_settings_and_survives_the_runs(tiny, tmp_path, monkeypatch):
    """Each setting stores what the summary needs; the summary covers exactly the settings stored with
    this protocol and reads the same numbers back once the runs are gone."""
    monkeypatch.setattr(accuracy, "SETTINGS", {"tiny-a": ([], (0.01, 0.3)), "tiny-b": (["data.alpha=5"], (0.01, 0.3))})
    overrides = [o for o in tiny if not o.startswith("out_dir=")]
    results, runs = tmp_path / "results", tmp_path / "runs"
    argv = ["accuracy.py", "--algorithms", "fedavg,pflalign", "--seeds", "0,1", "--trials", "0", "--jobs", "1",
            "--runs", str(runs), "--results", str(results)]

    def main(*extra):
        monkeypatch.setattr(sys, "argv", [*argv, *extra, "--", *overrides])
        accuracy.main()
        return (results / "summary.md").read_text()

    text = main("--settings", "tiny-a")
    stored = results / "tiny-a"
    assert {"runs.csv", "curves.csv", "gradvar.csv", "diverged.json", "protocol.json"} <= {p.name for p in stored.iterdir()}
    assert "Settings: tiny-a." in text and "![accuracy vs round](acc_vs_round.png)" in text
    dirs = sorted(p for p in (runs / "tiny-a" / "test").iterdir())
    live = accuracy.load_results(dirs).sort_values(["label", "seed"]).reset_index(drop=True)
    back, gradvar, curves, diverged = accuracy.load_setting("tiny-a", results)
    back = back.sort_values(["label", "seed"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(back[live.columns], live, check_exact=False, rtol=1e-12)
    assert set(curves["label"]) == {"pflalign", "pflalign: mechanism 1 only"} and diverged == []
    assert "pflalign" in set(gradvar["label"])

    shutil.rmtree(runs)
    assert main("--summary-only") == text  # the runs are gone; the stored setting is enough
    shutil.copytree(stored, results / "tiny-b")
    (results / "tiny-b" / "protocol.json").write_text((stored / "protocol.json").read_text().replace('"trials": 0',
                                                                                                   '"trials": 16'))
    assert "(stored with another protocol, left out: tiny-b)" in main("--summary-only")
    with pytest.raises(SystemExit, match="no setting under .* was stored with this protocol"):
        main("--summary-only", "--seeds", "0,1,2")


def test_a_cell_that_lost_seeds_says_so():
    col = accuracy.COLUMNS[0]
    res = pd.DataFrame([{"setting": "s", "label": label, "seed": seed, col: acc}
                        for label, accs in {"a": [0.5, 0.7, 0.6], "b": [0.8, 0.9]}.items()
                        for seed, acc in enumerate(accs)])
    table = accuracy.across_settings(res, ["a", "b"], ["s"])
    assert table.loc["a", "s"] == "60.0 ± 10.0" and table.loc["b", "s"] == "85.0 ± 7.1 (n=2)"
    assert list(table.index) == ["b", "a"]  # the survivors' mean ranks it: the marker is the warning
