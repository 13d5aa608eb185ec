"""Federated datasets: registry, partitions, per-client splits, on-disk cache.

``build_federated_data(cfg.data, cfg.seed)`` is the one entry point the rest of pflalign uses.
"""
from .build import build_federated_data, cache_key, cache_path, split_client
from .containers import ClientData, FederatedData
from .datasets import DATASETS, DatasetSpec, RawDataset, get_dataset
from .partition import PARTITIONS

__all__ = [
    "DATASETS", "PARTITIONS", "ClientData", "FederatedData", "DatasetSpec", "RawDataset",
    "build_federated_data", "cache_key", "cache_path", "get_dataset", "split_client",
]
