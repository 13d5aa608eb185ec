"""build_federated_data: dataset -> partition -> per-client splits, cached on disk.

Everything is a function of the data config and one seed, through separate
``np.random.default_rng`` streams (generation, partition, split), so changing e.g. the split
never changes the partition. The cache, named by a hash of the config fields and the seed and
written atomically so parallel runs can share it, is ``<key>.npz`` (labels and each client's
indices) and ``<key>.x.npy`` (x in client order). Every process that needs the data (the run,
each Ray worker) memory-maps that x: the clients' tensors are slices of it, its pages are
shared, and no worker gets a pickled copy. File datasets are still re-read to check that the
files are the ones the cache indexed, except those whose spec has a ``stamp`` (``hf``,
``imagefolder``, ``leaf``): the stamp (every file's path, size and mtime under ``data.root``) is
part of the key, so a cached entry matches the files it was built from without reading them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DataError
from ..plugins import fingerprint
from . import partition as P
from . import shift
from ..serialize import atomic_file
from .containers import SPLITS, ClientData, FederatedData
from .datasets import DATASETS, RawDataset, get_dataset

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: x in client order in <key>.x.npy, memory-mapped
_NOT_HASHED = ("cache_dir", "download", "seed",
               "feature_shift", "shift_strength",  # hashed by shift.key_fields: not at all for none
               "holdout_clients")  # who trains, not what the data is (federation.held_out)
# Fields that only some datasets read: hashed for those alone, so adding them kept the cache
# keys (and caches) of every other dataset unchanged.
_ONLY_FOR = {f: ("shakespeare",) for f in ("seq_len", "stride", "min_chars", "client_samples")}
_ONLY_FOR.update({"feature_column": ("hf",), "label_column": ("hf",), "client_column": ("hf",),
                  "image_size": ("hf", "imagefolder"), "image_mode": ("hf", "imagefolder"),
                  "leaf_task": ("leaf",)})
FILE_DATASETS = ("fmnist", "mnist", "cifar10", "cifar100", "hf", "imagefolder", "leaf")
_ONLY_FOR["max_samples"] = FILE_DATASETS
_PARTITION_STREAM, _SPLIT_STREAM = 1, 2


def effective_seed(cfg: DataConfig, seed: int) -> int:
    return int(cfg.seed if cfg.seed is not None else seed)


def cache_key(cfg: DataConfig, seed: int) -> str:
    """sha256[:16] of the canonical JSON of the data-defining fields and the effective seed.

    A plug-in dataset (not built in) hashes every ``data.*`` field (its loader may read any),
    its name as given (entry-point name or import path) and :func:`pflalign.plugins.fingerprint`
    of its loader: editing the loader's source file or upgrading the package that installs it
    rebuilds the data. Editing another module the loader imports, or the files it reads, does
    not (a loader with ``generated=False`` is re-run and its labels compared on every load);
    after such a change, delete ``data.cache_dir`` or bump the package version.

    A dataset whose spec has a ``stamp`` adds it: the identity of the files it reads, so editing,
    adding or removing a file under ``data.root`` (its size or mtime changes) rebuilds the data.
    """
    plugin = not DATASETS.is_builtin(cfg.dataset)
    spec = get_dataset(cfg.dataset)
    fields = {}
    for f in dataclasses.fields(DataConfig):
        if f.name in _NOT_HASHED or not plugin and cfg.dataset not in _ONLY_FOR.get(f.name, (cfg.dataset,)):
            continue
        v = getattr(cfg, f.name)
        if isinstance(f.default, float) and v is not None:
            v = float(v)  # 1 and 1.0 are the same setting
        if f.name == "root" and v is not None:
            v = str(Path(v).expanduser().resolve())
        fields[f.name] = v
    if spec.stamp is not None:
        fields["files"] = spec.stamp(cfg)
    if plugin:
        fields["plugin"] = {**fingerprint(spec.load), "num_classes": spec.num_classes,
                            "generated": spec.generated, "natural": spec.natural}
    fields.update(shift.key_fields(cfg))
    fields["seed"] = effective_seed(cfg, seed)
    fields["cache_version"] = CACHE_VERSION
    canon = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def cache_path(cfg: DataConfig, seed: int) -> Path:
    return Path(cfg.cache_dir).expanduser() / f"{cache_key(cfg, seed)}.npz"


def _round_half_up(v: float) -> int:
    return int(np.floor(v + 0.5))


def split_client(idx: np.ndarray, test_fraction: float, val_fraction: float,
                 rng: np.random.Generator, client: int) -> dict[str, np.ndarray]:
    """Shuffle, test = round(test_fraction*n) (>= 1 when n >= 2), val carved from the rest."""
    idx = rng.permutation(idx)
    n = len(idx)
    n_test = _round_half_up(test_fraction * n)
    if n >= 2:
        n_test = max(n_test, 1)
    n_val = _round_half_up(val_fraction * (n - n_test))
    out = {"test": idx[:n_test], "val": idx[n_test:n_test + n_val], "train": idx[n_test + n_val:]}
    if len(out["train"]) < 1 or len(out["test"]) < 1:
        raise DataError(f"client {client} has {n} samples: too few for a train and a test split "
                        f"(data.test_fraction={test_fraction}, data.val_fraction={val_fraction}; "
                        f"raise data.min_samples or lower data.num_clients)")
    return {s: np.sort(v) for s, v in out.items()}


def _check_request(cfg: DataConfig, spec) -> None:
    """Failures knowable from the config alone, before loading or generating anything."""
    if cfg.partition not in P.PARTITIONS:
        raise DataError(f"unknown data.partition '{cfg.partition}' "
                        f"(choose from {', '.join(P.PARTITIONS)})")
    if cfg.partition == "natural" and not spec.natural:
        raise DataError(f"data.partition=natural needs a dataset with its own clients "
                        f"({', '.join(n for n, d in DATASETS.items() if d.natural)}); "
                        f"{cfg.dataset} has none")
    if cfg.partition == "pathological" and spec.num_classes is not None and cfg.classes_per_client > spec.num_classes:
        raise DataError(f"data.classes_per_client={cfg.classes_per_client} exceeds the "
                        f"{spec.num_classes} classes of dataset {cfg.dataset}")
    if cfg.max_samples is not None and cfg.dataset not in FILE_DATASETS:
        raise DataError(f"data.max_samples subsamples file datasets ({', '.join(FILE_DATASETS)}); "
                        f"{cfg.dataset} takes data.num_samples or its own options")
    if cfg.max_samples is not None and cfg.partition == "natural":
        raise DataError("data.max_samples does not apply to data.partition=natural (the clients are the "
                        "dataset's own; lower data.num_clients instead)")
    if cfg.dataset == "synthetic" and cfg.num_clients * cfg.min_samples > cfg.num_samples:
        raise DataError(f"data.num_clients*data.min_samples = {cfg.num_clients}*"
                        f"{cfg.min_samples} exceeds data.num_samples={cfg.num_samples}")
    if spec.input_shape is not None:  # else checked once the files are read
        shift.check(cfg, spec.input_shape)


def _check_raw(cfg: DataConfig, raw: RawDataset) -> None:
    """Labels index the classes and there is one per sample; checked before the partition is
    cached (or a cached one is used), since a bad label only crashes training rounds later."""
    where = f"dataset {cfg.dataset}" + (f" (data.root={cfg.root})" if cfg.root else "")
    if raw.x is not None and len(raw.x) != len(raw.y):
        raise DataError(f"{where}: {len(raw.x)} samples but {len(raw.y)} labels")
    if len(raw.y) and (int(raw.y.min()) < 0 or int(raw.y.max()) >= raw.num_classes):
        raise DataError(f"{where}: labels span {int(raw.y.min())}..{int(raw.y.max())}, outside its "
                        f"{raw.num_classes} classes (0..{raw.num_classes - 1})")


def _partition(cfg: DataConfig, raw: RawDataset, rng: np.random.Generator) -> list[np.ndarray]:
    """Client index arrays into ``raw``; with ``data.max_samples`` only a seeded subset is dealt."""
    keep = np.arange(len(raw.y))
    if cfg.max_samples is not None and cfg.max_samples < len(keep):
        keep = np.sort(rng.choice(len(keep), size=cfg.max_samples, replace=False))
    y, n, k = raw.y[keep], len(keep), cfg.num_clients
    if k > n:
        raise DataError(f"data.num_clients={k} exceeds the {n} samples of dataset {cfg.dataset}")
    if cfg.partition in ("dirichlet", "quantity_skew") and k * cfg.min_samples > n:
        raise DataError(f"data.num_clients*data.min_samples = {k}*{cfg.min_samples} exceeds the "
                        f"{n} samples of dataset {cfg.dataset}")
    if cfg.partition == "iid":
        parts = P.iid(y, k, rng)
    elif cfg.partition == "dirichlet":
        parts = P.dirichlet(y, k, rng, cfg.alpha, cfg.min_samples)
    elif cfg.partition == "pathological":
        parts = P.pathological(y, k, rng, cfg.classes_per_client)
    elif cfg.partition == "quantity_skew":
        parts = P.quantity_skew(y, k, rng, cfg.quantity_sigma, cfg.min_samples)
    else:
        return P.natural(raw.natural_clients, k, cfg.dataset)
    return [keep[p] for p in parts]


def _x_path(path: Path) -> Path:
    return path.with_suffix(".x.npy")


def _assemble(raw: RawDataset, splits: list[dict[str, np.ndarray]], x: np.ndarray, info: dict,
              from_cache: bool) -> FederatedData:
    """Clients whose x are consecutive slices of ``x`` (the cache's client-ordered, memory-mapped
    array: processes that load the same data share its pages) and whose y are their own."""
    if raw.client_names is not None and info.get("partition") == "natural":
        info = {**info, "client_names": list(raw.client_names)}
    clients, at = [], 0
    for s in splits:
        parts = []
        for name in SPLITS:
            n = len(s[name])
            parts += [torch.from_numpy(x[at:at + n]), torch.from_numpy(raw.y[s[name]])]
            at += n
        clients.append(ClientData(*parts))
    return FederatedData(clients, int(raw.num_classes), tuple(int(d) for d in raw.input_shape),
                         info=info, from_cache=from_cache)


def _save(path: Path, raw: RawDataset, splits, cfg: DataConfig, seed: int) -> None:
    """``<key>.x.npy``: x in client order (each client's train, val, test), shifted into each
    client's domain (``data.feature_shift``); then ``<key>.npz`` (labels, shape, each client's
    indices), whose presence marks a complete cache entry."""
    arrays = {"y": raw.y, "num_classes": np.int64(raw.num_classes),
              "input_shape": np.asarray(raw.input_shape, dtype=np.int64)}
    if raw.client_names is not None:  # for partition.json when a cache hit does not re-read the files
        arrays["client_names"] = np.asarray(raw.client_names, dtype=str)
    for s in SPLITS:
        parts = [c[s].astype(np.int64) for c in splits]
        arrays[f"{s}_idx"] = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        arrays[f"{s}_off"] = np.cumsum([0] + [len(p) for p in parts]).astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    order = np.concatenate([c[s] for c in splits for s in SPLITS]).astype(np.int64)
    x = raw.x[order]  # a copy: the shift works on it in place
    shift.apply(cfg, seed, x, [sum(len(c[s]) for s in SPLITS) for c in splits])
    with atomic_file(_x_path(path), fsync=False) as f:
        np.save(f, np.ascontiguousarray(x))
    with atomic_file(path, fsync=False) as f:
        np.savez(f, **arrays)


def _load(path: Path, cfg: DataConfig, seed: int, spec):
    """(raw, splits, client-ordered x) from the cache, or None when absent, unreadable or stale.
    ``raw.x`` is None for generated datasets: their x is only in the cache."""
    if not path.is_file() or not _x_path(path).is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            y = z["y"]
            meta = int(z["num_classes"]), tuple(int(d) for d in z["input_shape"])
            names = z["client_names"].tolist() if "client_names" in z.files else None
            splits = [{} for _ in range(len(z["train_off"]) - 1)]
            for s in SPLITS:
                idx, off = z[f"{s}_idx"], z[f"{s}_off"]
                for i, c in enumerate(splits):
                    c[s] = idx[off[i]:off[i + 1]]
        x = np.load(_x_path(path), mmap_mode="c", allow_pickle=False)  # copy-on-write: never writes back
    except Exception as e:  # truncated or foreign file: rebuild it
        log.warning("data cache %s unreadable (%s); rebuilding", path, e)
        return None
    if x.shape != (sum(len(c[s]) for c in splits for s in SPLITS), *meta[1]):
        log.warning("data cache %s does not match its x file; rebuilding", path)
        return None
    if spec.generated or spec.stamp is not None:
        raw = RawDataset(None, y, *meta, client_names=names)
    else:  # file dataset: re-read the files, check they are the ones indexed
        raw = spec(cfg, seed)
        if not np.array_equal(raw.y, y):
            log.warning("data cache %s does not match the files in data.root; rebuilding", path)
            return None
    return raw, splits, x


def _with_shift(info: dict, cfg: DataConfig, seed: int, raw: RawDataset, splits) -> dict:
    """``info`` plus each client's feature shift (partition.json), when there is one."""
    record = shift.summary(cfg, seed, len(splits), raw.input_shape)
    return info if record is None else {**info, "feature_shift": record}


def build_federated_data(cfg: DataConfig, seed: int) -> FederatedData:
    """The federated dataset of ``cfg`` with seed ``cfg.seed`` (or ``seed`` when that is null)."""
    spec = get_dataset(cfg.dataset)
    _check_request(cfg, spec)
    s = effective_seed(cfg, seed)
    path = cache_path(cfg, seed)
    info = {"dataset": cfg.dataset, "partition": cfg.partition, "seed": s,
            "cache_key": path.stem}
    cached = _load(path, cfg, s, spec)
    if cached is not None:
        _check_raw(cfg, cached[0])
        log.info("data: loaded %s from cache %s", cfg.dataset, path)
        return _assemble(*cached, _with_shift(info, cfg, s, *cached[:2]), from_cache=True)

    raw = spec(cfg, s)
    _check_raw(cfg, raw)
    shift.check(cfg, raw.input_shape, raw.x.dtype)
    parts = _partition(cfg, raw, np.random.default_rng([s % 2**64, _PARTITION_STREAM]))
    split_rng = np.random.default_rng([s % 2**64, _SPLIT_STREAM])
    splits = [split_client(p, cfg.test_fraction, cfg.val_fraction, split_rng, i)
              for i, p in enumerate(parts)]
    _save(path, raw, splits, cfg, s)
    log.info("data: built %s/%s for %d clients, cached at %s", cfg.dataset, cfg.partition,
             len(splits), path)
    return _assemble(raw, splits, np.load(_x_path(path), mmap_mode="c"), _with_shift(info, cfg, s, raw, splits),
                     from_cache=False)
