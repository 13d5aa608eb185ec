"""LEAF benchmarks from their JSON files: FEMNIST, Shakespeare, Sent140, Synthetic.

``data.root`` is a LEAF ``data/`` directory: the ``*.json`` files of its ``train/`` and ``test/``
subdirectories (else of ``all_data/``), each ``{"users": [...], "num_samples": [...],
"user_data": {user: {"x": [...], "y": [...]}}}``. A user is a natural client; its train and test
samples are pooled and pflalign makes each client's own split (``data.test_fraction``), as
PFLlib does, so LEAF's split is not kept. ``data.partition=natural`` takes the
``data.num_clients`` users with the most samples; any other partition deals every sample.

Tasks (``data.leaf_task``; ``auto`` tells them from the first sample):

* ``femnist``: x = 784 pixel values -> a (1, 28, 28) image; 62 classes (digits and letters).
* ``shakespeare``: x = a string (LEAF: 80 characters), y = the next character -> token ids in
  LEAF's vocabulary (:mod:`pflalign.data.shakespeare`); 81 classes, for ``model.name=charlstm``.
* ``sent140``: x = a tweet record ``[id, date, query, user, text]``, y = 0/1 -> the text as a
  bag of words: :data:`SENT140_FEATURES` hashed word counts (scikit-learn's HashingVectorizer,
  l2-normalized; no vocabulary is fitted, so no split leaks into another), 2 classes.
* ``vector``: x = a list of numbers of any other length (LEAF Synthetic) -> that vector;
  classes = the largest label + 1.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import DataError
from . import formats, shakespeare

TASKS = ("auto", "femnist", "shakespeare", "sent140", "vector")
FEMNIST_SHAPE, FEMNIST_CLASSES = (1, 28, 28), 62
SENT140_FEATURES = 1024  # hashed bag-of-words width: a tweet has ~15 words, collisions stay rare


def files(root: Path) -> list[Path]:
    """The JSON files of ``train/`` and ``test/`` (else ``all_data/``), sorted within each."""
    dirs = [root / d for d in ("train", "test") if (root / d).is_dir()]
    if not dirs and (root / "all_data").is_dir():
        dirs = [root / "all_data"]
    found = [f for d in dirs for f in sorted(d.glob("*.json")) if f.is_file()]
    if not found:
        raise DataError(f"data.root={root} has no LEAF JSON files (expected train/*.json and test/*.json, "
                        f"or all_data/*.json)")
    return found


def read(path: Path) -> tuple[list[str], list, list]:
    """One LEAF file -> per-sample user, x, y; its users, num_samples and user_data must agree."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"cannot read LEAF file {path}: {type(e).__name__}: {e}") from None
    if not isinstance(d, dict) or not all(isinstance(d.get(k), t) for k, t in
                                          (("users", list), ("num_samples", list), ("user_data", dict))):
        raise DataError(f"{path} is not a LEAF file: expected lists users and num_samples and a mapping user_data")
    if len(d["users"]) != len(d["num_samples"]):
        raise DataError(f"{path}: {len(d['users'])} users but {len(d['num_samples'])} num_samples")
    users, xs, ys = [], [], []
    for user, n in zip(d["users"], d["num_samples"]):
        data = d["user_data"].get(user)
        if not isinstance(data, dict) or not isinstance(data.get("x"), list) or not isinstance(data.get("y"), list):
            raise DataError(f"{path}: user {user} has no x and y lists in user_data")
        if not len(data["x"]) == len(data["y"]) == n:
            raise DataError(f"{path}: user {user} has {len(data['x'])} x and {len(data['y'])} y, "
                            f"num_samples says {n}")
        users += [str(user)] * n
        xs += data["x"]
        ys += data["y"]
    return users, xs, ys


def infer_task(x, y, where: str) -> str:
    """The task of a sample, when its form leaves no doubt; else ask for ``data.leaf_task``."""
    if isinstance(x, str) and isinstance(y, str):
        return "shakespeare"
    if isinstance(x, list) and x and all(isinstance(v, str) for v in x):
        return "sent140"
    if isinstance(x, list) and x and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x):
        return "femnist" if len(x) == np.prod(FEMNIST_SHAPE) else "vector"
    raise DataError(f"cannot tell the LEAF task of {where} from its first sample (x: {type(x).__name__}, "
                    f"y: {type(y).__name__}): set data.leaf_task to one of {', '.join(TASKS[1:])}")


def _numbers(xs: list, task: str, where: str) -> np.ndarray:
    try:
        x = np.asarray(xs, dtype=np.float32)
    except (ValueError, TypeError):
        raise DataError(f"{where}: LEAF task {task} needs x to be lists of numbers of one length") from None
    if x.ndim != 2 or not np.isfinite(x).all():
        raise DataError(f"{where}: LEAF task {task} needs x to be lists of finite numbers of one length")
    return x


def encode(task: str, xs: list, ys: list, where: str) -> tuple[np.ndarray, np.ndarray, int]:
    """-> x, y, num_classes of ``task``."""
    if task == "shakespeare":
        lengths = {len(s) if isinstance(s, str) else -1 for s in xs}
        if len(lengths) != 1 or -1 in lengths or not all(isinstance(c, str) and len(c) == 1 for c in ys):
            raise DataError(f"{where}: LEAF task shakespeare needs x to be strings of one length and y single characters")
        x = shakespeare.encode("".join(xs)).reshape(len(xs), lengths.pop())
        return x, shakespeare.encode("".join(ys)), shakespeare.VOCAB_SIZE
    y = formats.labels(ys, where)
    if task == "sent140":
        from sklearn.feature_extraction.text import HashingVectorizer

        texts = [r if isinstance(r, str) else r[-1] if isinstance(r, list) and r else None for r in xs]
        if not all(isinstance(t, str) for t in texts):
            raise DataError(f"{where}: LEAF task sent140 needs x to be tweet records ending with the text")
        bag = HashingVectorizer(n_features=SENT140_FEATURES, alternate_sign=False, norm="l2")
        return bag.transform(texts).toarray().astype(np.float32), y, 2
    x = _numbers(xs, task, where)
    if task == "femnist":
        if x.shape[1] != np.prod(FEMNIST_SHAPE):
            raise DataError(f"{where}: LEAF task femnist needs 784 pixel values per sample, got {x.shape[1]}")
        return x.reshape(len(x), *FEMNIST_SHAPE), y, FEMNIST_CLASSES
    return x, y, int(y.max()) + 1


def load(cfg):
    """-> x, y, num_classes, input_shape, natural clients (partition=natural), their user ids."""
    root = formats.require_root(cfg, "leaf")
    users, xs, ys = [], [], []
    for path in files(root):
        u, x, y = read(path)
        users += u
        xs += x
        ys += y
    where = f"data.root={root}"
    if not xs:
        raise DataError(f"{where} holds no samples")
    task = cfg.leaf_task if cfg.leaf_task != "auto" else infer_task(xs[0], ys[0], where)
    x, y, num_classes = encode(task, xs, ys, where)
    clients, names = None, None
    if cfg.partition == "natural":
        clients, names = formats.natural(np.asarray(users), cfg.num_clients, where)
    return x, y, num_classes, tuple(int(d) for d in x.shape[1:]), clients, names
