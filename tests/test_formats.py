"""Users' own data on disk: Hugging Face datasets (save_to_disk, parquet), image folders, LEAF JSON.

Every test writes tiny files in the real layout: Arrow IPC stream shards with state.json and
dataset_info.json exactly as ``datasets.save_to_disk`` writes them, parquet with the Hub's schema
metadata, PNG/JPEG class folders, LEAF's ``train/``/``test/`` JSON. Nothing is downloaded.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from conftest import run_cli
from pflalign.cli import main
from pflalign.config import DataConfig
from pflalign.data import DATASETS, build_federated_data, cache_key, cache_path
from pflalign.data import leaf, shakespeare
from pflalign.errors import DataError

# ---------------------------------------------------------------- writers (the real layouts)


def png(value: int, size=(8, 8), rgb: bool = False, fmt: str = "PNG") -> bytes:
    """An image whose every pixel is ``value`` (RGB: (value, 255 - value, 7))."""
    im = Image.new("RGB", size, (value, 255 - value, 7)) if rgb else Image.new("L", size, value)
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # datasets.Image's storage


def image_column(blobs: list[bytes]) -> pa.Array:
    return pa.array([{"bytes": b, "path": None} for b in blobs], type=IMAGE)


def hub_metadata(table: pa.Table, features: dict) -> pa.Table:
    """The schema metadata datasets' ArrowWriter puts on every file it writes."""
    return table.replace_schema_metadata(
        {"huggingface": json.dumps({"info": {"features": features}, "fingerprint": "5e1f00d2c4a3b6e7"})})


def save_to_disk(folder: Path, table: pa.Table, features: dict, split: str | None = "train", shards: int = 1):
    """What ``Dataset.save_to_disk(folder, num_shards=shards)`` writes."""
    folder.mkdir(parents=True)
    names = [f"data-{i:05d}-of-{shards:05d}.arrow" for i in range(shards)]
    bounds = np.linspace(0, table.num_rows, shards + 1).astype(int)
    table = hub_metadata(table, features)
    for name, a, b in zip(names, bounds, bounds[1:]):
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table.slice(a, b - a))
    state = {"_data_files": [{"filename": n} for n in names], "_fingerprint": "5e1f00d2c4a3b6e7",
             "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
             "_output_all_columns": False, "_split": split}
    (folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
    info = {"citation": "", "description": "", "features": features, "homepage": "", "license": ""}
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=2))  # as datasets 5.2 writes it


def save_dict_to_disk(root: Path, splits: dict[str, pa.Table], features: dict, shards: int = 1):
    """What ``DatasetDict.save_to_disk(root)`` writes."""
    root.mkdir(parents=True)
    (root / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
    for name, table in splits.items():
        save_to_disk(root / name, table, features, name, shards)


N_IMG = 24
WRITERS = ["w7", "w3", "w9"]  # row i belongs to WRITERS[writer_of(i)]


def writer_of(i: int) -> int:
    return 0 if i < 12 else 1 if i < 20 else 2  # sizes 12, 8, 4


def value_of(i: int) -> int:
    return 10 * i + 5  # distinct per row: the decoded pixel tells which row a sample is


def image_table(rows: range, rgb: bool = False) -> pa.Table:
    return pa.table({"image": image_column([png(value_of(i), rgb=rgb) for i in rows]),
                     "label": pa.array([i % 3 for i in rows], pa.int64()),
                     "writer_id": pa.array([WRITERS[writer_of(i)] for i in rows])})


FEATURES = {"image": {"_type": "Image"}, "label": {"names": ["a", "b", "c", "d"], "_type": "ClassLabel"},
            "writer_id": {"dtype": "string", "_type": "Value"}}


@pytest.fixture
def hf_dict(tmp_path) -> Path:
    root = tmp_path / "hfdict"
    save_dict_to_disk(root, {"train": image_table(range(0, 18)), "test": image_table(range(18, N_IMG))}, FEATURES,
                      shards=2)
    return root


def rows_of(x: torch.Tensor) -> list[int]:
    """The source rows of decoded constant images (gray or the RGB pattern's first channel)."""
    return [int(round((float(v) * 255 - 5) / 10)) for v in x.reshape(len(x), x.shape[1], -1)[:, 0, 0]]


def samples(fd):
    out = []
    for c in fd.clients:
        for s in ("train", "val", "test"):
            x, y = c.split(s)
            out.append((x, y))
    return torch.cat([x for x, _ in out]), torch.cat([y for _, y in out])


def cfg(tmp_path, **kw) -> DataConfig:
    base = dict(cache_dir=str(tmp_path / "cache"), num_clients=3, partition="iid")
    return DataConfig(**{**base, **kw})


# ---------------------------------------------------------------- Hugging Face


def test_hf_save_to_disk_dict_pools_splits_and_decodes_images(tmp_path, hf_dict):
    fd = build_federated_data(cfg(tmp_path, dataset="hf", root=str(hf_dict)), seed=0)
    assert fd.num_classes == 4  # ClassLabel's names, though label 3 never occurs
    assert fd.input_shape == (1, 8, 8)  # gray PNGs, their own size
    x, y = samples(fd)
    assert x.dtype == torch.float32 and len(y) == N_IMG
    rows = rows_of(x)
    assert sorted(rows) == list(range(N_IMG))  # both splits, both shards of each, every row once
    assert y.tolist() == [i % 3 for i in rows]  # each image kept its own label
    assert torch.all(x == x[:, :, :1, :1])  # constant images stay constant


def test_hf_natural_clients_rgb_and_resize(tmp_path):
    root = tmp_path / "hf"
    save_to_disk(root, image_table(range(N_IMG), rgb=True), FEATURES)
    fd = build_federated_data(cfg(tmp_path, dataset="hf", root=str(root), partition="natural", num_clients=2,
                                  client_column="writer_id", image_size=4), seed=0)
    assert fd.input_shape == (3, 4, 4)  # RGB told from the files, resized to data.image_size
    assert fd.info["client_names"] == ["w7", "w3"]  # the two largest writers, largest first
    for k, c in enumerate(fd.clients):
        x = torch.cat([c.train_x, c.val_x, c.test_x])
        assert {writer_of(i) for i in rows_of(x)} == {k}
        assert len(x) == [12, 8][k]
    gray = build_federated_data(cfg(tmp_path, dataset="hf", root=str(root), image_mode="gray"), seed=0)
    assert gray.input_shape == (1, 8, 8)


def test_hf_parquet_numeric_lists_and_string_labels(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 5)).astype(np.float32)
    names = np.array(["cat", "ant", "bee"])[np.arange(30) % 3]
    table = hub_metadata(pa.table({"x": pa.array(list(x), pa.list_(pa.float32())), "y": names}),
                         {"x": {"feature": {"dtype": "float32", "_type": "Value"}, "_type": "List"},
                          "y": {"dtype": "string", "_type": "Value"}})
    (tmp_path / "pq" / "data").mkdir(parents=True)
    pq.write_table(table.slice(0, 20), tmp_path / "pq" / "data" / "train-00000-of-00001.parquet")
    pq.write_table(table.slice(20), tmp_path / "pq" / "data" / "test-00000-of-00001.parquet")
    for root in (tmp_path / "pq", tmp_path / "pq" / "data" / "train-00000-of-00001.parquet"):
        fd = build_federated_data(cfg(tmp_path, dataset="hf", root=str(root)), seed=0)
        assert fd.num_classes == 3 and fd.input_shape == (5,)
        got_x, got_y = samples(fd)
        assert len(got_y) == (30 if root.is_dir() else 20)
        # every sample is a row of x with its own label (classes in sorted order: ant, bee, cat)
        for row, label in zip(got_x.numpy(), got_y.tolist()):
            i = int(np.flatnonzero((x == row).all(axis=1))[0])
            assert ["ant", "bee", "cat"][label] == names[i]


def test_hf_column_keys(tmp_path, hf_dict):
    """data.feature_column / data.label_column pick other columns: here the writer is the label."""
    fd = build_federated_data(cfg(tmp_path, dataset="hf", root=str(hf_dict), label_column="writer_id"), seed=0)
    x, y = samples(fd)
    assert fd.num_classes == 3 and y.tolist() == [sorted(WRITERS).index(WRITERS[writer_of(i)]) for i in rows_of(x)]


# ---------------------------------------------------------------- image folders


def write_folder(root: Path, counts: dict[str, int], rgb_one: bool = False, sizes=((8, 8),)) -> dict[str, list[int]]:
    """class -> pixel values of its images; a JPEG among PNGs, a text file and a hidden dir ignored."""
    values, v = {}, 5
    for cls, n in counts.items():
        (root / cls / "sub").mkdir(parents=True)
        values[cls] = []
        for j in range(n):
            rgb = rgb_one and cls == "cat" and j == 0
            fmt = "JPEG" if cls == "dog" and j == 0 else "PNG"
            sub = "sub/" if j % 2 else ""
            (root / cls / f"{sub}{j}.{fmt.lower()}").write_bytes(png(v, sizes[j % len(sizes)], rgb, fmt))
            values[cls].append(v)
            v += 10
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / ".cache").mkdir()
    (root / ".cache" / "x.png").write_bytes(png(0))
    return values


def test_imagefolder_classes_are_sorted_subdirectories(tmp_path):
    write_folder(tmp_path / "imgs", {"dog": 5, "cat": 4, "emu": 3})
    fd = build_federated_data(cfg(tmp_path, dataset="imagefolder", root=str(tmp_path / "imgs")), seed=0)
    assert fd.num_classes == 3 and fd.input_shape == (1, 8, 8)
    x, y = samples(fd)
    assert np.bincount(y.numpy()).tolist() == [4, 5, 3]  # cat, dog, emu
    # each image's pixel value belongs to its class's range of values (PNG exact, the JPEG near)
    for img, label in zip(x, y.tolist()):
        value = float(img.mean()) * 255
        lo, hi = {0: (55, 85), 1: (5, 45), 2: (95, 115)}[label]
        assert lo - 3 <= value <= hi + 3


def test_imagefolder_rgb_and_resize(tmp_path):
    write_folder(tmp_path / "imgs", {"cat": 4, "dog": 4}, rgb_one=True, sizes=((8, 8), (12, 6)))
    with pytest.raises(DataError, match="differ in size.*data.image_size"):
        build_federated_data(cfg(tmp_path, dataset="imagefolder", root=str(tmp_path / "imgs")), seed=0)
    fd = build_federated_data(cfg(tmp_path, dataset="imagefolder", root=str(tmp_path / "imgs"), image_size=5,
                                  num_clients=2), seed=0)
    assert fd.input_shape == (3, 5, 5)  # one RGB image makes the whole set RGB


# ---------------------------------------------------------------- LEAF


def leaf_file(path: Path, users: dict[str, tuple[list, list]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"users": list(users), "num_samples": [len(x) for x, _ in users.values()],
                                "user_data": {u: {"x": x, "y": y} for u, (x, y) in users.items()}}))


def femnist_user(rng, n: int, label0: int) -> tuple[list, list]:
    return rng.random((n, 784)).round(3).tolist(), [(label0 + j) % 62 for j in range(n)]


@pytest.fixture
def femnist(tmp_path) -> Path:
    rng = np.random.default_rng(1)
    root = tmp_path / "femnist" / "data"
    leaf_file(root / "train" / "all_data_0_niid_0_keep_0_train_9.json",
              {"f0001_41": femnist_user(rng, 9, 0), "f0002_13": femnist_user(rng, 6, 50)})
    leaf_file(root / "test" / "all_data_0_niid_0_keep_0_test_9.json",
              {"f0001_41": femnist_user(rng, 3, 9), "f0003_07": femnist_user(rng, 4, 61)})
    return root


def test_leaf_femnist_users_are_clients_train_and_test_pooled(tmp_path, femnist):
    fd = build_federated_data(cfg(tmp_path, dataset="leaf", root=str(femnist), partition="natural", num_clients=2),
                              seed=0)
    assert fd.num_classes == leaf.FEMNIST_CLASSES and fd.input_shape == leaf.FEMNIST_SHAPE
    assert fd.info["client_names"] == ["f0001_41", "f0002_13"]  # most samples first (12 = 9 train + 3 test, 6)
    assert fd.sizes("train").tolist() == [9, 4] and fd.sizes("test").tolist() == [3, 2]
    ys = torch.cat([fd.clients[0].train_y, fd.clients[0].test_y])
    assert sorted(ys.tolist()) == list(range(12))  # both of f0001_41's files, labels 0..8 and 9..11
    every = build_federated_data(cfg(tmp_path, dataset="leaf", root=str(femnist), num_clients=3), seed=0)
    assert int(every.sizes("train").sum() + every.sizes("test").sum()) == 22  # iid deals every sample


def test_leaf_shakespeare_is_token_ids_in_leafs_vocabulary(tmp_path):
    text = "To be, or not to be: that is the question. Whether 'tis nobler in the mind"
    xs = [text[i:i + 10] for i in range(40)]
    ys = [text[i + 10] for i in range(40)]
    leaf_file(tmp_path / "sh" / "train" / "a.json", {"THE_TRAGEDY_OF_HAMLET_HAMLET": (xs[:25], ys[:25])})
    leaf_file(tmp_path / "sh" / "test" / "a.json", {"THE_TRAGEDY_OF_HAMLET_HAMLET": (xs[25:], ys[25:])})
    fd = build_federated_data(cfg(tmp_path, dataset="leaf", root=str(tmp_path / "sh"), num_clients=1,
                                  partition="natural"), seed=0)
    assert fd.num_classes == shakespeare.VOCAB_SIZE and fd.input_shape == (10,)
    x, y = samples(fd)
    assert x.dtype == torch.int64
    pairs = {(shakespeare.decode(r), shakespeare.decode([t])) for r, t in zip(x.tolist(), y.tolist())}
    assert pairs == set(zip(xs, ys))


def test_leaf_sent140_bag_of_words_and_vector_task(tmp_path):
    tweets = [["1467810369", "Mon Apr 06 22:19:45 PDT 2009", "NO_QUERY", "u1", f"so happy today {i}"] for i in range(6)]
    tweets += [["1467810672", "Mon Apr 06 22:19:49 PDT 2009", "NO_QUERY", "u2", f"sad and upset {i}"] for i in range(6)]
    leaf_file(tmp_path / "s140" / "train" / "a.json", {"u1": (tweets[:6], [1] * 6), "u2": (tweets[6:], [0] * 6)})
    fd = build_federated_data(cfg(tmp_path, dataset="leaf", root=str(tmp_path / "s140"), num_clients=2), seed=0)
    assert fd.num_classes == 2 and fd.input_shape == (leaf.SENT140_FEATURES,)
    x, y = samples(fd)
    assert torch.allclose(x.norm(dim=1), torch.ones(len(x)))  # l2-normalized word counts
    happy = x[y == 1].sum(0) > 0
    assert (happy & (x[y == 0].sum(0) > 0)).sum() < happy.sum()  # the two classes use different words

    vec = {"f_00000": ([[0.5, -1.0, 2.0]] * 4, [0, 4, 1, 4]), "f_00001": ([[1.0, 1.0, 1.0]] * 3, [2, 2, 2])}
    leaf_file(tmp_path / "syn" / "all_data" / "data.json", vec)
    fd = build_federated_data(cfg(tmp_path, dataset="leaf", root=str(tmp_path / "syn"), num_clients=2,
                                  partition="natural"), seed=0)
    assert fd.num_classes == 5 and fd.input_shape == (3,) and fd.info["client_names"] == ["f_00000", "f_00001"]


# ---------------------------------------------------------------- cache


def test_stamped_cache_is_not_reread_and_follows_the_files(tmp_path, femnist, monkeypatch):
    c = cfg(tmp_path, dataset="leaf", root=str(femnist), partition="natural", num_clients=2)
    first = build_federated_data(c, seed=0)
    key = cache_key(c, 0)
    assert cache_path(c, 0).is_file() and key == cache_key(cfg(tmp_path, dataset="leaf", root=str(femnist) + "/",
                                                               partition="natural", num_clients=2), 0)

    def boom(*a, **k):
        raise AssertionError("re-read the files on a cache hit")

    monkeypatch.setitem(DATASETS, "leaf", dataclasses.replace(DATASETS["leaf"], load=boom))
    second = build_federated_data(c, seed=0)
    assert second.from_cache and second.summary() == first.summary()  # client names kept too
    assert all(torch.equal(a, b) for p, q in zip(first.clients, second.clients)
               for a, b in zip(dataclasses.astuple(p), dataclasses.astuple(q)))
    monkeypatch.undo()

    test_file = next((femnist / "test").glob("*.json"))
    st = test_file.stat()
    os.utime(test_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched in place
    assert cache_key(c, 0) != key
    assert not build_federated_data(c, seed=0).from_cache


def test_new_keys_leave_other_datasets_keys_alone(tmp_path, hf_dict):
    base = DataConfig(dataset="digits")
    assert cache_key(dataclasses.replace(base, image_size=7, leaf_task="femnist", label_column="y"), 0) == \
        cache_key(base, 0)
    hf = DataConfig(dataset="hf", root=str(hf_dict))
    assert cache_key(dataclasses.replace(hf, image_size=4), 0) != cache_key(hf, 0)
    assert cache_key(dataclasses.replace(hf, leaf_task="femnist"), 0) == cache_key(hf, 0)


# ---------------------------------------------------------------- end to end and bad input


def test_end_to_end_leaf_natural_and_hf(tmp_path, tiny, femnist, hf_dict):
    run = run_cli([*tiny, "data.dataset=leaf", f"data.root={femnist}", "data.partition=natural",
                   "data.num_clients=3", "rounds=2", "algorithm=fedavg"])
    part = json.loads((run / "partition.json").read_text())
    assert part["client_names"] == ["f0001_41", "f0002_13", "f0003_07"] and part["num_classes"] == 62
    run = run_cli([*tiny, "data.dataset=hf", f"data.root={hf_dict}", "data.partition=natural",
                   "data.client_column=writer_id", "data.num_clients=3", "rounds=2", "model.name=cnn",
                   "model.width=4", "data.image_size=16", "algorithm=fedavg"])
    assert json.loads((run / "partition.json").read_text())["input_shape"] == [1, 16, 16]


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): "dir" if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def _corrupt_hf(tmp_path):
    blobs = [png(value_of(i)) for i in range(6)]
    blobs[4] = b"\x89PNG\r\n\x1a\n" + b"not really a png"
    save_to_disk(tmp_path / "in", pa.table({"image": image_column(blobs), "label": list(range(6))}), FEATURES)


def _mixed_hf(tmp_path):
    blobs = [png(5), png(9, size=(6, 8))]
    save_to_disk(tmp_path / "in", pa.table({"image": image_column(blobs), "label": [0, 1]}), FEATURES)


def _corrupt_folder(tmp_path):
    """A PNG cut in half: its header reads (mode, size), its pixels do not."""
    write_folder(tmp_path / "in", {"cat": 2, "dog": 2})
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8), dtype=np.uint8))
    buf = io.BytesIO()
    noise.save(buf, "PNG")
    (tmp_path / "in" / "dog" / "3.png").write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])


def _leaf(users_extra: dict | None = None, num_samples=None, x=None):
    def setup(tmp_path):
        x0 = x if x is not None else [[0.0] * 784] * 2
        leaf_file(tmp_path / "in" / "train" / "a.json", {"u1": (x0, [0, 1])})
        if users_extra is not None or num_samples is not None:
            d = json.loads((tmp_path / "in" / "train" / "a.json").read_text())
            d["users"] += list(users_extra or {})
            d["num_samples"] = num_samples or d["num_samples"]
            (tmp_path / "in" / "train" / "a.json").write_text(json.dumps(d))
    return setup


def _hf_dict(tmp_path):
    save_dict_to_disk(tmp_path / "in", {"train": image_table(range(6))}, FEATURES)


def _corrupt_shard(tmp_path):
    _hf_dict(tmp_path)
    (tmp_path / "in" / "train" / "data-00000-of-00001.arrow").write_bytes(b"ARROW1" + bytes(64))


def _empty(tmp_path):
    (tmp_path / "in").mkdir()


BAD = [  # id, overrides, setup, needle ({tmp} = the case's tmp dir)
    ("hf-missing-root", ["data.dataset=hf", "data.root={tmp}/nope"], None, "data.root={tmp}/nope does not exist"),
    ("hf-no-root", ["data.dataset=hf"], None, "set data.root"),
    ("hf-empty-dir", ["data.dataset=hf", "data.root={tmp}/in"], _empty, "holds no Hugging Face dataset"),
    ("hf-wrong-column", ["data.dataset=hf", "data.root={tmp}/in", "data.label_column=digit"], _hf_dict,
     "data.label_column=digit is not a column"),
    ("hf-natural-no-client-column", ["data.dataset=hf", "data.root={tmp}/in", "data.partition=natural"], _hf_dict,
     "needs data.client_column"),
    ("hf-text-column", ["data.dataset=hf", "data.root={tmp}/in", "data.feature_column=writer_id"], _hf_dict,
     "column writer_id of data.root={tmp}/in holds string"),
    ("hf-corrupt-shard", ["data.dataset=hf", "data.root={tmp}/in"], _corrupt_shard,
     "cannot read Arrow file {tmp}/in/train/data-00000-of-00001.arrow"),
    ("hf-corrupt-image", ["data.dataset=hf", "data.root={tmp}/in"], _corrupt_hf, "row 4 of column image"),
    ("hf-sizes-differ", ["data.dataset=hf", "data.root={tmp}/in"], _mixed_hf, "set data.image_size"),
    ("hf-too-many-clients", ["data.dataset=hf", "data.root={tmp}/in", "data.partition=natural",
                             "data.client_column=writer_id", "data.num_clients=6"], _hf_dict, "names only 1 client(s)"),
    ("folder-missing-root", ["data.dataset=imagefolder", "data.root={tmp}/nope"], None, "{tmp}/nope does not exist"),
    ("folder-empty-dir", ["data.dataset=imagefolder", "data.root={tmp}/in"], _empty, "no class subdirectories"),
    ("folder-empty-class", ["data.dataset=imagefolder", "data.root={tmp}/in"],
     lambda t: (write_folder(t / "in", {"cat": 2}), (t / "in" / "dog").mkdir(), (t / "in" / "dog" / "a.txt").touch()),
     "class directory {tmp}/in/dog holds no images"),
    ("folder-corrupt-image", ["data.dataset=imagefolder", "data.root={tmp}/in"], _corrupt_folder,
     "{tmp}/in/dog/3.png is not a readable image (OSError: image file is truncated)"),
    ("folder-natural", ["data.dataset=imagefolder", "data.root={tmp}/in", "data.partition=natural"], _corrupt_folder,
     "data.partition=natural needs a dataset with its own clients"),
    ("leaf-missing-root", ["data.dataset=leaf", "data.root={tmp}/nope"], None, "{tmp}/nope does not exist"),
    ("leaf-empty-dir", ["data.dataset=leaf", "data.root={tmp}/in"], _empty, "has no LEAF JSON files"),
    ("leaf-users-vs-num-samples", ["data.dataset=leaf", "data.root={tmp}/in"], _leaf(num_samples=[2, 5]),
     "1 users but 2 num_samples"),
    ("leaf-user-without-data", ["data.dataset=leaf", "data.root={tmp}/in"], _leaf({"u2": None}, [2, 3]),
     "user u2 has no x and y"),
    ("leaf-num-samples-wrong", ["data.dataset=leaf", "data.root={tmp}/in"], _leaf(num_samples=[3]),
     "user u1 has 2 x and 2 y, num_samples says 3"),
    ("leaf-unknown-task", ["data.dataset=leaf", "data.root={tmp}/in"], _leaf(x=[{"a": 1}, {"a": 2}]),
     "set data.leaf_task"),
    ("leaf-forced-task-misfits", ["data.dataset=leaf", "data.root={tmp}/in", "data.leaf_task=femnist"],
     _leaf(x=[[1.0, 2.0], [3.0, 4.0]]), "needs 784 pixel values per sample, got 2"),
    ("leaf-max-samples-natural", ["data.dataset=leaf", "data.root={tmp}/in", "data.partition=natural",
                                  "data.max_samples=5"], _leaf(), "data.max_samples does not apply"),
    ("key-image-mode", ["data.dataset=imagefolder", "data.image_mode=cmyk"], None, "data.image_mode must be one of"),
    ("key-leaf-task", ["data.dataset=leaf", "data.leaf_task=celeba"], None, "data.leaf_task must be one of"),
    ("key-image-size", ["data.dataset=hf", "data.image_size=0"], None, "data.image_size must be >= 1"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_exit_2_one_line_nothing_written(case, tiny, tmp_path, capfd):
    _, overrides, setup, needle = case
    if setup:
        setup(tmp_path)
    fmt = {"tmp": tmp_path}
    argv = ["run", *tiny, f"data.cache_dir={tmp_path / 'cache'}", f"out_dir={tmp_path / 'runs'}",
            *(o.format(**fmt) for o in overrides)]
    before = snapshot(tmp_path)
    capfd.readouterr()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("pflalign: error: ") and needle.format(**fmt) in err[0], err[0]
    assert snapshot(tmp_path) == before  # no run directory, no cache file, inputs untouched


def test_model_that_does_not_fit_the_files_is_exit_2_before_any_run_directory(tmp_path, tiny, capfd):
    """The shape is known only once the files are read; the model-fit check still comes first."""
    _leaf(x=[[1.0, 2.0], [3.0, 4.0]])(tmp_path)
    code = main(["run", *tiny, f"out_dir={tmp_path / 'runs'}", "data.dataset=leaf", f"data.root={tmp_path / 'in'}",
                 "data.num_clients=1", "data.partition=natural", "model.name=cnn"])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "model cnn needs image inputs" in err[0] and "(2,)" in err[0], err
    save_dict_to_disk(tmp_path / "hf", {"train": image_table(range(6))}, FEATURES)  # 8x8: too small for
    # the FedAvg CNN's two 5x5 convolutions
    code = main(["run", *tiny, f"out_dir={tmp_path / 'runs'}", "data.dataset=hf", f"data.root={tmp_path / 'hf'}",
                 "data.num_clients=2", "data.partition=iid", "model.name=cnn"])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "does not fit dataset hf (inputs (1, 8, 8))" in err[0], err
    assert not (tmp_path / "runs").exists()
