"""Partitions: pure functions of (labels, num_clients, rng, parameter) -> per-client index arrays.

They never touch numpy's global RNG and never loop unboundedly, so a partition is a function
of the seed alone and an impossible request fails fast with a ``DataError``.
"""
from __future__ import annotations

import logging

import numpy as np

from ..errors import DataError

log = logging.getLogger(__name__)

PARTITIONS = ("iid", "dirichlet", "pathological", "quantity_skew", "natural")

DIRICHLET_RETRIES = 100


def _check_counts(n: int, num_clients: int, min_samples: int = 1) -> None:
    if num_clients > n:
        raise DataError(f"data.num_clients={num_clients} exceeds the {n} samples of the dataset")
    if num_clients * min_samples > n:
        raise DataError(f"data.num_clients*data.min_samples = {num_clients}*{min_samples} "
                        f"exceeds the {n} samples of the dataset")


def iid(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle and cut into equal parts (sizes differ by at most one)."""
    _check_counts(len(labels), num_clients)
    return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), num_clients)]


def allocate(total: int, weights: np.ndarray) -> np.ndarray:
    """Integer split of ``total`` proportional to ``weights`` (floor + largest remainder)."""
    share = weights / weights.sum() * total
    out = np.floor(share).astype(np.int64)
    rest = total - int(out.sum())
    out[np.argsort(-(share - out), kind="stable")[:rest]] += 1
    return out


def lognormal_sizes(total: int, num_clients: int, sigma: float, min_samples: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Client sizes summing to ``total``: ``min_samples`` each plus a log-normal share of the rest.

    Shared by ``quantity_skew`` and the Synthetic generator (FedProx draws its client sizes from
    a log-normal too); a floor keeps every client trainable.
    """
    _check_counts(total, num_clients, min_samples)
    return min_samples + allocate(total - num_clients * min_samples,
                                  rng.lognormal(0.0, sigma, num_clients))


def quantity_skew(labels: np.ndarray, num_clients: int, rng: np.random.Generator,
                  sigma: float, min_samples: int) -> list[np.ndarray]:
    """IID labels, log-normal(sigma) sizes, each client >= ``min_samples``; all samples assigned."""
    sizes = lognormal_sizes(len(labels), num_clients, sigma, min_samples, rng)
    perm = rng.permutation(len(labels))
    return [np.sort(p) for p in np.split(perm, np.cumsum(sizes)[:-1])]


def dirichlet(labels: np.ndarray, num_clients: int, rng: np.random.Generator,
              alpha: float, min_samples: int) -> list[np.ndarray]:
    """Label skew: each class is spread over clients with proportions ~ Dir(alpha).

    As in PFLlib/FedLab, a client that already holds its fair share (n/num_clients) gets no more
    of the next class, and the whole draw is repeated until every client has ``min_samples``.
    Unlike them the repetition is bounded (``DIRICHLET_RETRIES``); if no draw qualifies (tiny
    alpha with many clients) the last draw is repaired deterministically by moving samples from
    the largest clients to the deficient ones, which is always possible once
    num_clients*min_samples <= n (checked first).
    """
    n = len(labels)
    _check_counts(n, num_clients, min_samples)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(DIRICHLET_RETRIES):
        owner = np.empty(n, dtype=np.int64)
        sizes = np.zeros(num_clients, dtype=np.int64)
        for members in by_class:
            idx = rng.permutation(members)
            p = rng.dirichlet(np.full(num_clients, alpha))
            open_ = sizes < n / num_clients
            p = p * open_
            if p.sum() <= 0:  # every open client drew an exact 0 (alpha tiny): split evenly
                p = open_.astype(float)
            cuts = (np.cumsum(p / p.sum()) * len(idx)).astype(np.int64)
            cuts[-1] = len(idx)
            counts = np.diff(cuts, prepend=0)
            owner[idx] = np.repeat(np.arange(num_clients), counts)
            sizes += counts
        if sizes.min() >= min_samples:
            break
    else:
        log.warning("dirichlet(alpha=%g): no draw in %d gave every one of %d clients >= %d samples;"
                    " moving samples from the largest clients", alpha, DIRICHLET_RETRIES,
                    num_clients, min_samples)
    order = np.argsort(owner, kind="stable")
    out = [rng.permutation(p) for p in np.split(order, np.cumsum(sizes)[:-1])]
    return [np.sort(p) for p in _repair(out, min_samples)]


def _repair(parts: list[np.ndarray], min_samples: int) -> list[np.ndarray]:
    """Top up clients below ``min_samples`` from the currently largest client.

    Deterministic given the (already shuffled) parts: takes the tail of the largest client.
    """
    parts = list(parts)
    sizes = np.array([len(p) for p in parts])
    while sizes.min() < min_samples:
        d, big = int(np.argmin(sizes)), int(np.argmax(sizes))
        m = min(min_samples - sizes[d], sizes[big] - min_samples)
        parts[d] = np.concatenate([parts[d], parts[big][-m:]])
        parts[big] = parts[big][:-m]
        sizes[d] += m
        sizes[big] -= m
    return parts


def pathological(labels: np.ndarray, num_clients: int, rng: np.random.Generator,
                 classes_per_client: int) -> list[np.ndarray]:
    """FedAvg's shard scheme, with shards cut per class so each client has exactly k classes.

    Exact scheme (k = classes_per_client, C = number of classes, K = num_clients):
    1. classes are relabelled by a random permutation ``perm``;
    2. client c takes the k slots ``perm[(c*k + j) % C]`` for j < k: k distinct classes, and every
       class is used by floor or ceil of K*k/C clients;
    3. each class's samples are shuffled and cut into as many near-equal shards as clients use
       that class; shard i goes to the i-th such client (in client order).
    FedAvg instead cuts the label-sorted array into K*k shards, where a shard can straddle two
    classes; cutting per class keeps the "exactly k classes" promise. All samples are assigned,
    so K*k must be >= C, and each class needs at least as many samples as it has shards.
    """
    k, n = classes_per_client, len(labels)
    classes = np.unique(labels)
    C = len(classes)
    _check_counts(n, num_clients)
    if k > C:
        raise DataError(f"data.classes_per_client={k} exceeds the {C} classes of the dataset")
    if num_clients * k < C:
        raise DataError(f"data.num_clients*data.classes_per_client = {num_clients}*{k} < {C} "
                        f"classes: a pathological partition would drop classes")
    perm = classes[rng.permutation(C)]
    owners: dict[int, list[int]] = {int(c): [] for c in classes}
    for c in range(num_clients):
        for j in range(k):
            owners[int(perm[(c * k + j) % C])].append(c)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for cls, users in owners.items():
        idx = rng.permutation(np.flatnonzero(labels == cls))
        if len(idx) < len(users):
            raise DataError(f"class {cls} has {len(idx)} samples, fewer than the {len(users)} "
                            f"clients data.classes_per_client={k} gives it")
        for u, shard in zip(users, np.array_split(idx, len(users))):
            parts[u].append(shard)
    return [np.sort(np.concatenate(p)) for p in parts]


def natural(natural_clients: list[np.ndarray] | None, num_clients: int,
            dataset: str) -> list[np.ndarray]:
    """The dataset's own clients (Synthetic's generated users, Shakespeare's speakers)."""
    if natural_clients is None:
        raise DataError(f"data.partition=natural needs a dataset with its own clients "
                        f"(synthetic, shakespeare); {dataset} has none")
    if len(natural_clients) != num_clients:
        raise DataError(f"data.num_clients={num_clients} but dataset {dataset} has "
                        f"{len(natural_clients)} natural clients")
    return [np.asarray(p, dtype=np.int64) for p in natural_clients]
