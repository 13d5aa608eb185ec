"""Readers for datasets that live in files: MNIST-style idx and the CIFAR python pickles.

Parsing the official formats ourselves means no torchvision at run time and tests that use
tiny files in the same layout. torchvision is imported only to download (data.download=true).
Every check (truncation, shapes, label range) happens here, before anything is partitioned or
cached, and names the file. CIFAR batches are pickles: they are read with an unpickler that
only builds what the official batches contain, so a crafted file cannot run code.
"""
from __future__ import annotations

import gzip
import importlib
import io
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

IDX_FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}
# torchvision's class name, which is also the sub-folder its download writes to (<root>/<cls>/raw)
TORCHVISION = {"mnist": "MNIST", "fmnist": "FashionMNIST", "cifar10": "CIFAR10",
               "cifar100": "CIFAR100"}
CIFAR = {  # folder, train files, test files, label key, per-channel mean/std (standard values)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                b"labels", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels",
                 (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _download(name: str, root: Path) -> None:
    try:
        import torchvision
    except ImportError:
        raise DataError(f"data.download=true for {name} needs torchvision, which is not "
                        f"installed (or put the files into data.root={root})") from None
    cls = getattr(torchvision.datasets, TORCHVISION[name])
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as e:  # network errors come in many types
        raise DataError(f"downloading {name} into data.root={root} failed: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


IMAGE_SHAPE = (28, 28)


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """One idx file (gzipped or not): images [N, 28, 28] (magic 2051) or labels [N] (2049)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # EOFError: a truncated .gz
        raise DataError(f"cannot read {path}: {type(e).__name__}: {e} (truncated or corrupt file?)") from None
    ndim = 3 if magic == 2051 else 1
    header = 4 * (1 + ndim)
    if len(data) < header or int.from_bytes(data[:4], "big") != magic:
        raise DataError(f"{path} is not an idx file (expected magic number {magic})")
    dims = [int.from_bytes(data[4 * (i + 1):4 * (i + 2)], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=header)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} holds {body.size} bytes, its header promises {dims}")
    if ndim == 3 and tuple(dims[1:]) != IMAGE_SHAPE:
        raise DataError(f"{path} holds {dims[1]}x{dims[2]} images; {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]} expected")
    return body.reshape(dims)


def check_labels(y: np.ndarray, num_classes: int, source: Any) -> None:
    """Labels must index the classes: a label >= num_classes would crash training much later
    (after the partition was cached), so it is refused while the file is being read."""
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        bad = int(y.max()) if int(y.max()) >= num_classes else int(y.min())
        raise DataError(f"{source} holds label {bad}; the dataset has {num_classes} classes (labels 0..{num_classes - 1})")


def _find_idx(root: Path, name: str) -> dict[str, Path] | None:
    for folder in (root, root / TORCHVISION[name] / "raw"):
        found = {}
        for key, stem in IDX_FILES.items():
            for cand in (folder / f"{stem}.gz", folder / stem):
                if cand.is_file():
                    found[key] = cand
                    break
        if len(found) == len(IDX_FILES):
            return found
    return None


def load_idx(name: str, root: Path, download: bool, num_classes: int = 10):
    """MNIST / Fashion-MNIST: train+test pooled, x float32 [N,1,28,28] in [0,1], y int64."""
    files = _find_idx(root, name)
    if files is None and download:
        _download(name, root)
        files = _find_idx(root, name)
    if files is None:
        raise DataError(f"{name} files not found in data.root={root}: expected "
                        f"{', '.join(s + '[.gz]' for s in IDX_FILES.values())} "
                        f"(or set data.download=true)")
    xs = [_read_idx(files[f"{s}_x"], 2051) for s in ("train", "test")]
    ys = [_read_idx(files[f"{s}_y"], 2049) for s in ("train", "test")]
    for s, y in zip(("train", "test"), ys):
        check_labels(y, num_classes, files[f"{s}_y"])
    for s, x, y in zip(("train", "test"), xs, ys):
        if len(x) != len(y):
            raise DataError(f"{name} {s} images ({len(x)}) and labels ({len(y)}) differ in count")
    x = np.concatenate(xs).astype(np.float32)[:, None] / 255.0
    return x, np.concatenate(ys).astype(np.int64)


def _cifar_dir(root: Path, folder: str, marker: str) -> Path | None:
    for cand in (root / folder, root):
        if (cand / marker).is_file():
            return cand
    return None


def _numpy_global(submodule: str, name: str) -> Any:
    """numpy 2 moved ``numpy.core`` to ``numpy._core``; old pickles name the former."""
    for module in (f"numpy._core.{submodule}", f"numpy.core.{submodule}"):
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy has no {submodule}.{name}")


# What the official CIFAR python batches (and numpy arrays pickled with any protocol) need.
_BUILTINS = {"dict", "list", "bytes", "str", "int"}
_NUMPY = {("numpy", "ndarray"): lambda: np.ndarray, ("numpy", "dtype"): lambda: np.dtype,
          **{(f"numpy.{core}.multiarray", "_reconstruct"): lambda: _numpy_global("multiarray", "_reconstruct")
             for core in ("core", "_core")},
          **{(f"numpy.{core}.numeric", "_frombuffer"): lambda: _numpy_global("numeric", "_frombuffer")
             for core in ("core", "_core")}}


class SafeUnpickler(pickle.Unpickler):
    """Builds only builtins dict/list/bytes/str/int and numpy arrays; any other global (the
    way a pickle runs code: ``os.system``, ``builtins.eval``, ...) is refused unbuilt."""

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return getattr(__import__("builtins"), name)
        if (module, name) in _NUMPY:
            return _NUMPY[module, name]()
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def safe_unpickle(data: bytes) -> Any:
    """``pickle.loads(data, encoding="bytes")`` through :class:`SafeUnpickler`."""
    return SafeUnpickler(io.BytesIO(data), encoding="bytes").load()


def _read_cifar_batch(path: Path, key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = safe_unpickle(path.read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read CIFAR batch {path}: {type(e).__name__}: {e}") from None
    if not isinstance(batch, dict) or b"data" not in batch or key not in batch:
        raise DataError(f"{path} is not a CIFAR python batch: expected a dict with keys b'data' and "
                        f"{key!r}, got {type(batch).__name__}")
    try:
        x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(batch[key], dtype=np.int64).reshape(-1)
    except (ValueError, TypeError, OverflowError) as e:
        raise DataError(f"{path}: b'data' must be uint8 rows of 3072 values and {key!r} integers ({e})") from None
    if len(x) != len(y):
        raise DataError(f"{path} holds {len(x)} images and {len(y)} labels")
    check_labels(y, num_classes, path)
    return x, y


def load_cifar(name: str, root: Path, download: bool, num_classes: int | None = None):
    """CIFAR-10/100 from the python-pickle layout: x float32 [N,3,32,32], per-channel normalized."""
    folder, train, test, key, mean, std = CIFAR[name]
    d = _cifar_dir(root, folder, test[0])
    if d is None and download:
        _download(name, root)
        d = _cifar_dir(root, folder, test[0])
    missing = [f for f in train + test if d is None or not (d / f).is_file()]
    if missing:
        raise DataError(f"{name} files not found in data.root={root}: expected {folder}/"
                        f"{{{','.join(train + test)}}} (or set data.download=true)")
    num_classes = num_classes or {"cifar10": 10, "cifar100": 100}[name]
    xs, ys = [], []
    for f in train + test:
        x, y = _read_cifar_batch(d / f, key, num_classes)
        xs.append(x)
        ys.append(y)
    x = np.concatenate(xs).astype(np.float32) / 255.0
    x -= np.asarray(mean, dtype=np.float32)[:, None, None]
    x /= np.asarray(std, dtype=np.float32)[:, None, None]
    return x, np.concatenate(ys)
