"""FedAvg (McMahan et al., AISTATS 2017): every client starts from the global model, trains
locally, and the server averages the updates weighted by train size. Evaluated as the global
model on each client's test split."""
from .base import Algorithm


class FedAvg(Algorithm):
    name = "fedavg"
