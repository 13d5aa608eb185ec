"""pFLAlign's two PAC-Bayes variants (options beside the specified default): one gate per tensor,
and the noise weight kappa set per client from the bound's 1/sqrt(n_i) KL weight."""
import json
import math

import pytest
import torch
from torch import nn

from conftest import read_jsonl, run_cli
from pflalign.algorithms.base import Turn
from pflalign.algorithms.pflalign import PFLAlign, PFLAlignHparams, gate_step, preconditioner, tensor_gate_step
from pflalign.cli import main
from pflalign.client import ClientModule
from pflalign.config import TrainConfig
from pflalign.models import SplitModel


def _module(algorithm):
    torch.manual_seed(0)
    return ClientModule(SplitModel(nn.Linear(3, 2), nn.Linear(2, 2)), algorithm, TrainConfig(), num_classes=2)


def _params(module, value):
    return {k: torch.full_like(p, value) for k, p in module.model.named_parameters()}


def test_tensor_gate_step_is_the_coordinate_step_averaged_over_the_tensor():
    gbar, d = torch.tensor([-1.0, -0.9, 1.1, -1.0]), torch.tensor([1.0, 1.1, 0.9, 1.0])
    gamma = torch.tensor(0.4)
    # no coordinate score reaches +-1 here, so the coordinate step is linear and its mean is the tensor step
    per_coord = gate_step(torch.full((4,), 0.4), gbar, d, eta_g=0.1, lam_g=0.5, score="clip")
    cos = float(torch.dot(-gbar, d) / (gbar.norm() * d.norm()))
    one = tensor_gate_step(gamma, gbar, d, eta_g=0.1, lam_g=0.5, score="clip")
    assert one.shape == () and one.item() == pytest.approx(0.4 + 0.1 * (cos - 0.5 * 0.4))
    assert one.item() == pytest.approx(per_coord.mean().item())
    sign = tensor_gate_step(gamma, gbar, d, eta_g=0.1, lam_g=0.0, score="sign")
    assert sign.item() == pytest.approx(0.4 + 0.1 * math.copysign(1, cos))
    assert tensor_gate_step(torch.tensor(0.0), -gbar, d, eta_g=5, lam_g=0, score="clip").item() == 0  # clipped


def test_tensor_gates_are_one_scalar_per_tensor_in_scope():
    algo = PFLAlign(PFLAlignHparams(gate_shape="tensor", gate_scope="head", gamma0=0.5, eta_g=0.1, lam_g=0.0))
    module = _module(algo)
    w, theta = _params(module, 0.0), _params(module, 1.0)
    turn = Turn(client_id=0, round=1, payload={"global": w}, state={"theta": theta}, num_train=10)
    algo.client_begin(module, turn)
    for k, p in module.model.named_parameters():  # start: w + gamma0 * d on the head, w on the body
        assert torch.equal(p.detach(), torch.full_like(p, 0.5 if k.startswith("head.") else 0.0)), k
        p.grad = torch.full_like(p, -1.0)  # a descent direction along d: cos(-gbar, d) = 1
    algo.transform_gradients(module, turn)
    out = algo.client_end(module, turn)
    gates = turn.state["gamma"]
    assert set(gates) == {"head.weight", "head.bias"} and all(g.shape == () for g in gates.values())
    assert all(g.item() == pytest.approx(0.6) for g in gates.values())
    assert out["stats"]["gamma"] == pytest.approx(0.6)


@pytest.mark.parametrize("n, factor", [(40, 1.0), (10, 2.0), (160, 0.5)])
def test_client_kappa_follows_the_bound_weight(n, factor):
    """kappa_i = kappa * sqrt(mean n / n_i), and mechanism 1 preconditions with it."""
    algo = PFLAlign(PFLAlignHparams(kappa_mode="client", kappa=1.5))
    server = algo.init_server_state({}, [10.0, 30.0, 80.0])
    assert server == {"mean_train": 40.0}
    module = _module(algo)
    w = _params(module, 0.0)
    turn = Turn(client_id=0, round=1, payload=algo.payload(w, server), state={}, num_train=n)
    assert algo._kappa(turn) == 1.5 * factor
    algo.client_begin(module, turn)
    grads = []
    for step in range(2):  # two steps, so the variance (and kappa's weight on it) is not zero
        for i, p in enumerate(module.model.parameters()):
            p.grad = torch.linspace(-1, 1 + step, p.numel()).view_as(p) * (i + 1)
        grads.append({k: p.grad.clone() for k, p in module.model.named_parameters()})
        algo.transform_gradients(module, turn)
    m, v = turn.state["m"]["body.weight"] / (1 - 0.9 ** 2), turn.state["v"]["body.weight"] / (1 - 0.99 ** 2)
    expected = preconditioner("snr", m, v, 1.5 * factor, 4.0, 1.0) * m
    assert torch.allclose(module.model.body.weight.grad, expected)


def test_global_kappa_mode_sends_and_keeps_nothing_new():
    algo = PFLAlign(PFLAlignHparams())
    assert algo.init_server_state({}, [1.0, 3.0]) == {}
    assert set(algo.payload({"x": torch.zeros(1)}, {})) == {"global"}


@pytest.mark.parametrize("variant", ["algo.gate_shape=tensor", "algo.kappa_mode=client"])
def test_variant_runs_change_results_and_resume_exactly(tiny, variant):
    """Each variant changes the numbers on unequal clients, and a run resumed from its checkpoint
    (scalar gates, the server's mean size) ends where the uninterrupted run ends."""
    base = [*tiny, "algorithm=pflalign", "rounds=4", "checkpoint_every=1"]
    default = read_jsonl(run_cli([*base, "name=default"]) / "metrics.jsonl")
    full = run_cli([*base, variant, "name=full"])
    assert read_jsonl(full / "metrics.jsonl")[-1]["acc"] != default[-1]["acc"]
    part = run_cli([*base, variant, "rounds=2", "name=part"])
    assert main(["run", "--resume", str(part), "rounds=4", "progress=false", "wandb.mode=disabled"]) == 0
    assert (part / "metrics.jsonl").read_text() == (full / "metrics.jsonl").read_text()
    assert json.loads((full / "results.json").read_text())["config"]["algo"][variant.split(".")[1].split("=")[0]] \
        == variant.split("=")[1]
