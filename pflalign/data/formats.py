"""What the readers of users' own files (``hf``, ``imagefolder``, ``leaf``) share: the
``data.root`` check, the files' stamp in the cache key, image decoding, and natural clients from
a per-sample key (a user, a writer).

Their class count and input shape come from the files, so the registry declares them as None
and every check that needs them runs on the loaded data, before anything is partitioned or
cached (:mod:`pflalign.data.build`).
"""
from __future__ import annotations

import hashlib
import io
import os
import struct
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..errors import DataError

# What a corrupt or foreign file makes PIL's decoders raise (they are many, and not all OSError).
_BAD_IMAGE = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error)


def require_root(cfg, name: str, files_ok: tuple[str, ...] = ()) -> Path:
    """``data.root`` as an existing directory (or a file with one of the suffixes ``files_ok``)."""
    if cfg.root is None:
        raise DataError(f"dataset {name} reads files: set data.root to their directory")
    path = Path(cfg.root).expanduser()
    if path.is_file() and path.suffix in files_ok:
        return path
    if path.exists() and not path.is_dir():
        raise DataError(f"data.root={path} is a file; dataset {name} reads a directory")
    if not path.is_dir():
        raise DataError(f"data.root={path} does not exist (dataset {name})")
    return path


def _visible(names: list[str]) -> list[str]:
    return sorted(n for n in names if not n.startswith("."))


def walk(root: Path) -> list[Path]:
    """Every file under ``root`` (symlinks followed, hidden names skipped), in a fixed order."""
    if root.is_file():
        return [root]
    out = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = _visible(dirs)
        out += [Path(folder, f) for f in _visible(files)]
    return sorted(out)


def stamp(cfg, name: str) -> str:
    """sha256 of (relative path, size, mtime) of every file under ``data.root``: part of the cache
    key, so adding, removing, resizing or touching a file rebuilds the data, and a cached entry
    is known to match the files without reading them again."""
    root = require_root(cfg, name, (".parquet",))
    h = hashlib.sha256()
    for f in walk(root):
        st = f.stat()
        h.update(f"{f.relative_to(root) if f != root else f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _open(src: Any, where: str):
    from PIL import Image

    try:
        return Image.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray, memoryview)) else src)
    except (*_BAD_IMAGE, Image.DecompressionBombError) as e:
        raise DataError(f"{where} is not a readable image ({type(e).__name__}: {e})") from None


def decode_images(sources: Sequence[Any], where: Callable[[int], str], size: Optional[int],
                  mode: str) -> np.ndarray:
    """Images (paths or encoded bytes) -> float32 [N, C, size, size] in [0, 1].

    ``mode`` ``gray`` or ``rgb`` converts every image; ``auto`` is gray when every image is
    (PIL modes 1, L, LA, I, F), else RGB (palette and alpha dropped). ``size`` None keeps the
    files' own size, which must then be the same for all; else each is resized (bilinear) to a
    square, aspect ratio not kept. Headers are read first, so a mixed set fails before decoding.
    """
    from PIL import Image, ImageMode

    modes, sizes = set(), {}
    for i, src in enumerate(sources):
        with _open(src, where(i)) as im:
            modes.add(im.mode)
            sizes.setdefault(im.size, i)
    if size is None and len(sizes) > 1:
        (a, i), (b, j) = list(sizes.items())[:2]
        raise DataError(f"images differ in size ({a[0]}x{a[1]}: {where(i)}; {b[0]}x{b[1]}: {where(j)}): "
                        f"set data.image_size to resize them")
    if mode == "auto":
        mode = "gray" if all(ImageMode.getmode(m).basemode == "L" for m in modes) else "rgb"
    pil_mode, channels = ("L", 1) if mode == "gray" else ("RGB", 3)
    w, h = (size, size) if size is not None else next(iter(sizes))
    out = np.empty((len(sources), channels, h, w), dtype=np.float32)
    for i, src in enumerate(sources):
        with _open(src, where(i)) as im:
            try:
                im = im.convert(pil_mode)
                if im.size != (w, h):
                    im = im.resize((w, h), Image.Resampling.BILINEAR)
                pixels = np.asarray(im, dtype=np.float32)
            except _BAD_IMAGE as e:
                raise DataError(f"{where(i)} is not a readable image ({type(e).__name__}: {e})") from None
        out[i] = (pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)) / 255.0
    return out


def natural(keys: np.ndarray, num_clients: int, where: str) -> tuple[list[np.ndarray], list[str]]:
    """The ``num_clients`` largest groups of samples sharing a key (ties: key order), largest
    first, as sorted index arrays, and their keys as names; samples of smaller groups are unused."""
    uniq, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    if num_clients > len(uniq):
        raise DataError(f"data.num_clients={num_clients} but {where} names only {len(uniq)} client(s): "
                        f"lower data.num_clients")
    order = np.argsort(inverse.ravel(), kind="stable")
    groups = np.split(order, np.cumsum(counts)[:-1])
    rank = np.lexsort((np.arange(len(uniq)), -counts))[:num_clients]
    return [groups[g].astype(np.int64) for g in rank], [str(uniq[g]) for g in rank]


def labels(values: np.ndarray, where: str) -> np.ndarray:
    """Integer class labels as int64 (integral floats accepted: JSON writers emit 3.0)."""
    v = np.asarray(values)
    if v.dtype.kind in "iub":
        return v.astype(np.int64)
    if v.dtype.kind == "f" and np.isfinite(v).all() and (v == np.round(v)).all():
        return v.astype(np.int64)
    raise DataError(f"{where}: labels must be integers (got values like {v.ravel()[:1].tolist()})")
