"""LG-FedAvg (Liang, Liu, Ziyin, Allen, Auerbach, Brent, Salakhutdinov, Morency, "Think
Locally, Act Globally: Federated Learning with Local and Global Representations", arXiv
2001.01523, 2020): each client keeps its own local representation (``body``) and only the
global layers on top (``head``) are averaged by the server. FedPer with the roles swapped.

Deviation: the paper optionally warm-starts from a FedAvg-trained model; like PFLlib, this
starts from the common random initialization.
"""
from __future__ import annotations

from .fedper import FedPer


class LGFedAvg(FedPer):
    name = "lg_fedavg"
    evaluates_global = False  # the global body is never trained: only (local body, global head) exists
    shared, local = "head", "body"
