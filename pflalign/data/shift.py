"""Feature shift: every client sees the inputs through its own domain (FL-bench/PFLlib-style
feature-shift scenarios; FedBN's setting), combined with any label partition.

``data.feature_shift`` picks the kind, ``data.shift_strength`` (null = the kind's default) its size:

* ``rotate`` (images, C x H x W): the client's angle is drawn uniformly from [-s, s] degrees
  (default s = 45, at most 180); positive is counter-clockwise, bilinear, the corners that come
  into view are 0 (torchvision's ``rotate`` fill). Vectors are refused: a 1-D "rotation" (a
  circular shift) is no rotation, and for a flattened image the shape is unknown.
* ``noise`` (images and vectors): the client's std is drawn uniformly from [0, s] (default
  s = 0.3, in input units: the built-in inputs are [0, 1] pixels or standardized) and fixed
  Gaussian noise of that std is added to each of its samples once, when the data is built
  (the client's domain is a noisy copy of its data, not an augmentation redrawn per epoch).
* ``affine`` (vectors, D): x -> A x + b with A = I + s G / sqrt(D) and b = s g, G and g standard
  normal (default s = 0.3, so the spectral norm of A - I is about 2 s); images are refused
  (use rotate, or noise).

Token ids (text: shakespeare, or a plug-in whose x is integer) refuse every kind.

Each client's parameters and noise come from one generator seeded by the data seed and the
client id alone, so a client keeps its domain under any partition and any number of clients.
The shift is applied to all of a client's splits (train, val, test alike) before the data is
cached, and its parameters go into ``partition.json`` (:func:`summary`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError

KINDS = ("none", "rotate", "noise", "affine")
DEFAULT_STRENGTH = {"rotate": 45.0, "noise": 0.3, "affine": 0.3}
MAX_ANGLE = 180.0
PARAM = {"rotate": "angle", "noise": "std", "affine": "norm"}  # the per-client value plotted
TEXT_DATASETS = ("shakespeare",)
_SHIFT_STREAM = 3  # beside build's partition (1) and split (2) streams
_CHUNK = 1024  # images rotated at a time: bounds the sampling grid's memory


def strength(cfg) -> float:
    """``data.shift_strength``, or the kind's default when it is null."""
    return float(cfg.shift_strength if cfg.shift_strength is not None else DEFAULT_STRENGTH[cfg.feature_shift])


def check(cfg, input_shape: tuple[int, ...], x_dtype=None) -> None:
    """Refuse a shift the inputs cannot take: from the dataset's declared shape before anything
    is loaded, and again from a plug-in's actual x (integer = token ids) before it is cached."""
    kind = cfg.feature_shift
    if kind == "none":
        return
    where, shape = f"data.feature_shift={kind}", tuple(int(d) for d in input_shape)
    if cfg.dataset in TEXT_DATASETS or x_dtype is not None and np.dtype(x_dtype).kind in "iub":
        raise DataError(f"{where}: dataset {cfg.dataset} has token ids (text); no feature shift applies to "
                        f"them (use data.feature_shift=none)")
    if kind == "rotate" and len(shape) != 3:
        raise DataError(f"{where} needs image inputs (C, H, W); dataset {cfg.dataset} has inputs of shape "
                        f"{shape} (use noise or affine)")
    if kind == "affine" and len(shape) != 1:
        raise DataError(f"{where} needs vector inputs (D,); dataset {cfg.dataset} has inputs of shape "
                        f"{shape} (use rotate or noise)")
    if kind == "rotate" and strength(cfg) > MAX_ANGLE:
        raise ConfigError(f"data.shift_strength={cfg.shift_strength} is the largest rotation angle in degrees "
                          f"for data.feature_shift=rotate: it must be <= {MAX_ANGLE:g}")


def key_fields(cfg) -> dict:
    """What the data cache key hashes for the shift: nothing for ``none``, so unshifted data keeps
    the key (and cache) it had before feature shifts existed."""
    if cfg.feature_shift == "none":
        return {}
    return {"feature_shift": cfg.feature_shift, "shift_strength": strength(cfg)}


def client_seed(seed: int, client: int) -> int:
    """The seed of client ``client``'s shift generator (recorded in ``partition.json``)."""
    return int(np.random.SeedSequence([seed % 2**64, _SHIFT_STREAM, client]).generate_state(1)[0])


def affine_map(rng: np.random.Generator, dim: int, s: float) -> tuple[np.ndarray, np.ndarray]:
    """(A, b) in float64: A = I + s G / sqrt(dim), b = s g."""
    a = np.eye(dim) + s * rng.standard_normal((dim, dim)) / math.sqrt(dim)
    return a, s * rng.standard_normal(dim)


def rotate(x: torch.Tensor, angle: float) -> torch.Tensor:
    """Images [N, C, H, W] rotated counter-clockwise by ``angle`` degrees about their centre."""
    h, w = x.shape[-2:]
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    # affine_grid works in [-1, 1] coordinates per axis: the h/w factors keep the rotation rigid.
    theta = torch.tensor([[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=x.dtype)
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _params(kind: str, s: float, rng: np.random.Generator, input_shape: tuple[int, ...]) -> tuple[dict, object]:
    """(what partition.json records, what :func:`_shift` needs), from the client's generator."""
    if kind == "rotate":
        angle = float(rng.uniform(-s, s))
        return {"angle": angle}, angle
    if kind == "noise":
        std = float(rng.uniform(0.0, s))
        return {"std": std}, std
    a, b = affine_map(rng, int(input_shape[0]), s)
    return {"norm": float(np.linalg.norm(a - np.eye(len(a)), 2)), "bias_norm": float(np.linalg.norm(b))}, (a, b)


def _shift(kind: str, x: np.ndarray, arg, rng: np.random.Generator) -> None:
    """Shift one client's samples ``x`` in place."""
    if kind == "rotate":
        for i in range(0, len(x), _CHUNK):
            x[i:i + _CHUNK] = rotate(torch.from_numpy(x[i:i + _CHUNK]), arg).numpy()
    elif kind == "noise":
        x += arg * rng.standard_normal(x.shape, dtype=np.float32)
    else:  # float64 products: rounding to float32 hides BLAS's thread-dependent summation order
        a, b = arg
        x[...] = (x.astype(np.float64) @ a.T + b).astype(np.float32)


def clients(cfg, seed: int, num_clients: int, input_shape: tuple[int, ...]):
    """(record, argument, generator) per client: the generator is positioned after the draws of
    its parameters, where the noise (if any) continues."""
    kind, s = cfg.feature_shift, strength(cfg)
    for i in range(num_clients):
        cs = client_seed(seed, i)
        rng = np.random.default_rng(cs)
        record, arg = _params(kind, s, rng, input_shape)
        yield {"seed": cs, **record}, arg, rng


def apply(cfg, seed: int, x: np.ndarray, sizes: list[int]) -> None:
    """Shift ``x`` (all clients' samples, client after client, ``sizes[i]`` each) in place."""
    if cfg.feature_shift == "none":
        return
    ends = np.cumsum(sizes)
    for (_, arg, rng), end, n in zip(clients(cfg, seed, len(sizes), x.shape[1:]), ends, sizes):
        _shift(cfg.feature_shift, x[end - n:end], arg, rng)


def summary(cfg, seed: int, num_clients: int, input_shape: tuple[int, ...]) -> dict | None:
    """``partition.json``'s record of the shift: kind, strength, and each client's seed and
    parameter (rotate: angle in degrees; noise: std; affine: spectral norm of A - I and |b|).
    None without a shift."""
    if cfg.feature_shift == "none":
        return None
    return {"kind": cfg.feature_shift, "strength": strength(cfg), "param": PARAM[cfg.feature_shift],
            "clients": [r for r, _, _ in clients(cfg, seed, num_clients, input_shape)]}
