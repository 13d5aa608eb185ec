"""The throughput benchmark's mlp workload as a Flower simulation, for the start-up comparison.

FedAvg over the partition ``throughput.py`` exports (same clients, data and initial weights):
every client trains one local epoch of SGD and every client is evaluated, on Flower's Ray
backend with one CPU per client actor. Flower pins its own Ray, so this runs in a venv of its
own (``throughput.py --flower-python``):

    python3 -m venv ~/flower-venv && ~/flower-venv/bin/pip install torch==2.13.0 'flwr[simulation]==1.42.0'
    ~/flower-venv/bin/python benchmarks/flower_sim.py PARTITION.npz MARKER [ROUNDS]

MARKER is created when round 1's evaluation has been aggregated (the end of round 1).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from flwr.client import ClientApp, NumPyClient
from flwr.common import Context, ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.simulation import run_simulation

# Module globals travel to Flower's actors with client_fn: plain values only (the path, not the file).
PARTITION, MARKER = sys.argv[1], Path(sys.argv[2])
ROUNDS = int(sys.argv[3]) if len(sys.argv) > 3 else 1
with np.load(PARTITION) as part:
    NUM_CLIENTS, LR, BATCH = int(part["num_clients"]), float(part["lr"]), int(part["batch_size"])


def initial_weights(part) -> list[np.ndarray]:
    return [part[f"w{i}"] for i in range(int(part["num_weights"]))]


def mlp(weights: list[np.ndarray]) -> torch.nn.Module:
    """The same layers as pflalign's mlp (the widths read from the exported weights)."""
    layers: list[torch.nn.Module] = []
    for w in weights[0:-2:2]:
        layers += [torch.nn.Linear(w.shape[1], w.shape[0]), torch.nn.ReLU()]
    return torch.nn.Sequential(torch.nn.Flatten(), *layers, torch.nn.Linear(weights[-2].shape[1], weights[-2].shape[0]))


class Client(NumPyClient):
    def __init__(self, cid: int):
        torch.set_num_threads(1)
        with np.load(PARTITION) as part:
            self.model = mlp(initial_weights(part))
            self.train = torch.from_numpy(part[f"train_x{cid}"]), torch.from_numpy(part[f"train_y{cid}"])
            self.test = torch.from_numpy(part[f"test_x{cid}"]), torch.from_numpy(part[f"test_y{cid}"])

    def set_parameters(self, weights: list[np.ndarray]) -> None:
        with torch.no_grad():
            for p, w in zip(self.model.parameters(), weights):
                p.copy_(torch.from_numpy(w))

    def get_parameters(self, config) -> list[np.ndarray]:
        return [p.detach().numpy().copy() for p in self.model.parameters()]

    def fit(self, parameters, config):
        self.set_parameters(parameters)
        opt = torch.optim.SGD(self.model.parameters(), lr=LR)
        x, y = self.train
        for idx in torch.randperm(len(y)).split(BATCH):
            opt.zero_grad()
            F.cross_entropy(self.model(x[idx]), y[idx]).backward()
            opt.step()
        return self.get_parameters(config), len(y), {}

    def evaluate(self, parameters, config):
        self.set_parameters(parameters)
        x, y = self.test
        with torch.no_grad():
            logits = self.model(x)
        return float(F.cross_entropy(logits, y)), len(y), {"acc": float((logits.argmax(1) == y).float().mean())}


def client_fn(context: Context):
    return Client(int(context.node_config["partition-id"])).to_client()


def end_of_round(metrics: list) -> dict:
    MARKER.touch()
    return {}


def server_fn(context: Context) -> ServerAppComponents:
    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=1.0, min_fit_clients=NUM_CLIENTS,
                      min_evaluate_clients=NUM_CLIENTS, min_available_clients=NUM_CLIENTS,
                      initial_parameters=ndarrays_to_parameters(initial_weights(np.load(PARTITION))),
                      evaluate_metrics_aggregation_fn=end_of_round)
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=ROUNDS))


if __name__ == "__main__":
    run_simulation(server_app=ServerApp(server_fn=server_fn), client_app=ClientApp(client_fn=client_fn),
                   num_supernodes=NUM_CLIENTS,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": 2, "include_dashboard": False}})
