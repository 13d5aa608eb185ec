"""Packaged presets and sweeps: found by name from any directory, shipped in the wheel, and a
miss names what exists."""
import sys
from pathlib import Path

import pytest
import yaml

from pflalign.config import Config, description, find_file, load_config, packaged
from pflalign.errors import ConfigError
from tune import load_sweep

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def elsewhere(tmp_path, monkeypatch):
    """Names must resolve without a checkout in the cwd (as for an installed wheel)."""
    monkeypatch.chdir(tmp_path)


def test_every_packaged_preset_loads_by_name():
    presets = packaged("preset")
    assert {"default", "fmnist"} <= set(presets)
    for name, path in presets.items():
        assert path.parent == ROOT / "pflalign" / "configs"
        assert find_file(name) == path and isinstance(load_config(name), Config)
        assert path.read_text().startswith("# ") and description(path), name


def test_default_preset_is_the_embedded_default():
    assert load_config("default") == load_config()
    assert load_config() == load_config(None, [], {"algo": {}}) and load_config().algorithm == "pflalign"


@pytest.mark.parametrize("algorithm", ["pflalign", "fedrep", "ditto"])
def test_presets_load_for_any_algorithm(algorithm):
    cfg = load_config("fmnist", [f"algorithm={algorithm}"])
    assert cfg.algorithm == algorithm and cfg.data.max_samples == 10000 and cfg.model.name == "cnn"


def test_every_packaged_sweep_loads_by_name():
    sweeps = packaged("sweep")
    assert {"pflalign", "fedprox", "ditto", "fedala"} <= set(sweeps)
    for name, path in sweeps.items():
        sweep = load_sweep(name)
        assert sweep.name == name and sweep.metric.startswith("val_") and sweep.cfg.data.val_fraction > 0
        assert find_file(name, "sweep") == path and description(path), name
    # config: default names the packaged preset, wherever the sweep file is read from
    assert load_sweep("pflalign").cfg == load_config("default", ["rounds=30", "data.val_fraction=0.2"])


def test_a_file_wins_over_a_packaged_name(tmp_path):
    assert load_config("fmnist").rounds == 100
    (tmp_path / "fmnist").write_text("rounds: 7\n")
    assert load_config("fmnist").rounds == 7
    assert find_file("fmnist") == Path("fmnist")


def test_a_sweep_base_config_may_name_a_preset(tmp_path):
    spec = {"config": "fmnist", "base": {"data.val_fraction": 0.2}, "space": {"train.lr": "loguniform(0.01, 0.1)"}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    assert load_sweep(tmp_path / "s.yaml").cfg.model.name == "cnn"


@pytest.mark.parametrize("value, kind, start", [
    ("fmnst", "preset", "config 'fmnst' is neither a file nor a packaged preset"),
    ("configs/fmnist.yaml", "preset", "config file not found: configs/fmnist.yaml"),  # a checkout's old path
    ("pflaling", "sweep", "sweep 'pflaling' is neither a file nor a packaged sweep"),
])
def test_unknown_names_list_the_packaged_ones_with_the_closest(value, kind, start):
    closest = {"preset": "fmnist", "sweep": "pflalign"}[kind]
    with pytest.raises(ConfigError) as e:
        find_file(value, kind)
    assert str(e.value) == f"{start} (packaged {kind}s: {', '.join(packaged(kind))}; did you mean {closest}?)"


def test_package_data_ships_every_packaged_file():
    """pyproject's package-data globs cover every YAML under pflalign/configs (a new folder
    there would otherwise be missing from the wheel)."""
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["pflalign"]
    shipped = {p for g in globs for p in (ROOT / "pflalign").glob(g)}
    assert shipped == set((ROOT / "pflalign" / "configs").rglob("*.yaml"))
    assert shipped == set(packaged("preset").values()) | set(packaged("sweep").values())
