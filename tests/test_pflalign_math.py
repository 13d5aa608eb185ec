"""pFLAlign's formulas on small hand-built tensors (ALGORITHM.md, mechanisms 1 and 2)."""
import dataclasses

import pytest
import torch
from torch import nn

from pflalign.algorithms.base import Turn, Upload
from pflalign.algorithms.pflalign import PFLAlign, PFLAlignHparams, gate_step, preconditioner
from pflalign.client import ClientModule
from pflalign.config import TrainConfig
from pflalign.models import SplitModel


def test_snr_preconditioner_is_normalized_wiener_shrinkage():
    mh, vh = torch.tensor([2.0, 1.0]), torch.tensor([4.0, 2.0])  # var = [0, 1]
    # r = [4/4, 1/(1+1)] = [1, .5]; P = r / mean(r) = [4/3, 2/3]
    assert torch.allclose(preconditioner("snr", mh, vh, 1.0, 4.0, 1.0), torch.tensor([4 / 3, 2 / 3]))
    # kappa weights the noise: r = [1, 1/(1+3)] -> P = [1.6, .4]
    assert torch.allclose(preconditioner("snr", mh, vh, 3.0, 4.0, 1.0), torch.tensor([1.6, 0.4]))
    assert torch.allclose(preconditioner("snr", mh, vh, 1.0, 1.2, 1.0), torch.tensor([1.2, 2 / 3]))  # cap


def test_other_preconditioner_forms():
    mh, vh = torch.tensor([2.0, 1.0]), torch.tensor([4.0, 2.0])
    # var = [0, 1], mean .5: P = 1 / (var/.5 + 1) = [1, 1/3]
    assert torch.allclose(preconditioner("var", mh, vh, 1.0, 4.0, 1.0), torch.tensor([1.0, 1 / 3]))
    # vh/mean = [4/3, 2/3]: P = 2 / (vh/mean + 2) = [.6, .75]
    assert torch.allclose(preconditioner("fisher", mh, vh, 1.0, 4.0, 2.0), torch.tensor([0.6, 0.75]))
    r = 1 / (vh.sqrt() + 1e-8)
    assert torch.allclose(preconditioner("rms", mh, vh, 1.0, 4.0, 1.0), r / r.mean())
    assert torch.equal(preconditioner("none", mh, vh, 1.0, 4.0, 1.0), torch.ones(2))


def test_gate_step_alignment_and_kl_shrinkage():
    gamma, gbar, d = torch.tensor([0.5, 0.5]), torch.tensor([-1.0, 1.0]), torch.tensor([1.0, 1.0])
    # score = -(gbar*d)/(rms*rms) = [1, -1]; no KL: 0.5 +- 0.1
    assert torch.allclose(gate_step(gamma, gbar, d, eta_g=0.1, lam_g=0.0, score="clip"), torch.tensor([0.6, 0.4]))
    # kl = lam * gamma * d^2 / mean(d^2) = .5: 0.5 + 0.1 * ([1, -1] - .5)
    assert torch.allclose(gate_step(gamma, gbar, d, eta_g=0.1, lam_g=1.0, score="clip"), torch.tensor([0.55, 0.35]))
    # per-coordinate scores beyond +-1 are clipped; sign keeps only the direction
    big = gate_step(gamma, torch.tensor([-3.0, 0.1]), torch.tensor([1.0, 1.0]), eta_g=1.0, lam_g=0.0, score="clip")
    assert big[0] == 1.0
    sign = gate_step(gamma, torch.tensor([-3.0, 0.1]), d, eta_g=0.1, lam_g=0.0, score="sign")
    assert torch.allclose(sign, torch.tensor([0.6, 0.4]))
    # gates stay in [0, 1]
    assert gate_step(torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([1.0]), eta_g=5, lam_g=0, score="clip") == 0


def _module(algorithm):
    torch.manual_seed(0)
    model = SplitModel(nn.Linear(3, 2), nn.Linear(2, 2))
    return ClientModule(model, algorithm, TrainConfig(), num_classes=2)


def _turn(state, w):
    return Turn(client_id=0, round=1, payload={"global": w}, state=state, num_train=10)


def _params(module, value):
    return {k: torch.full_like(p, value) for k, p in module.model.named_parameters()}


@pytest.mark.parametrize("scope", ["all", "head"])
def test_alignment_correction_start(scope):
    algo = PFLAlign(PFLAlignHparams(gate_scope=scope, gamma0=0.25))
    module = _module(algo)
    w, theta = _params(module, 1.0), _params(module, 3.0)
    turn = _turn({"theta": theta}, w)
    algo.client_begin(module, turn)
    for k, p in module.model.named_parameters():
        expected = 1.0 + 0.25 * 2.0 if (scope == "all" or k.startswith("head.")) else 1.0
        assert torch.allclose(p, torch.full_like(p, expected)), k


def test_m2_off_starts_from_global():
    algo = PFLAlign(PFLAlignHparams(m2=False))
    module = _module(algo)
    w = _params(module, 1.0)
    algo.client_begin(module, _turn({"theta": _params(module, 3.0)}, w))
    assert all(torch.equal(p, w[k]) for k, p in module.model.named_parameters())


def _one_step_grad(hp, g_value):
    algo = PFLAlign(hp)
    module = _module(algo)
    w = _params(module, 0.0)
    turn = _turn({}, w)
    algo.client_begin(module, turn)
    for p in module.model.parameters():
        p.grad = g_value.expand_as(p).clone() if g_value.numel() == 1 else g_value[: p.numel()].view_as(p).clone()
    algo.transform_gradients(module, turn)
    return module, turn


def test_mechanism1_first_step():
    g = torch.tensor([1.0, -2.0, 0.0, 3.0, 1.0, 1.0])
    module, turn = _one_step_grad(PFLAlignHparams(), g)
    # s=1: mh = g and vh = g^2 exactly, so var = 0 and r = 1 where g != 0, 0 where g == 0
    weight = module.model.body.weight.grad.reshape(-1)
    r = (g != 0).float()
    assert torch.allclose(weight, (r / r.mean()).clamp_max(4.0) * g)
    assert turn.state["s"] == 1 and set(turn.state["m"]) == {k for k, _ in module.model.named_parameters()}


def test_mechanism1_off_leaves_plain_gradient():
    g = torch.tensor([1.0, -2.0, 0.0, 3.0, 1.0, 1.0])
    module, turn = _one_step_grad(PFLAlignHparams(m1=False), g)
    assert torch.equal(module.model.body.weight.grad.reshape(-1), g)
    assert "m" not in turn.state


def test_proximal_term_pulls_toward_global():
    hp = PFLAlignHparams(m1=False, mu=0.5)
    algo = PFLAlign(hp)
    module = _module(algo)
    w = _params(module, 0.0)
    turn = _turn({}, w)
    algo.client_begin(module, turn)
    with torch.no_grad():
        for p in module.model.parameters():
            p.fill_(2.0)
            p.grad = torch.zeros_like(p)
    algo.transform_gradients(module, turn)
    assert torch.allclose(module.model.head.bias.grad, torch.full((2,), 1.0))  # mu * (theta - w)


def test_server_update_and_model_averaging():
    w = {"x": torch.tensor([1.0, 1.0])}
    ups = [Upload(0, 1.0, {"update": {"x": torch.tensor([1.0, 0.0])}, "model": {"x": torch.tensor([2.0, 1.0])}}),
           Upload(1, 3.0, {"update": {"x": torch.tensor([0.0, 4.0])}, "model": {"x": torch.tensor([1.0, 5.0])}})]
    new, _ = PFLAlign(PFLAlignHparams()).aggregate(ups, w, {})
    assert torch.allclose(new["x"], torch.tensor([1.25, 4.0]))  # w + (1*u0 + 3*u1)/4
    new, _ = PFLAlign(PFLAlignHparams(send="model")).aggregate(ups, w, {})
    assert torch.allclose(new["x"], torch.tensor([1.25, 4.0]))  # (1*t0 + 3*t1)/4


def test_gates_updated_after_local_training():
    hp = PFLAlignHparams(gamma0=0.5, eta_g=0.1, lam_g=0.0)
    algo = PFLAlign(hp)
    module = _module(algo)
    w = _params(module, 0.0)
    theta = _params(module, 1.0)  # d = +1 everywhere
    turn = _turn({"theta": theta}, w)
    algo.client_begin(module, turn)
    for p in module.model.parameters():  # a descent direction that agrees with d: gbar = -1
        p.grad = torch.full_like(p, -1.0)
    algo.transform_gradients(module, turn)
    out = algo.client_end(module, turn)
    for g in turn.state["gamma"].values():
        assert torch.allclose(g, torch.full_like(g, 0.6))
    assert out["stats"]["align/cos_dir"] == pytest.approx(1.0)
    assert torch.equal(turn.state["theta"]["head.bias"], module.model.head.bias.detach())


def test_hparams_defaults_match_algorithm_md():
    hp = dataclasses.asdict(PFLAlignHparams())
    assert {k: hp[k] for k in ("m1", "m2", "precond", "direction", "kappa", "pmax", "b1", "b2",
                             "rho_p", "gate_scope", "gamma0", "eta_g", "lam_g", "score", "mu", "send")} == {
        "m1": True, "m2": True, "precond": "snr", "direction": "momentum", "kappa": 1.0, "pmax": 4.0,
        "b1": 0.9, "b2": 0.99, "rho_p": 1.0, "gate_scope": "all", "gamma0": 0.2, "eta_g": 0.1, "lam_g": 4.0,
        "score": "clip", "mu": 0.0, "send": "update"}
