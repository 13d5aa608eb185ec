"""In-memory federated data: what the federation, clients and reports consume.

Each client holds its own tensors (not indices into a shared array) so a client can be shipped
to a worker process on its own, and every split keeps the client's own label distribution.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

SPLITS = ("train", "val", "test")


@dataclass
class ClientData:
    """One client's splits: x [n, *input_shape] (float32; int64 token ids for text), y int64
    [n]; val may be empty."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)} (got {name!r})")
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")


@dataclass
class FederatedData:
    clients: list[ClientData]
    num_classes: int
    input_shape: tuple[int, ...]
    # dataset, partition, seed, cache_key: provenance that goes into partition.json.
    info: dict = field(default_factory=dict)
    # True when this object came from the on-disk cache (not part of summary(): it varies by run).
    from_cache: bool = False

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    def sizes(self, split: str) -> np.ndarray:
        return np.array([len(c.split(split)[1]) for c in self.clients], dtype=np.int64)

    def train_sizes(self) -> np.ndarray:
        """Aggregation weights of FedAvg-style algorithms."""
        return self.sizes("train")

    def histograms(self, split: str) -> np.ndarray:
        """[num_clients, num_classes] label counts: the heterogeneity the partition produced."""
        return np.stack([np.bincount(c.split(split)[1].numpy(), minlength=self.num_classes)
                         for c in self.clients]).astype(np.int64)

    def summary(self) -> dict:
        """Plain-JSON description for ``partition.json`` (and the report's heatmap)."""
        sizes = {s: self.sizes(s).tolist() for s in SPLITS}
        total = np.sum([sizes[s] for s in SPLITS], axis=0)
        train = np.asarray(sizes["train"])
        return {
            **{k: v for k, v in self.info.items()},
            "num_clients": self.num_clients,
            "num_classes": int(self.num_classes),
            "input_shape": [int(d) for d in self.input_shape],
            "sizes": sizes,
            "histograms": {s: self.histograms(s).tolist() for s in ("train", "test")},
            "stats": {
                "total_samples": int(total.sum()),
                "client_size": {"min": int(total.min()), "median": float(np.median(total)),
                                "max": int(total.max()), "mean": float(total.mean())},
                "train_size": {"min": int(train.min()), "median": float(np.median(train)),
                               "max": int(train.max())},
            },
        }
