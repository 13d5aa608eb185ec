"""Dataset registry: name -> loader(cfg, seed) -> RawDataset (train and test pooled); users' own
as a DatasetSpec by import path or entry point (:mod:`pflalign.plugins`).

Pooling the source's train and test sets before partitioning is PFLlib's convention: every
client's test split then follows that client's own distribution. Each entry also declares its
class count and whether it has natural clients, so impossible requests fail before any loading.
"""
from __future__ import annotations

import dataclasses
import functools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import ConfigError, DataError
from ..plugins import Registry, what
from . import files, formats, hf, imagefolder, leaf, shakespeare, synthetic

FMNIST_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist


@dataclass
class RawDataset:
    x: np.ndarray  # float32 [N, *input_shape] (text: int64 token ids)
    y: np.ndarray  # int64 [N]
    num_classes: int
    input_shape: tuple[int, ...]
    natural_clients: Optional[list[np.ndarray]] = None
    client_names: Optional[list[str]] = None  # of the natural clients (partition.json)


@dataclass(frozen=True)
class DatasetSpec:
    load: Callable[..., RawDataset]
    num_classes: Optional[int]  # None: known only from the files (checked once they are loaded)
    input_shape: Optional[tuple[int, ...]]  # None: likewise
    description: str
    natural: bool = False   # has its own clients (partition=natural)
    generated: bool = False  # procedural: the cache keeps x itself, files are re-read instead
    # stamp(cfg) -> str: the identity of the files read (paths, sizes, mtimes), hashed into the
    # cache key; a cached entry then matches the files by construction and is not re-read.
    stamp: Optional[Callable[..., str]] = None

    def __call__(self, cfg, seed: int) -> RawDataset:
        return self.load(cfg, seed)


def _mnist1d(cfg, seed: int) -> RawDataset:
    # Lazy: mnist1d imports matplotlib and requests. Never call its get_dataset (downloads).
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = int(cfg.num_samples)
    args.seed = seed % 2**32
    np_state, py_state = np.random.get_state(), random.getstate()
    try:  # make_dataset reseeds numpy's and Python's global RNGs; leave them as we found them
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    x = np.concatenate([d["x"], d["x_test"]]).astype(np.float32)
    y = np.concatenate([d["y"], d["y_test"]]).astype(np.int64)
    return RawDataset(x, y, 10, (40,))


def _digits(cfg, seed: int) -> RawDataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    return RawDataset((d.data / 16.0).astype(np.float32), d.target.astype(np.int64), 10, (64,))


def _synthetic(cfg, seed: int) -> RawDataset:
    rng = np.random.default_rng([seed % 2**64, 0x5E])
    x, y, clients = synthetic.generate(cfg.num_clients, cfg.num_samples, cfg.synthetic_alpha,
                                       cfg.synthetic_beta, cfg.quantity_sigma, cfg.min_samples, rng)
    return RawDataset(x, y, synthetic.NUM_CLASSES, (synthetic.DIM,), clients)


def _shakespeare(cfg, seed: int) -> RawDataset:
    path = shakespeare.find_file(cfg.root)
    x, y, clients, names = shakespeare.load(path, cfg.num_clients, cfg.seq_len, cfg.stride,
                                            cfg.min_chars, cfg.client_samples, seed)
    return RawDataset(x, y, shakespeare.VOCAB_SIZE, (int(cfg.seq_len),), clients, names)


def _from_files(name: str, reader) -> Callable[..., RawDataset]:
    """A loader over a reader of users' own files (:mod:`pflalign.data.formats`)."""
    def load(cfg, seed: int) -> RawDataset:
        return RawDataset(*reader(cfg))
    load.__name__ = f"_{name}"
    return load


def _own_files(name: str, reader, description: str, natural: bool) -> DatasetSpec:
    """Class count and shape come from the files; the files' stamp keys the cache."""
    return DatasetSpec(_from_files(name, reader), None, None, description, natural=natural,
                       stamp=functools.partial(formats.stamp, name=name))


def _root(cfg, name: str, default: Optional[str] = None) -> Path:
    root = cfg.root if cfg.root is not None else default
    if root is None:
        raise DataError(f"dataset {name} reads files: set data.root to their directory")
    path = Path(root).expanduser()
    if path.exists() and not path.is_dir():
        raise DataError(f"data.root={path} is a file; dataset {name} reads a directory of files")
    if not path.is_dir() and not cfg.download:
        hint = "" if cfg.root is not None else \
            " (apt-get install dataset-fashion-mnist, or set data.root)"
        raise DataError(f"data.root={path} does not exist (dataset {name}){hint}")
    return path


def _idx_loader(name: str, default_root: Optional[str] = None):
    def load(cfg, seed: int) -> RawDataset:
        x, y = files.load_idx(name, _root(cfg, name, default_root), bool(cfg.download), 10)
        return RawDataset(x, y, 10, (1, 28, 28))
    return load


def _cifar_loader(name: str, num_classes: int):
    def load(cfg, seed: int) -> RawDataset:
        x, y = files.load_cifar(name, _root(cfg, name), bool(cfg.download), num_classes)
        return RawDataset(x, y, num_classes, (3, 32, 32))
    return load


def _checked(spec: DatasetSpec, where: str) -> Callable[..., RawDataset]:
    """A plug-in's loader, made to return what its spec declares (a wrong shape or dtype would
    otherwise fail rounds later, or rebuild the cache on every load). ``spec.input_shape`` is
    the shape at the default settings (a ``data.*`` key may change it), so x is checked against
    the returned ``input_shape``."""
    @functools.wraps(spec.load)
    def load(cfg, seed: int) -> RawDataset:
        raw = spec.load(cfg, seed)
        if not isinstance(raw, RawDataset):
            raise DataError(f"{where}: the loader returned {what(raw)}, not a pflalign.data.RawDataset")
        declared = raw.num_classes if spec.num_classes is None else spec.num_classes
        if raw.num_classes != declared or raw.x.shape[1:] != tuple(raw.input_shape):
            raise DataError(f"{where}: the loader returned x of shape {raw.x.shape}, input_shape "
                            f"{tuple(raw.input_shape)} and {raw.num_classes} classes; they must agree, "
                            f"and its DatasetSpec declares {declared} classes")
        if raw.x.dtype not in (np.float32, np.int64) or raw.y.dtype != np.int64:
            raise DataError(f"{where}: the loader returned x of {raw.x.dtype} and y of {raw.y.dtype}; "
                            f"x must be float32 (int64 for token ids), y int64")
        return raw
    return load


def _check(obj, where: str) -> DatasetSpec:
    """A plug-in dataset is a :class:`DatasetSpec` object: its class count and input shape are
    known (and validated against) before its loader runs. ``generated=True`` if the loader makes
    the data (the cache keeps it), False if it reads files (re-read and checked on every load)."""
    if not isinstance(obj, DatasetSpec):
        raise ConfigError(f"{where}: {what(obj)} is not a pflalign.data.DatasetSpec")
    return dataclasses.replace(obj, load=_checked(obj, where))


DATASETS: Registry[DatasetSpec] = Registry("data.dataset", "pflalign.datasets", {
    "mnist1d": DatasetSpec(_mnist1d, 10, (40,), "MNIST-1D, generated (data.num_samples)",
                           generated=True),
    "digits": DatasetSpec(_digits, 10, (64,), "scikit-learn 8x8 digits (1797 samples)"),
    "synthetic": DatasetSpec(_synthetic, synthetic.NUM_CLASSES, (synthetic.DIM,),
                             "FedProx Synthetic(alpha, beta), natural clients", natural=True,
                             generated=True),
    "shakespeare": DatasetSpec(_shakespeare, shakespeare.VOCAB_SIZE, (80,),
                               "LEAF-style next character, one client per speaker: play file "
                               "(data.root; data.seq_len, data.stride, data.min_chars, "
                               "data.client_samples)", natural=True),
    "fmnist": DatasetSpec(_idx_loader("fmnist", FMNIST_DEFAULT_ROOT), 10, (1, 28, 28),
                          f"Fashion-MNIST idx files (data.root, default {FMNIST_DEFAULT_ROOT})"),
    "mnist": DatasetSpec(_idx_loader("mnist"), 10, (1, 28, 28), "MNIST idx files (data.root)"),
    "cifar10": DatasetSpec(_cifar_loader("cifar10", 10), 10, (3, 32, 32),
                           "CIFAR-10 python batches (data.root)"),
    "cifar100": DatasetSpec(_cifar_loader("cifar100", 100), 100, (3, 32, 32),
                            "CIFAR-100 python batches (data.root)"),
    "hf": _own_files("hf", hf.load, "Hugging Face dataset on disk: a save_to_disk directory or parquet "
                     "files (data.root; data.feature_column, data.label_column, data.client_column for "
                     "partition=natural, data.image_size, data.image_mode)", natural=True),
    "imagefolder": _own_files("imagefolder", imagefolder.load, "images in one subdirectory per class "
                              "(data.root; data.image_size, data.image_mode)", natural=False),
    "leaf": _own_files("leaf", leaf.load, "LEAF JSON files (data.root/train, test): FEMNIST, Shakespeare, "
                       "Sent140, Synthetic; one client per user (data.leaf_task)", natural=True),
}, _check, "package.module:spec", unknown=DataError)


def get_dataset(name: str) -> DatasetSpec:
    """A built-in or entry-point name, or ``package.module:spec`` naming a DatasetSpec."""
    return DATASETS.resolve(name)
