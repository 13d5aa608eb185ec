"""Bad input, table-driven: every case must exit 2 with exactly one stderr line that names the
key or file, no traceback, and leave nothing new (or changed) anywhere under its tmp dir, which
holds out_dir, the data cache and every file the case prepared.

Adding a case is one line in CASES: ``Case(id, argv, needle, setup=None)``.

* ``argv(t)`` returns the arguments of ``pflalign.cli.main``; the helpers ``run(...)``,
  ``compare(...)``, ``tune(...)`` and ``cli(...)`` build it, and ``{tmp}``, ``{out}``, ``{cache}``
  in their strings (and in ``needle``) become this case's paths. ``t.tiny`` is the ``tiny``
  fixture's overrides with out_dir = ``{out}`` (= ``{tmp}/work/runs``) and data.cache_dir = ``{cache}``.
* ``setup(tmp_path)`` (or ``setup(tmp_path, t)``) prepares files before the tree is snapshot; it
  may return a dict of environment variables for the case (a value of None unsets one).
"""
from __future__ import annotations

import gzip
import inspect
import json
import pickle
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml

import pflalign.experiment  # noqa: F401 - heavy imports happen here, not inside the captured call
from pflalign.cli import main

# ---------------------------------------------------------------- harness


@dataclass
class Ctx:
    tmp: Path
    tiny: list[str]

    @property
    def out(self) -> Path:
        return self.tmp / "work" / "runs"

    @property
    def cache(self) -> Path:
        return self.tmp / "cache"

    def fmt(self, s: str) -> str:
        return s.format(tmp=self.tmp, out=self.out, cache=self.cache)


@dataclass
class Case:
    id: str
    argv: Callable[[Ctx], list[str]]
    needle: str
    setup: Callable | None = None


def run(*overrides: str):
    return lambda t: ["run", *t.tiny, *map(t.fmt, overrides)]


def resume(run_dir: str, *overrides: str):
    return lambda t: ["run", "--resume", t.fmt(run_dir), *t.tiny, *map(t.fmt, overrides)]


def compare(*args: str):
    return lambda t: ["compare", *map(t.fmt, args), *t.tiny]


def tune(*args: str):
    return lambda t: ["tune", *map(t.fmt, args), *t.tiny]


def cli(*args: str):
    return lambda t: [*map(t.fmt, args)]


def both(*setups: Callable):
    def setup(tmp_path, t):
        env = {}
        for s in setups:
            env.update(_call(s, tmp_path, t) or {})
        return env
    return setup


def _call(setup: Callable, tmp_path: Path, t: Ctx):
    return setup(tmp_path, t) if len(inspect.signature(setup).parameters) > 1 else setup(tmp_path)


def snapshot(root: Path) -> dict:
    """Every file and directory under root, with each file's size and mtime."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = "dir" if p.is_dir() else (st.st_size, st.st_mtime_ns)
    return out


# ---------------------------------------------------------------- setups


def write(rel: str, text: str = ""):
    def setup(tmp_path):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return setup


def sweep(**keys):
    """A sweep file at {tmp}/sweep.yaml: a valid tiny sweep with ``keys`` changed."""
    spec = {"base": {"data.val_fraction": 0.2}, "space": {"train.lr": "loguniform(0.02, 0.2)"},
            "num_samples": 1, "scheduler": "fifo", **keys}
    return write("sweep.yaml", yaml.safe_dump(spec))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wandb_env(key: bool = True, url: str | None = None):
    """A fake API key (never sent: the host is a closed loopback port) and a HOME without ~/.netrc."""
    def setup(tmp_path):
        (tmp_path / "home").mkdir()
        return {"WANDB_MODE": None, "HOME": str(tmp_path / "home"),
                "WANDB_API_KEY": "x" * 40 if key else None,
                "WANDB_BASE_URL": url or f"http://127.0.0.1:{closed_port()}"}
    return setup


def _write_idx(folder: Path, stem: str, arr: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    (folder / f"{stem}.gz").write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes()))


def idx(damage: str | None = None):
    """Fashion-MNIST-like idx files (40 samples) in {tmp}/raw, then damaged as named
    (``labels-only``: only damage the labels of files already there)."""
    def setup(tmp_path):
        folder = tmp_path / "raw"
        if damage == "labels-only":  # damage files an earlier setup wrote
            _write_idx(folder, "t10k-labels-idx1-ubyte", np.full(10, 10), 2049)
            return
        folder.mkdir()
        imgs = np.random.default_rng(0).integers(0, 256, (40, 28, 28))
        labels = np.arange(40) % 10
        for split, sl in (("train", slice(0, 30)), ("t10k", slice(30, 40))):
            _write_idx(folder, f"{split}-images-idx3-ubyte", imgs[sl], 2051)
            _write_idx(folder, f"{split}-labels-idx1-ubyte", labels[sl], 2049)
        if damage == "truncated":
            path = folder / "train-images-idx3-ubyte.gz"
            path.write_bytes(path.read_bytes()[:-100])
        elif damage == "labels":
            _write_idx(folder, "t10k-labels-idx1-ubyte", np.full(10, 10), 2049)
    return setup


IDX_RUN = ("data.dataset=fmnist", "data.root={tmp}/raw", "data.partition=iid", "data.num_clients=2")


def cache_built(*overrides: str):
    """Build the data cache of ``run(*overrides)`` first (a case that must leave it as it was)."""
    def setup(tmp_path, t):
        from pflalign.config import load_config
        from pflalign.data import build_federated_data

        cfg = load_config(None, [*t.tiny, *map(t.fmt, overrides)])
        build_federated_data(cfg.data, cfg.seed)
        assert list(t.cache.glob("*.npz"))
    return setup


class RunsCode:
    """Unpickling this would create {tmp}/code-ran (the snapshot would show it)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import os
        return os.mkdir, (self.path,)


def cifar(bad_batch: Callable[[Path], object]):
    """CIFAR-10 python batches in {tmp}/c/cifar-10-batches-py; data_batch_1 replaced by bad_batch(tmp)."""
    def setup(tmp_path):
        folder = tmp_path / "c" / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
            (folder / f).write_bytes(pickle.dumps(bad_batch(tmp_path) if f == "data_batch_1" else batch))
    return setup


CIFAR_RUN = ("data.dataset=cifar10", "data.root={tmp}/c", "data.partition=iid", "data.num_clients=2")

GOOD_RESULTS = {"algorithm": "fedavg", "label": "fedavg", "seed": 0, "acc_mean_last10": 0.5,
                "config": {"seed": 0, "data": {"dataset": "digits"}, "rounds": 1}}
GOOD_METRICS = json.dumps({"round": 1, "acc_mean": 0.5, "client_acc": [0.5, 0.5]}) + "\n"


def crafted_run(results: object = GOOD_RESULTS, metrics: str = GOOD_METRICS, raw: str | None = None):
    """A finished-looking run directory {tmp}/done/r (results.json, metrics.jsonl)."""
    def setup(tmp_path):
        run_dir = tmp_path / "done" / "r"
        run_dir.mkdir(parents=True)
        (run_dir / "results.json").write_text(raw if raw is not None else json.dumps(results))
        (run_dir / "metrics.jsonl").write_text(metrics)
    return setup


RESULTS = "{tmp}/done/r/results.json"


class _Pwn:
    def __reduce__(self):
        return (__import__("os").mkdir, ("/tmp/pflalign-pwned-by-a-checkpoint",))


def stopped_run(damage: Callable[[Path], None] | None = None):
    """A real run of 2 rounds at {out}/part (resumable), then ``damage(run_dir)``."""
    def setup(tmp_path, t):
        assert main(["run", *t.tiny, "rounds=2", "name=part"]) == 0
        if damage is not None:
            damage(t.out / "part")
    return setup


def _pickle_bomb(path: Path) -> None:
    import torch
    torch.save({"x": _Pwn()}, path)


def _edit_config(run_dir: Path) -> None:
    cfg = run_dir / "config.yaml"
    cfg.write_text(cfg.read_text().replace("num_clients: 6", "num_clients: 5"))

# ---------------------------------------------------------------- the table

CASES = [
    # non-finite floats, in every section and in algo.*
    Case("client_fraction-nan", run("client_fraction=nan"), "client_fraction must be a finite number"),
    Case("alpha-nan", run("data.alpha=nan"), "data.alpha must be a finite number"),
    Case("test_fraction-nan", run("data.test_fraction=nan"), "data.test_fraction"),
    Case("lr-nan", run("train.lr=nan"), "train.lr must be a finite number"),
    Case("lr-inf", run("train.lr=inf"), "train.lr must be a finite number"),
    Case("weight_decay-minus-inf", run("train.weight_decay=-inf"), "train.weight_decay"),
    Case("ray-num_gpus-nan", run("ray.num_gpus=nan"), "ray.num_gpus"),
    Case("algo-kappa-nan", run("algo.kappa=nan"), "algo.kappa must be a finite number"),
    Case("algo-optional-float-inf", run("algorithm=ditto", "algo.personal_lr=inf"), "algo.personal_lr"),
    Case("yaml-lr-nan", lambda t: ["run", "--config", str(t.tmp / "c.yaml"), *t.tiny], "train.lr",
         write("c.yaml", "train:\n  lr: .nan\n")),
    # integers: seeds, ranges, types
    Case("seed-negative", run("seed=-1"), "seed must be >= 0"),
    Case("seed-huge", run("seed=100000000000000000000000"), "seed must be <="),
    Case("data-seed-negative", run("data.seed=-5"), "data.seed"),
    Case("rounds-zero", run("rounds=0"), "rounds must be >= 1"),
    Case("rounds-huge", run("rounds=100000000000000000000"), "rounds"),
    Case("rounds-float", run("rounds=1.5"), "rounds"),
    Case("rounds-word", run("rounds=many"), "rounds"),
    Case("progress-not-bool", run("progress=maybe"), "progress"),
    # lists
    Case("hidden-negative", run("model.hidden=[-5]"), "model.hidden must be a list of integers >= 1"),
    Case("hidden-zero", run("model.hidden=[32,0]"), "model.hidden"),
    Case("hidden-not-a-list", run("model.hidden=abc"), "model.hidden"),
    Case("hidden-unclosed", run("model.hidden=[1"), "model.hidden"),
    # strings, names, choices, sections
    Case("name-slash", run("name=a/b"), "name must be a single directory name"),
    Case("name-escapes-out_dir", run("name=../../x"), "name must be a single directory name"),
    Case("name-dotdot", run("name=.."), "name"),
    Case("experiment-empty", run("experiment="), "experiment"),
    Case("label-empty-in-yaml", lambda t: ["run", "--config", str(t.tmp / "c.yaml"), *t.tiny], "label",
         write("c.yaml", "label: ''\n")),
    Case("wandb-mode-choice", run("wandb.mode=sometimes"), "wandb.mode must be one of"),
    Case("runtime-choice", run("runtime=slurm"), "runtime must be one of"),
    Case("section-scalar", run("data=3"), "'data'"),
    Case("algo-list", run("algo=[1]"), "'algo'"),
    Case("unknown-key", run("data.alpah=1"), "unknown config key 'data.alpah' (did you mean data.alpha?)"),
    Case("unknown-key-no-section", run("alpha=0.5"), "unknown config key 'alpha' (did you mean data.alpha?)"),
    Case("unknown-section", run("dat.alpha=0.5"), "unknown config key 'dat' (did you mean data?)"),
    Case("unknown-key-in-yaml", lambda t: ["run", "--config", str(t.tmp / "c.yaml"), *t.tiny],
         "unknown config key 'train.rl' (did you mean train.lr?)", write("c.yaml", "train:\n  rl: 0.1\n")),
    Case("unknown-key-before-config", lambda t: ["run", "data.alpah=1", "--config", "default", *t.tiny],
         "(did you mean data.alpha?)"),
    Case("unknown-algo-key-close", run("algorithm=ditto", "algo.lamda=1"),
         "unknown config key 'algo.lamda' (did you mean algo.lam?)"),
    Case("unknown-algo-key-lists-keys", run("algorithm=fedprox", "algo.nope=1"), "(fedprox's algo.* keys: mu)"),
    Case("unknown-algo-key-none", run("algorithm=fedavg", "algo.mu=1"), "(fedavg has no algo.* keys)"),
    Case("unknown-algo-key", run("algo.nope=1"), "unknown config key 'algo.nope'"),
    Case("unknown-algorithm", run("algorithm=fedavgg"), "fedavgg"),
    Case("unknown-model", run("model.name=nope"), "model.name"),
    Case("unknown-dataset", run("data.dataset=imagenet"), "data.dataset"),
    Case("not-key-value", run("noequals"), "noequals"),
    Case("too-many-clients", run("data.num_clients=5000"), "num_clients"),
    # paths
    Case("out_dir-is-a-file", run("out_dir={tmp}/afile"), "out_dir={tmp}/afile", write("afile")),
    Case("out_dir-under-a-file", run("out_dir={tmp}/afile/sub"), "out_dir", write("afile")),
    Case("cache_dir-is-a-file", run("data.cache_dir={tmp}/afile"), "data.cache_dir", write("afile")),
    Case("config-missing", cli("run", "--config", "{tmp}/nope.yaml"), "{tmp}/nope.yaml"),
    Case("config-bad-yaml", cli("run", "--config", "{tmp}/c.yaml"), "{tmp}/c.yaml", write("c.yaml", "a: [\n")),
    Case("config-not-a-mapping", cli("run", "--config", "{tmp}/c.yaml"), "{tmp}/c.yaml", write("c.yaml", "[1, 2]\n")),
    Case("preset-unknown", run("--config", "fmnst"), "config 'fmnst' is neither a file nor a packaged preset"),
    Case("preset-did-you-mean", run("--config", "fmnst"), "; did you mean fmnist?)"),
    Case("preset-old-checkout-path", run("--config", "{tmp}/configs/fmnist.yaml"),
         "config file not found: {tmp}/configs/fmnist.yaml (packaged presets: default"),
    # W&B decided before anything exists (fake key, closed loopback port)
    Case("wandb-online-unreachable", run("wandb.mode=online"), "wandb.mode=online", wandb_env()),
    Case("wandb-online-no-key", run("wandb.mode=online"), "wandb.mode=online", wandb_env(key=False)),
    Case("wandb-bad-base-url", run("wandb.mode=auto"), "WANDB_BASE_URL", wandb_env(url="http://127.0.0.1:99999")),
    # dataset files (checked before anything is cached)
    Case("idx-truncated-gz", run(*IDX_RUN), "{tmp}/raw/train-images-idx3-ubyte.gz", idx("truncated")),
    Case("idx-label-out-of-range", run(*IDX_RUN), "{tmp}/raw/t10k-labels-idx1-ubyte.gz", idx("labels")),
    Case("idx-bad-labels-over-a-built-cache", run(*IDX_RUN), "t10k-labels-idx1-ubyte.gz",
         both(idx(), cache_built(*IDX_RUN), idx("labels-only"))),
    Case("idx-root-missing", run(*IDX_RUN), "data.root"),
    Case("idx-root-is-a-file", run(*IDX_RUN[:1], "data.root={tmp}/afile"), "data.root={tmp}/afile", write("afile")),
    Case("cifar-batch-is-a-list", run(*CIFAR_RUN), "{tmp}/c/cifar-10-batches-py/data_batch_1",
         cifar(lambda tmp: [1, 2])),
    Case("cifar-batch-runs-code", run(*CIFAR_RUN), "data_batch_1", cifar(lambda tmp: RunsCode(tmp / "code-ran"))),
    # compare
    Case("compare-no-algorithms", compare("--algorithms", ","), "--algorithms"),
    Case("compare-negative-seed", compare("--algorithms", "fedavg", "--seeds", "-1"), "--seeds"),
    Case("compare-seed-not-int", compare("--algorithms", "fedavg", "--seeds", "0,x"), "--seeds"),
    Case("compare-seed-twice", compare("--algorithms", "fedavg", "--seeds", "0,0"), "--seeds"),
    Case("compare-unknown-algorithm", compare("--algorithms", "fedavg,nope"), "nope"),
    Case("compare-name", compare("--algorithms", "fedavg", "name=x"), "name"),
    Case("compare-jobs-zero", compare("--algorithms", "fedavg", "--jobs", "0"), "--jobs"),
    # tune (all before Ray starts)
    Case("sweep-inf-bound", tune("--sweep", "{tmp}/sweep.yaml"), "train.lr",
         sweep(space={"train.lr": "uniform(0.01, .inf)"})),
    Case("sweep-grace-not-int", tune("--sweep", "{tmp}/sweep.yaml"), "grace_period",
         sweep(scheduler={"name": "asha", "grace_period": "abc"})),
    Case("sweep-resources-list", tune("--sweep", "{tmp}/sweep.yaml"), "resources", sweep(resources=[1, 2])),
    Case("sweep-space-list", tune("--sweep", "{tmp}/sweep.yaml"), "space", sweep(space=[1, 2])),
    Case("sweep-name-escapes", tune("--sweep", "{tmp}/sweep.yaml"), "sweep name", sweep(name="../x")),
    Case("sweep-seed-negative", tune("--sweep", "{tmp}/sweep.yaml"), "seed", sweep(seed=-1)),
    Case("sweep-file-missing", tune("--sweep", "{tmp}/nope.yaml"), "{tmp}/nope.yaml"),
    Case("sweep-not-given", tune(), "--sweep"),
    Case("sweep-unknown-name", tune("--sweep", "pflaling"), "sweep 'pflaling' is neither a file nor a packaged sweep"),
    Case("sweep-did-you-mean", tune("rounds=2", "--sweep", "fedprx"), "; did you mean fedprox?)"),
    # resume and checkpoints (a real stopped run at {out}/part)
    Case("resume-crafted-server-file", resume("{out}/part", "rounds=4"), "{out}/part/server.2.safetensors",
         stopped_run(lambda d: _pickle_bomb(d / "server.2.safetensors"))),
    Case("resume-crafted-manifest", resume("{out}/part"), "{out}/part/checkpoint.json",
         stopped_run(lambda d: _pickle_bomb(d / "checkpoint.json"))),
    Case("resume-legacy-pickle", resume("{out}/part"), "{out}/part/checkpoint.pt",
         stopped_run(lambda d: ((d / "checkpoint.json").unlink(), _pickle_bomb(d / "checkpoint.pt")))),
    Case("resume-empty-manifest", resume("{out}/part", "rounds=4"), "{out}/part/checkpoint.json",
         stopped_run(lambda d: (d / "checkpoint.json").write_text(""))),
    Case("resume-missing-state-file", resume("{out}/part", "rounds=4"), "{out}/part/states/0.2.safetensors",
         stopped_run(lambda d: (d / "states" / "0.2.safetensors").unlink())),
    Case("resume-changes-alpha", resume("{out}/part", "rounds=4", "data.alpha=0.3"), "'data.alpha'",
         stopped_run()),
    Case("resume-fewer-rounds", resume("{out}/part", "rounds=1"), "rounds=1", stopped_run()),
    Case("resume-edited-config", resume("{out}/part", "rounds=4"), "'data.num_clients'",
         stopped_run(_edit_config)),
    Case("named-run-exists", run("name=part"), "{out}/part exists", stopped_run()),
    # report
    Case("report-garbage-results", cli("report", "{tmp}/done"), RESULTS, crafted_run(raw="{not json")),
    Case("report-results-a-list", cli("report", "{tmp}/done"), RESULTS, crafted_run(results=[1])),
    Case("report-results-no-seed", cli("report", "{tmp}/done"), "'seed'", crafted_run(results={"algorithm": "x"})),
    Case("report-results-no-config", cli("report", "{tmp}/done"), "'config'",
         crafted_run(results={**GOOD_RESULTS, "config": None})),
    Case("report-metrics-garbage", cli("report", "{tmp}/done"), "{tmp}/done/r/metrics.jsonl",
         crafted_run(metrics="nope\n")),
    Case("report-out-is-a-file", cli("report", "{tmp}/done", "--out", "{tmp}/afile"), "{tmp}/afile",
         both(crafted_run(), write("afile"))),
    Case("report-no-runs", cli("report", "{tmp}/empty"), "{tmp}/empty", write("empty/notes.txt")),
    Case("report-missing-dir", cli("report", "{tmp}/nope"), "{tmp}/nope"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exit_2_one_line_nothing_written(case, tiny, tmp_path, monkeypatch, capfd):
    t = Ctx(tmp_path, [*tiny, f"data.cache_dir={tmp_path / 'cache'}", f"out_dir={tmp_path / 'work' / 'runs'}"])
    env = _call(case.setup, tmp_path, t) if case.setup else None
    for key, value in (env or {}).items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    argv = case.argv(t)
    before = snapshot(tmp_path)
    capfd.readouterr()

    code = main(argv)

    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, f"{argv}: exit {code}\n{err}"
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("pflalign: error: ") and t.fmt(case.needle) in lines[0], lines[0]
    assert snapshot(tmp_path) == before  # nothing new or changed under out_dir, the cache, the inputs


def test_case_ids_are_unique():
    assert len({c.id for c in CASES}) == len(CASES) >= 40
