"""pflalign.data: determinism, cache, partitions, splits, file formats, errors (no downloads)."""
from __future__ import annotations

import dataclasses
import gzip
import io
import json
import pickle
import random
import time

import numpy as np
import pytest
import torch

from pflalign.config import DataConfig
from pflalign.data import (DATASETS, PARTITIONS, build_federated_data, cache_key, cache_path,
                           split_client)
from pflalign.data import partition as P
from pflalign.errors import DataError


def make_cfg(tmp_path, **kw) -> DataConfig:
    base = dict(dataset="mnist1d", num_samples=500, num_clients=10, min_samples=5,
                cache_dir=str(tmp_path / "cache"))
    return DataConfig(**{**base, **kw})


def tensors(fd):
    return [t for c in fd.clients for t in dataclasses.astuple(c)]


def same(a, b) -> bool:
    ta, tb = tensors(a), tensors(b)
    return len(ta) == len(tb) and all(torch.equal(x, y) for x, y in zip(ta, tb))


def cached_files(tmp_path):
    d = tmp_path / "cache"
    return list(d.glob("*")) if d.exists() else []


def total_hist(fd):
    return sum(fd.histograms(s) for s in ("train", "val", "test"))


# ---------------------------------------------------------------- determinism and cache

def test_registry_names():
    assert set(DATASETS) == {"mnist1d", "digits", "synthetic", "fmnist", "mnist", "cifar10",
                             "cifar100", "shakespeare", "hf", "imagefolder", "leaf"}
    assert PARTITIONS == ("iid", "dirichlet", "pathological", "quantity_skew", "natural")


def test_same_seed_same_tensors_different_seed_different_partition(tmp_path):
    a = build_federated_data(make_cfg(tmp_path / "a"), seed=1)
    b = build_federated_data(make_cfg(tmp_path / "b"), seed=1)
    c = build_federated_data(make_cfg(tmp_path / "c"), seed=2)
    assert not a.from_cache and not b.from_cache
    assert same(a, b)
    assert not np.array_equal(a.histograms("train"), c.histograms("train"))
    # data.seed wins over the run seed
    d = build_federated_data(make_cfg(tmp_path / "d", seed=1), seed=99)
    assert same(a, d)


def test_cache_hit_reads_npz(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path, partition="dirichlet", alpha=0.3)
    first = build_federated_data(cfg, seed=0)
    path = cache_path(cfg, 0)
    assert path.is_file() and path.name == f"{cache_key(cfg, 0)}.npz" and len(path.stem) == 16

    def boom(*a, **k):
        raise AssertionError("regenerated instead of reading the cache")

    monkeypatch.setitem(DATASETS, "mnist1d", dataclasses.replace(DATASETS["mnist1d"], load=boom))
    monkeypatch.setattr(P, "dirichlet", boom)
    second = build_federated_data(cfg, seed=0)
    assert second.from_cache and same(first, second)
    assert second.summary() == first.summary()


def test_cache_key_fields(tmp_path):
    cfg = make_cfg(tmp_path)
    assert cache_key(cfg, 0) == cache_key(dataclasses.replace(cfg, cache_dir="/elsewhere"), 0)
    assert cache_key(cfg, 0) == cache_key(dataclasses.replace(cfg, download=True), 0)
    assert cache_key(cfg, 0) == cache_key(dataclasses.replace(cfg, seed=0), 5)
    assert cache_key(cfg, 0) != cache_key(cfg, 1)
    assert cache_key(cfg, 0) != cache_key(dataclasses.replace(cfg, alpha=0.5), 0)


def test_corrupt_cache_is_rebuilt(tmp_path):
    cfg = make_cfg(tmp_path, dataset="digits", partition="iid")
    first = build_federated_data(cfg, seed=0)
    cache_path(cfg, 0).write_bytes(b"not a zip")
    again = build_federated_data(cfg, seed=0)
    assert not again.from_cache and same(first, again)


def test_mnist1d_restores_global_rngs(tmp_path):
    np.random.seed(123)
    random.seed(7)
    np_state, py_state = np.random.get_state(), random.getstate()
    fd = build_federated_data(make_cfg(tmp_path), seed=0)
    after = np.random.get_state()
    assert np_state[0] == after[0] and np.array_equal(np_state[1], after[1])
    assert np_state[2:] == after[2:]
    assert random.getstate() == py_state
    assert fd.input_shape == (40,) and fd.num_classes == 10
    assert int(fd.train_sizes().sum() + fd.sizes("test").sum()) == 500


# ---------------------------------------------------------------- datasets

def test_digits_shape(tmp_path):
    fd = build_federated_data(make_cfg(tmp_path, dataset="digits", partition="iid"), seed=0)
    assert fd.input_shape == (64,) and fd.num_classes == 10
    x = fd.clients[0].train_x
    assert x.dtype == torch.float32 and x.shape[1:] == (64,)
    assert fd.clients[0].train_y.dtype == torch.int64
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert int(total_hist(fd).sum()) == 1797


def test_synthetic_natural_clients(tmp_path):
    kw = dict(dataset="synthetic", partition="natural", num_clients=30, num_samples=3000)
    a = build_federated_data(make_cfg(tmp_path / "a", **kw), seed=4)
    b = build_federated_data(make_cfg(tmp_path / "b", **kw), seed=4)
    c = build_federated_data(make_cfg(tmp_path / "c", **kw), seed=5)
    assert a.num_clients == 30 and a.input_shape == (60,) and a.num_classes == 10
    assert same(a, b) and not same(a, c)
    sizes = total_hist(a).sum(1)
    assert sizes.sum() == 3000 and sizes.min() >= 5 and sizes.std() > 0
    # heterogeneity: beta=alpha=1 clients are dominated by a few labels
    assert (total_hist(a).max(1) / sizes).mean() > 0.5


# ---------------------------------------------------------------- partitions

LABELS = np.repeat(np.arange(10), 500)  # mnist1d-sized: 5000 samples, 10 classes


def assigned_once(parts, n, all_=True):
    flat = np.concatenate(parts)
    assert len(np.unique(flat)) == len(flat)
    if all_:
        assert len(flat) == n


def test_dirichlet_min_size_and_bounded_time():
    rng = np.random.default_rng(0)
    parts = P.dirichlet(LABELS, 20, rng, alpha=0.1, min_samples=10)
    assigned_once(parts, len(LABELS))
    assert min(map(len, parts)) >= 10
    t = time.perf_counter()
    try:
        parts = P.dirichlet(LABELS, 500, np.random.default_rng(0), alpha=0.01, min_samples=5)
    except DataError:
        pass
    else:
        assigned_once(parts, len(LABELS))
        assert min(map(len, parts)) >= 5
    assert time.perf_counter() - t < 5


def test_pathological_exactly_k_classes(tmp_path):
    for k in (1, 2, 3, 10):
        parts = P.pathological(LABELS, 20, np.random.default_rng(k), k)
        assigned_once(parts, len(LABELS))
        assert all(len(np.unique(LABELS[p])) == k for p in parts)
    fd = build_federated_data(make_cfg(tmp_path, dataset="digits", partition="pathological",
                                       classes_per_client=3, num_clients=20), seed=0)
    assert ((total_hist(fd) > 0).sum(1) == 3).all()


def test_quantity_skew_sizes_vary(tmp_path):
    fd = build_federated_data(make_cfg(tmp_path, partition="quantity_skew", quantity_sigma=1.0),
                              seed=0)
    sizes = total_hist(fd).sum(1)
    assert sizes.sum() == 500 and sizes.min() >= 5 and sizes.max() > 2 * sizes.min()


def test_iid_sizes_balanced(tmp_path):
    fd = build_federated_data(make_cfg(tmp_path, dataset="digits", partition="iid",
                                       num_clients=7), seed=0)
    sizes = total_hist(fd).sum(1)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 1797


# ---------------------------------------------------------------- per-client splits

def test_split_75_25(tmp_path):
    fd = build_federated_data(make_cfg(tmp_path, partition="dirichlet", alpha=0.5), seed=0)
    for c in fd.clients:
        n = len(c.train_y) + len(c.test_y)
        assert len(c.val_y) == 0 and c.val_x.shape == (0, 40)
        assert len(c.test_y) == max(1, int(np.floor(0.25 * n + 0.5)))


def test_val_carved_from_train_disjoint_from_test(tmp_path):
    idx = np.arange(100, 140)
    out = split_client(idx, 0.25, 0.2, np.random.default_rng(0), client=0)
    assert (len(out["test"]), len(out["val"]), len(out["train"])) == (10, 6, 24)
    sets = [set(out[s].tolist()) for s in ("train", "val", "test")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert set().union(*sets) == set(idx.tolist())
    fd = build_federated_data(make_cfg(tmp_path, partition="iid", val_fraction=0.2), seed=0)
    for c in fd.clients:  # 50 samples each: test 13, val round(0.2*37)=7, train 30
        assert (len(c.train_y), len(c.val_y), len(c.test_y)) == (30, 7, 13)


def test_summary_json(tmp_path):
    fd = build_federated_data(make_cfg(tmp_path, partition="dirichlet"), seed=0)
    s = json.loads(json.dumps(fd.summary()))
    assert s["num_clients"] == 10 and s["num_classes"] == 10 and s["input_shape"] == [40]
    assert s["dataset"] == "mnist1d" and s["partition"] == "dirichlet"
    for split in ("train", "test"):
        assert [sum(row) for row in s["histograms"][split]] == s["sizes"][split]
    assert s["stats"]["total_samples"] == 500
    assert s["stats"]["client_size"]["min"] <= s["stats"]["client_size"]["max"]


# ---------------------------------------------------------------- file formats

def write_idx(folder, name, arr, magic, compress):
    folder.mkdir(parents=True, exist_ok=True)
    dims = arr.shape
    data = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    data += arr.astype(np.uint8).tobytes()
    path = folder / (name + (".gz" if compress else ""))
    path.write_bytes(gzip.compress(data) if compress else data)


def write_mnist_like(folder, compress=True, n_train=30, n_test=10):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (n_train + n_test, 28, 28), dtype=np.uint8)
    labels = np.arange(n_train + n_test) % 10
    write_idx(folder, "train-images-idx3-ubyte", imgs[:n_train], 2051, compress)
    write_idx(folder, "train-labels-idx1-ubyte", labels[:n_train], 2049, compress)
    write_idx(folder, "t10k-images-idx3-ubyte", imgs[n_train:], 2051, compress)
    write_idx(folder, "t10k-labels-idx1-ubyte", labels[n_train:], 2049, compress)
    return imgs, labels


@pytest.mark.parametrize("dataset,compress", [("fmnist", True), ("mnist", False)])
def test_idx_files(tmp_path, dataset, compress):
    imgs, labels = write_mnist_like(tmp_path / "raw", compress)
    cfg = make_cfg(tmp_path, dataset=dataset, root=str(tmp_path / "raw"), partition="iid",
                   num_clients=4)
    fd = build_federated_data(cfg, seed=0)
    assert fd.input_shape == (1, 28, 28) and fd.clients[0].train_x.shape[1:] == (1, 28, 28)
    assert np.array_equal(total_hist(fd).sum(0), np.bincount(labels, minlength=10))
    xs = torch.cat([t for c in fd.clients for t in (c.train_x, c.test_x)])
    assert float(xs.min()) >= 0 and float(xs.max()) <= 1
    assert np.isclose(float(xs.double().sum()), imgs.sum() / 255.0)
    again = build_federated_data(cfg, seed=0)  # file datasets: cache holds indices only
    assert again.from_cache and same(fd, again)


def test_idx_bad_magic(tmp_path):
    write_mnist_like(tmp_path / "raw")
    write_idx(tmp_path / "raw", "train-labels-idx1-ubyte", np.zeros(30), 2051, True)
    with pytest.raises(DataError, match="magic"):
        build_federated_data(make_cfg(tmp_path, dataset="mnist", root=str(tmp_path / "raw"),
                                      num_clients=2, partition="iid"), seed=0)


def write_cifar(folder, files, key, n, num_classes):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    total = 0
    for f in files:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 key: [int(v) for v in rng.integers(0, num_classes, n)]}
        (folder / f).write_bytes(pickle.dumps(batch))
        total += n
    return total


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_pickles(tmp_path, dataset):
    if dataset == "cifar10":
        n = write_cifar(tmp_path / "root" / "cifar-10-batches-py",
                        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels", 4, 10)
    else:
        n = write_cifar(tmp_path / "root" / "cifar-100-python", ["train", "test"], b"fine_labels",
                        12, 100)
    fd = build_federated_data(make_cfg(tmp_path, dataset=dataset, root=str(tmp_path / "root"),
                                       partition="iid", num_clients=3), seed=0)
    assert fd.input_shape == (3, 32, 32) and fd.clients[0].test_x.shape[1:] == (3, 32, 32)
    assert fd.num_classes == (10 if dataset == "cifar10" else 100)
    assert int(total_hist(fd).sum()) == n


class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (BINSTRING), as the official CIFAR batches (cPickle,
    protocol 2) hold them; ``encoding="bytes"`` reads them back as bytes."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256
                   else pickle.BINSTRING + n.to_bytes(4, "little") + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


@pytest.mark.parametrize("protocol", ["py2", 3, 4, 5])
def test_cifar_safe_unpickler_reads_official_layouts(protocol):
    from pflalign.data.files import safe_unpickle

    rng = np.random.default_rng(0)
    batch = {b"batch_label": b"training batch 1 of 5", b"labels": [3, 7],
             b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"filenames": [b"a.png", b"b.png"]}
    if protocol == "py2":
        buf = io.BytesIO()
        Py2Pickler(buf, protocol=2).dump(batch)
        data = buf.getvalue()
    else:
        data = pickle.dumps(batch, protocol=protocol)
    out = safe_unpickle(data)
    assert out[b"labels"] == [3, 7] and np.array_equal(out[b"data"], batch[b"data"])


class RunsCode:
    """A pickle that would create ``marker`` when loaded (how a crafted batch runs code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os
        return os.mkdir, (self.marker,)


@pytest.mark.parametrize("payload", ["reduce", "nested"])
def test_cifar_pickle_that_runs_code_is_refused_unrun(tmp_path, payload):
    marker = tmp_path / "code-ran"
    evil = RunsCode(marker)
    assert pickle.loads(pickle.dumps(RunsCode(tmp_path / "control"))) is None  # the payload works...
    assert (tmp_path / "control").is_dir()
    files = ["train", "test"]
    write_cifar(tmp_path / "root" / "cifar-100-python", files, b"fine_labels", 4, 100)
    batch = evil if payload == "reduce" else {b"data": np.zeros((1, 3072), np.uint8), b"fine_labels": [evil]}
    (tmp_path / "root" / "cifar-100-python" / "test").write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match="cifar-100-python/test.*refusing to load global (posix|os).mkdir"):
        build_federated_data(make_cfg(tmp_path, dataset="cifar100", root=str(tmp_path / "root"),
                                      partition="iid", num_clients=2), seed=0)
    assert not marker.exists()  # ...but not through the data loader
    assert cached_files(tmp_path) == []


def _break_idx(folder, how):
    """Damage a valid idx set the ways real downloads break (or are tampered with)."""
    if how == "truncated-gz":
        path = folder / "train-images-idx3-ubyte.gz"
        path.write_bytes(path.read_bytes()[:-200])
        return path
    if how == "label-out-of-range":
        write_idx(folder, "t10k-labels-idx1-ubyte", np.full(10, 12), 2049, True)
        return folder / "t10k-labels-idx1-ubyte.gz"
    if how == "wrong-image-size":
        write_idx(folder, "train-images-idx3-ubyte", np.zeros((30, 5, 5)), 2051, True)
        return folder / "train-images-idx3-ubyte.gz"
    raise ValueError(how)


@pytest.mark.parametrize("how, needle", [
    ("truncated-gz", "truncated or corrupt"), ("label-out-of-range", "label 12; the dataset has 10 classes"),
    ("wrong-image-size", "5x5 images; 28x28 expected")])
def test_bad_idx_files_are_named_and_nothing_is_cached(tmp_path, how, needle):
    write_mnist_like(tmp_path / "raw")
    path = _break_idx(tmp_path / "raw", how)
    with pytest.raises(DataError, match=needle) as e:
        build_federated_data(make_cfg(tmp_path, dataset="fmnist", root=str(tmp_path / "raw"),
                                      partition="iid", num_clients=2), seed=0)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert cached_files(tmp_path) == []


@pytest.mark.parametrize("batch, needle", [
    ([1, 2], "not a CIFAR python batch"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 images and 1 labels"),
    ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, "label 10; the dataset has 10 classes"),
    ({b"data": np.zeros((1, 100), np.uint8), b"labels": [0]}, "b'data' must be uint8 rows of 3072"),
])
def test_bad_cifar_batches_are_named_and_nothing_is_cached(tmp_path, batch, needle):
    folder = tmp_path / "root" / "cifar-10-batches-py"
    write_cifar(folder, [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels", 4, 10)
    (folder / "data_batch_3").write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match=needle) as e:
        build_federated_data(make_cfg(tmp_path, dataset="cifar10", root=str(tmp_path / "root"),
                                      partition="iid", num_clients=2), seed=0)
    assert str(folder / "data_batch_3") in str(e.value)
    assert cached_files(tmp_path) == []


def test_cached_partition_with_bad_labels_is_refused(tmp_path):
    """A cache written before labels were checked (or edited) cannot smuggle them in."""
    cfg = make_cfg(tmp_path, dataset="mnist1d", partition="iid")
    build_federated_data(cfg, seed=0)
    with np.load(cache_path(cfg, 0)) as z:
        arrays = dict(z)
    arrays["y"] = arrays["y"] + 10
    np.savez(cache_path(cfg, 0), **arrays)
    with pytest.raises(DataError, match="outside its 10 classes"):
        build_federated_data(cfg, seed=0)


# ---------------------------------------------------------------- errors (nothing cached)

ERRORS = [
    (dict(dataset="imagenet"), "data.dataset"),
    (dict(partition="bogus"), "data.partition"),
    (dict(num_clients=501, partition="iid", min_samples=1), "num_clients"),
    (dict(num_clients=60, partition="dirichlet", min_samples=10), "min_samples"),
    (dict(num_clients=60, partition="quantity_skew", min_samples=10), "min_samples"),
    (dict(partition="pathological", classes_per_client=11), "classes_per_client"),
    (dict(partition="pathological", classes_per_client=2, num_clients=4), "classes_per_client"),
    (dict(partition="natural"), "natural"),
    (dict(dataset="digits", partition="natural"), "natural"),
    (dict(dataset="synthetic", partition="natural", num_clients=30, num_samples=100),
     "min_samples"),
    (dict(partition="iid", num_clients=500, min_samples=1), "client"),
    (dict(dataset="mnist"), "data.root"),
    (dict(dataset="cifar10"), "data.root"),
    (dict(dataset="fmnist", root="/nonexistent/fashion"), "data.root"),
]


@pytest.mark.parametrize("kw,needle", ERRORS)
def test_errors(tmp_path, kw, needle):
    with pytest.raises(DataError, match=needle):
        build_federated_data(make_cfg(tmp_path, **kw), seed=0)
    assert cached_files(tmp_path) == []


@pytest.mark.parametrize("dataset", ["fmnist", "mnist", "cifar10", "cifar100"])
def test_missing_files_named(tmp_path, dataset):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not found") as e:
        build_federated_data(make_cfg(tmp_path, dataset=dataset, root=str(tmp_path / "empty")),
                             seed=0)
    assert str(tmp_path / "empty") in str(e.value)
    assert cached_files(tmp_path) == []


def test_download_without_torchvision(tmp_path):
    try:
        import torchvision  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torchvision installed: download would hit the network")
    with pytest.raises(DataError, match="torchvision"):
        build_federated_data(make_cfg(tmp_path, dataset="cifar10", root=str(tmp_path / "r"),
                                      download=True), seed=0)


def test_natural_count_mismatch():
    with pytest.raises(DataError, match="num_clients"):
        P.natural([np.arange(3), np.arange(3, 6)], 3, "synthetic")


def test_max_samples_partitions_a_seeded_subset_of_a_file_dataset(tmp_path):
    write_mnist_like(tmp_path / "raw", n_train=80, n_test=20)
    cfg = make_cfg(tmp_path, dataset="fmnist", root=str(tmp_path / "raw"), partition="iid",
                   num_clients=4, max_samples=40)
    fd = build_federated_data(cfg, seed=0)
    assert int(fd.train_sizes().sum()) + sum(len(c.test_y) + len(c.val_y) for c in fd.clients) == 40
    assert same(fd, build_federated_data(cfg, seed=0))  # deterministic (and served from the cache)
    other = build_federated_data(make_cfg(tmp_path, dataset="fmnist", root=str(tmp_path / "raw"),
                                          partition="iid", num_clients=4, max_samples=40), seed=1)
    assert not same(fd, other)
    full = build_federated_data(make_cfg(tmp_path, dataset="fmnist", root=str(tmp_path / "raw"),
                                         partition="iid", num_clients=4), seed=0)
    assert int(full.train_sizes().sum()) > int(fd.train_sizes().sum())
    with pytest.raises(DataError, match="data.max_samples"):
        build_federated_data(make_cfg(tmp_path, dataset="digits", max_samples=100), seed=0)


def test_clients_are_slices_of_one_memory_mapped_cache_file(tmp_path):
    """Every process that loads the data (the run, each Ray worker) maps the same file."""
    cfg = make_cfg(tmp_path, dataset="digits", partition="iid")
    x_file = cache_path(cfg, 0).with_suffix(".x.npy")
    for data in (build_federated_data(cfg, seed=0), build_federated_data(cfg, seed=0)):  # built, then cached
        flat = torch.cat([t for c in data.clients for t in (c.train_x, c.val_x, c.test_x)])
        assert torch.equal(flat, torch.from_numpy(np.load(x_file)))
        maps = [line.split() for line in open("/proc/self/maps")]
        for c in data.clients:  # the tensor's memory is a mapping of the cache file, not a copy
            ptr = c.train_x.data_ptr()
            owner = next(m for m in maps if int(m[0].split("-")[0], 16) <= ptr < int(m[0].split("-")[1], 16))
            assert owner[-1] == str(x_file.resolve())
