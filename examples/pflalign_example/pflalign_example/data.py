"""A dataset: a ``DatasetSpec`` naming its loader ``(cfg: DataConfig, seed) -> RawDataset`` and
its class count and input shape (checked before anything loads). This one is generated, so the
data cache keeps it (``generated=True``); a loader that reads files says False and is re-read."""
from __future__ import annotations

import numpy as np

from pflalign.data import DatasetSpec, RawDataset

NUM_CLASSES, DIM = 4, 16


def _blobs(cfg, seed: int) -> RawDataset:
    """data.num_samples points around NUM_CLASSES Gaussian centres, a function of the seed."""
    rng = np.random.default_rng([seed % 2**64, 0xB10B])
    centres = rng.normal(0.0, 0.4, size=(NUM_CLASSES, DIM))
    y = rng.integers(0, NUM_CLASSES, size=cfg.num_samples)
    x = centres[y] + rng.normal(size=(cfg.num_samples, DIM))
    return RawDataset(x.astype(np.float32), y.astype(np.int64), NUM_CLASSES, (DIM,))


blobs = DatasetSpec(_blobs, NUM_CLASSES, (DIM,), "Gaussian blobs, generated (data.num_samples)", generated=True)
