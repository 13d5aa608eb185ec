"""User plug-ins (pflalign/plugins.py): an algorithm, model and dataset from the user's own code, by
import path or entry point, validated, listed, swept and run like built-ins, locally and on Ray.
The example package (examples/pflalign_example) is installed offline into a directory of its own."""
import contextlib
import io
import math
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import yaml

from conftest import read_jsonl, run_cli
from pflalign.algorithms import ALGORITHMS
from pflalign.cli import main
from pflalign.config import DataConfig, ModelConfig, load_config
from pflalign.data import DATASETS, build_federated_data, cache_key
from pflalign.errors import ConfigError, DataError
from pflalign.models import MODELS, build_model
from pflalign.serialize import load_tree

ROOT = Path(__file__).resolve().parents[1]
REGISTRIES = (ALGORITHMS, MODELS, DATASETS)
BY_NAME = ["algorithm=fedavgm", "model.name=gelu_mlp", "data.dataset=blobs"]
BY_PATH = ["algorithm=pflalign_example.algorithm:FedAvgM", "model.name=pflalign_example.model:gelu_mlp",
           "data.dataset=pflalign_example.data:blobs"]


@pytest.fixture(scope="module")
def example_site(tmp_path_factory) -> Path:
    """examples/pflalign_example installed with pip, offline, into its own directory (the venv is
    untouched; a copy is built, so no build/ lands in the repository)."""
    src = tmp_path_factory.mktemp("src") / "pflalign_example"
    shutil.copytree(ROOT / "examples" / "pflalign_example", src)
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                    "--quiet", "--target", str(site), str(src)], check=True, capture_output=True, timeout=300)
    return site


@pytest.fixture
def on_path(monkeypatch):
    """Put directories on sys.path for one test; the registries rescan entry points around it,
    and the modules imported from there are forgotten after it."""
    added: list[str] = []

    def add(path: Path) -> None:
        monkeypatch.syspath_prepend(str(path))
        added.append(str(path))
        for registry in REGISTRIES:
            registry.refresh()
    yield add
    monkeypatch.undo()
    for registry in REGISTRIES:
        registry.refresh()
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(tuple(added)):
            del sys.modules[name]


@pytest.fixture
def example(example_site, on_path) -> Path:
    on_path(example_site)
    return example_site


def _main(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("override, needle", [
    ("algorithm=fedavgg", "unknown algorithm 'fedavgg' (did you mean fedavg? choose from "),
    ("model.name=mlpp", "unknown model.name 'mlpp' (did you mean mlp? choose from "),
    ("data.dataset=digit", "unknown data.dataset 'digit' (did you mean digits? choose from "),
    ("algorithm=nosuchpkg.algos:Foo", "algorithm=nosuchpkg.algos:Foo: no module named nosuchpkg"),
    ("algorithm=pflalign.algorithms.fedprox:Foo",
     "algorithm=pflalign.algorithms.fedprox:Foo: module pflalign.algorithms.fedprox has no attribute Foo"),
    ("algorithm=pflalign.models.nets:mlp", "function pflalign.models.nets.mlp is not a subclass of"),
    ("algorithm=pflalign.algorithms.fedprox:FedProxHparams", "is not a subclass of pflalign.algorithms.Algorithm"),
    ("model.name=pflalign.algorithms.fedprox:FedProx", "is not a model factory (cfg, input_shape, num_classes)"),
    ("model.name=pflalign.data.datasets:DATASETS", "model.name=pflalign.data.datasets:DATASETS: a Registry object"),
    ("data.dataset=pflalign.models.nets:mlp", "data.dataset=pflalign.models.nets:mlp: function"),
    ("algorithm=pflalign:algorithms:FedAvg", "expected an import path package.module:attribute"),
])
def test_bad_names_and_import_paths_are_one_line_before_any_work(tiny, tmp_path, override, needle):
    code, _, err = _main(["run", *tiny, override])
    assert code == 2 and needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


def test_plugins_by_name_and_path_are_validated_like_builtins(example):
    assert {"fedavgm", "gelu_mlp", "blobs"} <= set(ALGORITHMS) | set(MODELS) | set(DATASETS)
    assert list(ALGORITHMS)[-1] == "fedavgm"  # after the built-ins
    for names in (BY_NAME, BY_PATH):
        cfg = load_config(None, names + ["algo.server_lr=0.5"])
        assert (type(cfg.algo).__name__, cfg.algo.server_momentum, cfg.algo.server_lr) == ("FedAvgMHparams", 0.9, 0.5)
    with pytest.raises(ConfigError, match=r"algo.server_momentum must be <= 0.99"):
        load_config(None, BY_PATH[:1] + ["algo.server_momentum=2"])
    with pytest.raises(ConfigError, match="unknown config key 'algo.kappa'"):
        load_config(None, BY_NAME[:1] + ["algo.kappa=1"])


def test_list_shows_plugins_and_their_hyperparameters(example):
    code, out, _ = _main(["list", "algorithms"])
    assert code == 0 and "fedavgm" in out and "FedAvgM (Hsu et al., 2019)" in out
    assert "algo.server_momentum" in out and "algo.server_lr" in out
    assert "gelu_mlp" in _main(["list", "models"])[1].split() and "blobs" in _main(["list", "datasets"])[1].split()


def test_sweeps_take_default_ranges_from_the_plugins_hparams(example, tmp_path, tiny):
    from tune import load_sweep

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": {"algorithm": "fedavgm", "data.val_fraction": 0.2},
                                    "space": {"algo.server_lr": "default", "algo.server_momentum": "uniform(0, 1)"}}))
    with pytest.raises(ConfigError, match="algo.server_momentum must be <= 0.99"):
        load_sweep(path, tiny)
    path.write_text(yaml.safe_dump({"base": {"algorithm": "fedavgm", "data.val_fraction": 0.2},
                                    "space": {"algo.server_lr": "default"}}))
    assert load_sweep(path, tiny).space == {"algo.server_lr": "loguniform(0.3, 3)"}


def _fake_dist(site: Path, name: str, entry_points: str) -> None:
    """A distribution that only declares entry points (what pip writes into <site>/*.dist-info)."""
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


def test_entry_points_never_shadow_builtins_and_ambiguous_or_broken_ones_say_so(tmp_path, on_path, tiny):
    _fake_dist(tmp_path, "shadow", """
        [pflalign.algorithms]
        fedavg = pflalign.algorithms.fedprox:FedProx
        broken = nosuchpkg.algos:Foo
        [pflalign.models]
        twin = pflalign.models.nets:mlp
        """)
    _fake_dist(tmp_path, "other", "[pflalign.models]\ntwin = pflalign.models.nets:cnn\n")
    on_path(tmp_path)
    with pytest.warns(UserWarning, match=r"'fedavg' \(pflalign.algorithms.fedprox:FedProx of package shadow\) "
                                         r"ignored: fedavg is built in"):
        assert ALGORITHMS["fedavg"].__name__ == "FedAvg" and "broken" in ALGORITHMS
    with pytest.warns(UserWarning, match="'twin' is registered differently by several packages"):
        assert "twin" not in MODELS
    code, _, err = _main(["run", *tiny, "algorithm=broken"])
    assert code == 2 and err.count("\n") == 1
    assert "algorithm=broken (entry point nosuchpkg.algos:Foo of package shadow): no module named nosuchpkg" in err


def _write_dataset_module(path: Path, dtype: str = "float32", comment: str = "") -> None:
    path.write_text(textwrap.dedent(f"""\
        import numpy as np
        from pflalign.data import DatasetSpec, RawDataset

        def load(cfg, seed):  {comment}
            rng = np.random.default_rng(seed)
            return RawDataset(rng.normal(size=(cfg.num_samples, 3)).astype("{dtype}"),
                              rng.integers(0, 2, cfg.num_samples), 2, (3,))

        spec = DatasetSpec(load, 2, (3,), "three gaussian features", generated=True)
        """))


def test_plugin_dataset_cache_key_follows_its_name_source_and_every_data_key(tmp_path, on_path):
    module = tmp_path / "userdata.py"
    _write_dataset_module(module)
    on_path(tmp_path)
    cfg = DataConfig(dataset="userdata:spec", num_samples=100)
    key = cache_key(cfg, 0)
    assert cache_key(cfg, 0) == key  # stable
    assert cache_key(DataConfig(dataset="userdata:spec", num_samples=100, seq_len=7), 0) != key  # any data.* key
    assert cache_key(DataConfig(dataset="digits", seq_len=7), 0) == cache_key(DataConfig(dataset="digits"), 0)
    _write_dataset_module(module, comment="# edited")
    assert cache_key(cfg, 0) != key  # the loader's source changed: stale data is never served


def test_plugin_datasets_and_models_are_held_to_their_contract(tmp_path, on_path, data_cache):
    _write_dataset_module(tmp_path / "badtype.py", dtype="float64")
    on_path(tmp_path)
    with pytest.raises(DataError, match=r"data.dataset=badtype:spec: the loader returned x of float64 and y of int64"):
        build_federated_data(DataConfig(dataset="badtype:spec", num_samples=100, num_clients=2,
                                        cache_dir=str(data_cache)), 0)
    (tmp_path / "badmodel.py").write_text("def factory(cfg, input_shape, num_classes):\n    return 'a model'\n")
    with pytest.raises(ConfigError, match=r"model.name=badmodel:factory: the factory returned a str object, not a "):
        build_model(ModelConfig(name="badmodel:factory"), (3,), 2)


def _server(run_dir: Path) -> dict:
    return load_tree(max(run_dir.glob("server.*.safetensors"), key=lambda p: int(p.suffixes[0][1:])))


def _numel(input_shape: tuple[int, ...], num_classes: int, width: int = 64) -> int:
    """Parameters of the example's gelu_mlp: proj, LayerNorm, head."""
    return (math.prod(input_shape) + 1) * width + 2 * width + (width + 1) * num_classes


def test_example_plugins_run_and_are_what_ran(example, tiny):
    """FedAvgM with beta=0, eta=1 is FedAvg bit for bit; its default momentum is not; the server
    checkpoint holds gelu_mlp's parameters and FedAvgM's momentum buffer; uploads are its size."""
    tiny = _tiny_example(tiny) + ["rounds=2"]  # momentum shows from round 2 on
    plain = run_cli(tiny + ["name=fedavg", "algorithm=fedavg"] + BY_NAME[1:])
    same = run_cli(tiny + ["name=beta0", "algo.server_momentum=0"] + BY_NAME)
    momentum = run_cli(tiny + ["name=path"] + BY_PATH)
    assert read_jsonl(same / "metrics.jsonl") == read_jsonl(plain / "metrics.jsonl")
    assert read_jsonl(momentum / "metrics.jsonl") != read_jsonl(plain / "metrics.jsonl")
    tree = _server(momentum)
    names = ["body.proj.weight", "body.proj.bias", "body.norm.weight", "body.norm.bias", "head.weight", "head.bias"]
    assert list(tree["global"]) == names and list(tree["server"]["momentum"]) == names
    first = read_jsonl(momentum / "metrics.jsonl")[0]
    assert first["comm_up_bytes"] == first["clients"] * 4 * _numel((16,), 4)


def _cli(args: list[str], site: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """The installed `pflalign` in a fresh process that finds the example only through PYTHONPATH."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    environ.update(PYTHONPATH=str(site), **env)
    return subprocess.run([str(Path(sys.executable).with_name("pflalign")), *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=600)


def _tiny_example(tiny: list[str]) -> list[str]:
    return [a for a in tiny if not a.startswith("data.dataset=")] + ["data.num_samples=300"]


@pytest.mark.slow
def test_installed_example_on_the_command_line(example_site, tiny, tmp_path):
    """A fresh `pflalign` finds the entry points and the import paths on PYTHONPATH alone."""
    listed = _cli(["list", "algorithms"], example_site, tmp_path)
    assert listed.returncode == 0 and "fedavgm" in listed.stdout and "algo.server_momentum" in listed.stdout
    runs = [_cli(["run", *_tiny_example(tiny), f"name={n}", *args], example_site, tmp_path)
            for n, args in (("names", BY_NAME), ("paths", BY_PATH))]
    assert all(p.returncode == 0 for p in runs), runs[0].stderr[-2000:] + runs[1].stderr[-2000:]
    names, paths = (Path(p.stdout.strip().splitlines()[-1]) for p in runs)
    assert read_jsonl(names / "metrics.jsonl") == read_jsonl(paths / "metrics.jsonl")
    assert "momentum" in _server(names)["server"]


@pytest.mark.slow
def test_installed_example_on_ray(example_site, tiny, tmp_path):
    """runtime=ray: the CLI's local instance starts its driver and worker actors with the CLI's
    environment, so they import the plug-ins from PYTHONPATH too, and give the local numbers."""
    home = Path(tempfile.mkdtemp(prefix="pfh-", dir="/tmp"))  # Ray writes $HOME/.ray/auth_token
    temp_dir = tempfile.mkdtemp(prefix="pfp-", dir="/tmp")  # short: Ray's unix sockets live here
    try:
        proc = _cli(["run", *_tiny_example(tiny), *BY_PATH, "name=ray", "runtime=ray", "ray.local_cpus=2",
                     f"ray.temp_dir={temp_dir}"], example_site, tmp_path, HOME=str(home))
        assert proc.returncode == 0, proc.stderr[-3000:]
        local = _cli(["run", *_tiny_example(tiny), *BY_PATH, "name=local"], example_site, tmp_path)
        assert local.returncode == 0, local.stderr[-3000:]
        runs = tmp_path / "runs"
        assert read_jsonl(runs / "ray" / "metrics.jsonl") == read_jsonl(runs / "local" / "metrics.jsonl")
        assert "momentum" in _server(runs / "ray")["server"]
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(temp_dir, ignore_errors=True)
