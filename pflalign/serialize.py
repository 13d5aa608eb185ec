"""Trees of tensors and plain values in files that cannot execute code.

A tree (dicts, lists, tensors, numbers, strings, None) is one safetensors file: the tensors are
its tensors, the structure is JSON in its header's metadata. Reading it back parses JSON and
copies bytes; nothing in the file can name code to run (unlike pickle, ``torch.load``'s format).
Writes are atomic (temp file + ``os.replace``) and get 0666 less the umask.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as _encode_tensors

from .errors import InputError

_TREE = "pflalign.tree"


def umask() -> int:
    """The process umask, read without changing it (``os.umask`` would race other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: Path, fsync: bool = True) -> Iterator[BinaryIO]:
    """A file that replaces ``path`` all at once when the block ends without an error: a crash
    leaves the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp's 0600 would ignore the user's umask
        with os.fdopen(fd, "wb") as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(path)  # so "no space left" can say where
        raise


def atomic_write(path: Path, data: bytes, fsync: bool = True) -> None:
    with atomic_file(path, fsync) as f:
        f.write(data)


def _encode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, torch.Tensor):
        t = node.detach().cpu()
        if not t.is_contiguous() or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone(memory_format=torch.contiguous_format)  # a view: safetensors wants sole owners
        name = str(len(tensors))
        tensors[name] = t
        return {"$t": name}
    if isinstance(node, dict):
        if all(isinstance(k, str) for k in node) and not {"$t", "$d"} & set(node):
            return {k: _encode(v, tensors) for k, v in node.items()}
        return {"$d": [[k, _encode(v, tensors)] for k, v in node.items()]}  # non-string keys
    if isinstance(node, (list, tuple)):
        return [_encode(v, tensors) for v in node]
    if isinstance(node, np.generic):
        return node.item()
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    raise TypeError(f"cannot store a {type(node).__name__} (tensors, numbers, strings, lists and dicts only)")


def _decode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, dict):
        if "$t" in node:
            return tensors[node["$t"]]
        if "$d" in node:
            return {(k if not isinstance(k, list) else tuple(k)): _decode(v, tensors) for k, v in node["$d"]}
        return {k: _decode(v, tensors) for k, v in node.items()}
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    return node


def dumps_tree(tree: Any) -> bytes:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = json.dumps(_encode(tree, tensors), allow_nan=True)
    return _encode_tensors(tensors, metadata={_TREE: skeleton})


def save_tree(path: Path, tree: Any, fsync: bool = True) -> int:
    """Write ``tree`` atomically; returns the file's size in bytes."""
    data = dumps_tree(tree)
    atomic_write(path, data, fsync=fsync)
    return len(data)


def load_tree(path: Path) -> Any:
    """The tree in ``path``; InputError naming the file when it is missing, damaged or foreign."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            skeleton = json.loads((f.metadata() or {})[_TREE])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
        return _decode(skeleton, tensors)
    except FileNotFoundError:
        raise InputError(f"missing file {path}") from None
    except (SafetensorError, OSError, KeyError, TypeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise InputError(f"cannot read {path}: damaged or not a pflalign file ({first})") from None
