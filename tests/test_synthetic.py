"""FedProx's Synthetic(alpha, beta) generator against the reference's definition: what a
client's inputs and labels look like, and the client sizes of the preset fedprox_synthetic."""
import numpy as np
from sklearn.linear_model import LogisticRegression

from pflalign.config import load_config
from pflalign.data import synthetic


def generate(num_clients=30, num_samples=10800, alpha=1.0, beta=1.0, sigma=2.0, min_samples=50, seed=0):
    return synthetic.generate(num_clients, num_samples, alpha, beta, sigma, min_samples,
                              np.random.default_rng(seed))


def test_inputs_have_the_reference_covariance_around_a_client_mean():
    x, _, clients = generate(num_clients=3, num_samples=30000, min_samples=9000)
    for idx in clients:
        var = x[idx].var(0)  # Sigma = diag(j^-1.2), j = 1..60, around the client's own mean v_k
        assert np.allclose(var, np.arange(1, 61) ** -1.2, rtol=0.1)
    means = np.stack([x[idx].mean(0) for idx in clients])
    assert means.std(0).mean() > 0.5  # v_k ~ N(B_k, 1): clients' inputs differ


def test_each_clients_labels_are_a_linear_function_of_its_inputs():
    x, y, clients = generate()
    mixed = max(clients, key=lambda idx: len(np.unique(y[idx])))  # Synthetic(1,1): most clients have one label
    assert len(np.unique(y[mixed])) >= 3
    fit = LogisticRegression(C=1e4, max_iter=5000).fit(x[mixed], y[mixed])
    assert fit.score(x[mixed], y[mixed]) > 0.97  # y = argmax(W_k^T x + b_k): separable per client
    assert len({tuple(np.unique(y[idx])) for idx in clients}) > 1  # each client its own W_k, b_k


def test_preset_client_sizes_are_the_references_shape_with_a_set_total():
    d = load_config("fedprox_synthetic").data
    _, _, clients = generate(d.num_clients, d.num_samples, d.synthetic_alpha, d.synthetic_beta,
                             d.quantity_sigma, d.min_samples)
    sizes = np.array([len(c) for c in clients])
    assert len(sizes) == 30 and sizes.sum() == 10800 and sizes.min() >= 50
    assert sizes.max() > 10 * np.median(sizes)  # heavy-tailed: lognormal sigma 2 above the floor of 50
