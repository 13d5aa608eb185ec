"""FedProx's Synthetic(alpha, beta) benchmark (Li et al. 2020, "Federated Optimization in
Heterogeneous Networks"), regenerated from a seed instead of shipped as JSON.

Client k: u_k ~ N(0, alpha), W_k ~ N(u_k, 1) [60x10], b_k ~ N(u_k, 1) [10];
B_k ~ N(0, beta), v_k ~ N(B_k, 1) [60]; x ~ N(v_k, Sigma) with Sigma = diag(j^-1.2);
y = argmax softmax(W_k^T x + b_k). alpha controls how different the clients' models are, beta
how different their inputs are. Checked against the reference code (github.com/litian96/FedProx,
data/synthetic_1_1/generate_synthetic.py): alpha and beta are standard deviations there too
(``np.random.normal(0, alpha)``), each client is one generator (``partition=natural``), and
apart from the order of the random draws one thing differs, the client sizes. The paper calls
them power-law; the code draws int(lognormal(4, 2)) + 50 and keeps whatever total that gives.
Here each client gets ``min_samples`` plus a share of the rest proportional to a
lognormal(0, ``quantity_sigma``) draw, so the total is ``num_samples``: with
``quantity_sigma=2, min_samples=50`` (the preset ``fedprox_synthetic``) the same shape above the
floor, the total set instead of drawn. The reference splits each client 90/10 into train/test
(``data.test_fraction=0.1``).
"""
from __future__ import annotations

import numpy as np

from .partition import lognormal_sizes

DIM, NUM_CLASSES = 60, 10


def generate(num_clients: int, num_samples: int, alpha: float, beta: float, sigma: float,
             min_samples: int, rng: np.random.Generator):
    """-> x float32 [N, 60], y int64 [N], per-client index arrays (consecutive ranges)."""
    sizes = lognormal_sizes(num_samples, num_clients, sigma, min_samples, rng)
    cov_diag = np.arange(1, DIM + 1, dtype=np.float64) ** -1.2
    xs, ys, clients, start = [], [], [], 0
    for n_k in sizes:
        u = rng.normal(0.0, alpha)
        W = rng.normal(u, 1.0, (DIM, NUM_CLASSES))
        b = rng.normal(u, 1.0, NUM_CLASSES)
        B = rng.normal(0.0, beta)
        v = rng.normal(B, 1.0, DIM)
        x = v + rng.standard_normal((n_k, DIM)) * np.sqrt(cov_diag)
        xs.append(x)
        ys.append(np.argmax(x @ W + b, axis=1))  # softmax is monotone: argmax of the logits
        clients.append(np.arange(start, start + n_k, dtype=np.int64))
        start += n_k
    return (np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64), clients)
