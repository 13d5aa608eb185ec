"""Readers for datasets that live in files: MNIST-style idx and the CIFAR python pickles.

Parsing the official formats ourselves means no torchvision at run time and tests that use
tiny files in the same layout. torchvision is imported only to download (data.download=true).
"""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

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


def _read_idx(path: Path, magic: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from None
    ndim = 3 if magic == 2051 else 1
    header = 4 * (1 + ndim)
    if len(data) < header or int.from_bytes(data[:4], "big") != magic:
        raise DataError(f"{path} is not an idx file (expected magic number {magic})")
    dims = [int.from_bytes(data[4 * (i + 1):4 * (i + 2)], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=header)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} holds {body.size} bytes, its header promises {dims}")
    return body.reshape(dims)


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


def load_idx(name: str, root: Path, download: bool):
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


def load_cifar(name: str, root: Path, download: bool):
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
    xs, ys = [], []
    for f in train + test:
        try:
            with open(d / f, "rb") as fh:
                batch = pickle.load(fh, encoding="bytes")
            xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[key], dtype=np.int64))
        except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError) as e:
            raise DataError(f"cannot read {name} batch {d / f}: {type(e).__name__}: {e}") from None
    x = np.concatenate(xs).astype(np.float32) / 255.0
    x -= np.asarray(mean, dtype=np.float32)[:, None, None]
    x /= np.asarray(std, dtype=np.float32)[:, None, None]
    return x, np.concatenate(ys)
