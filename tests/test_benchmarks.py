"""The accuracy suite's settings and search spaces are valid configs and sweeps (no runs)."""
import sys
from pathlib import Path

import pytest
import yaml

from pflalign.config import load_config
from tune import load_sweep

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import accuracy  # noqa: E402


@pytest.mark.parametrize("setting", list(accuracy.SETTINGS))
def test_every_setting_and_tuned_space_validates(setting, tmp_path):
    overrides, lr_range = accuracy.SETTINGS[setting]
    base = [*overrides, *accuracy.COMMON]
    assert load_config(None, base).data.val_fraction > 0  # tuning reads validation only
    for method in accuracy.TUNED:
        algorithm, extra = accuracy.CONTROLS.get(method, (method, []))
        space = accuracy.search_space(algorithm, lr_range, base)
        assert space["train.lr"] == f"loguniform({lr_range[0]}, {lr_range[1]})"
        path = tmp_path / f"{method}.yaml"
        path.write_text(yaml.safe_dump({"space": space, "include_defaults": True}))
        sweep = load_sweep(path, [*base, f"algorithm={algorithm}", *extra])  # every range checked by the schema
        point = sweep.defaults()[0]
        assert point["train.lr"] == load_config(None, base).train.lr and None not in point.values()


def test_pflalign_is_tuned_on_algorithm_md_hyperparameters():
    space = accuracy.search_space("pflalign", (0.01, 0.3), [])
    assert {"algo.kappa", "algo.pmax", "algo.gamma0", "algo.eta_g", "algo.lam_g", "train.lr"} == set(space)
    assert set(accuracy.search_space("local", (0.01, 0.3), [])) == {"train.lr"}
