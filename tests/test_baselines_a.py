"""Baselines SCAFFOLD, Ditto, APFL, FedPer, FedRep, FedBABU, LG-FedAvg: each one's defining
mechanism (each test fails if the mechanism is missing), then an end-to-end smoke run of each."""
import copy
import dataclasses
import math
import re
import sys

import pytest
import torch
from torch import nn

from conftest import read_jsonl, run_cli
from pflalign.algorithms import get_algorithm
from pflalign.algorithms.base import Turn, Upload, clone
from pflalign.algorithms.fedper import average_part
from pflalign.algorithms.scaffold import Scaffold
from pflalign.client import ClientModule
from pflalign.config import TrainConfig, load_config
from pflalign.data import build_federated_data
from pflalign.errors import ConfigError
from pflalign.federation import Federation
from pflalign.models import SplitModel
from pflalign.runtime.local import LocalRuntime

BASELINES = ["scaffold", "ditto", "apfl", "fedper", "fedrep", "fedbabu", "lg_fedavg"]


def federation(tiny, algorithm, *overrides):
    cfg = load_config(None, tiny + [f"algorithm={algorithm}", *overrides])
    data = build_federated_data(cfg.data, cfg.seed)
    return Federation(cfg, data, LocalRuntime(cfg, data))


def part(params, prefix):
    return {k: v for k, v in params.items() if k.startswith(prefix + ".")}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def dist(a, b):
    return math.sqrt(sum(float((a[k] - b[k]).pow(2).sum()) for k in a))


def record_uploads(algo):
    """Wrap the server's aggregate to keep a copy of every upload it sees."""
    seen, inner = [], algo.aggregate

    def aggregate(uploads, global_params, server_state):
        def tee():
            for u in uploads:
                seen.append(copy.deepcopy(u))
                yield u
        return inner(tee(), global_params, server_state)

    algo.aggregate = aggregate
    return seen


# ---- SCAFFOLD ------------------------------------------------------------------------------
def test_scaffold_corrects_gradients_and_updates_controls_by_option_ii():
    """Hand-driven steps: grad <- g + c - c_i; c_i+ = c_i - c + (x - y)/(K lr); uploads dy, dc."""
    torch.manual_seed(0)
    algo, lr, K = Scaffold(), 0.1, 3
    module = ClientModule(SplitModel(nn.Linear(3, 2), nn.Linear(2, 2)), algo, TrainConfig(lr=lr), 2)
    x = module.params()
    c = {k: torch.randn_like(v) for k, v in x.items()}
    ci = {k: torch.randn_like(v) for k, v in x.items()}
    ci_before = clone(ci)
    turn = Turn(0, 0, {"global": x, "c": c}, {"c": ci}, num_train=8)
    algo.client_begin(module, turn)
    for _ in range(K):
        batch = (torch.randn(4, 3), torch.randint(0, 2, (4,)))
        module.zero_grad()
        algo.loss(module, batch, turn).backward()
        raw = {k: p.grad.clone() for k, p in module.model.named_parameters()}
        algo.transform_gradients(module, turn)
        with torch.no_grad():
            for k, p in module.model.named_parameters():
                assert torch.allclose(p.grad, raw[k] + c[k] - ci[k])
                p -= lr * p.grad
        algo.after_step(module, turn)
    up = algo.client_end(module, turn)
    y = module.params()
    new = turn.state["c"]
    for k in x:
        assert torch.allclose(new[k], ci[k] - c[k] + (x[k] - y[k]) / (K * lr), atol=1e-6)
        assert torch.allclose(up["delta_c"][k], new[k] - ci[k])
        assert torch.allclose(up["update"][k], y[k] - x[k])
    assert same(ci, ci_before)  # the old control was not written in place


def test_scaffold_option_ii_in_a_real_turn(tiny):
    """Through Lightning: K is the number of optimizer steps of the turn, and the correction acts."""
    fed = federation(tiny, "scaffold")
    worker, x = fed.runtime.worker, fed.global_params
    torch.manual_seed(1)
    c = {k: 0.1 * torch.randn_like(v) for k, v in x.items()}
    ci = {k: 0.1 * torch.randn_like(v) for k, v in x.items()}
    up, state = worker.train(0, 0, {"global": x, "c": c}, {"c": ci})
    n, bs, lr = len(fed.data.clients[0].train_y), fed.cfg.train.batch_size, fed.cfg.train.lr
    K = math.ceil(n / bs) * fed.cfg.train.local_epochs
    for k in x:
        assert torch.allclose(state["c"][k], ci[k] - c[k] - up.data["update"][k] / (K * lr), atol=1e-5)
    plain, _ = worker.train(0, 0, {"global": x, "c": c}, {"c": c})  # c - c_i = 0: no correction
    assert not same(plain.data["update"], up.data["update"])


def test_scaffold_server_steps_x_and_keeps_c_the_mean_of_client_controls():
    algo = get_algorithm("scaffold")(get_algorithm("scaffold").Hparams(server_lr=0.5))
    x0 = {"body.w": torch.zeros(3), "head.w": torch.zeros(2)}
    weights = [1.0, 2.0, 3.0, 4.0]
    state = algo.init_server_state(x0, weights)
    assert algo.payload(x0, state)["c"]["body.w"].eq(0).all()
    torch.manual_seed(0)
    controls = {i: {k: torch.zeros_like(v) for k, v in x0.items()} for i in range(4)}  # c_i, tracked here
    x = x0
    for clients in ([0, 1, 2, 3], [1, 3], [0, 2], [2]):
        ups = []
        for i in clients:
            dy = {k: torch.randn_like(v) for k, v in x0.items()}
            dc = {k: torch.randn_like(v) for k, v in x0.items()}
            controls[i] = {k: controls[i][k] + dc[k] for k in dc}
            ups.append(Upload(i, weights[i], {"update": dy, "delta_c": dc}))
        c_before = state["c"]
        new_x, state = algo.aggregate(iter(ups), x, state)
        wsum = sum(u.weight for u in ups)
        for k in x:
            mean_dy = sum(u.weight * u.data["update"][k] for u in ups) / wsum
            assert torch.allclose(new_x[k], x[k] + 0.5 * mean_dy, atol=1e-6)
            # c = sum_i n_i c_i / sum_i n_i over all N clients, also under partial participation ...
            target = sum(weights[i] * controls[i][k] for i in range(4)) / sum(weights)
            assert torch.allclose(state["c"][k], target, atol=1e-6)
            # ... which is the paper's c += |S|/N mean(dc) (with the n-weights)
            mean_dc = sum(u.weight * u.data["delta_c"][k] for u in ups) / wsum
            assert torch.allclose(state["c"][k], c_before[k] + wsum / sum(weights) * mean_dc, atol=1e-6)
        x = new_x


# ---- Ditto ---------------------------------------------------------------------------------
def test_ditto_lambda_pulls_the_personal_model_toward_the_global_one(tiny):
    fed = federation(tiny, "ditto")
    worker, w = fed.runtime.worker, fed.global_params
    distances, updates = [], []
    for lam in (0.0, 1.0, 10.0):
        worker.algorithm.hp.lam = lam
        up, state = worker.train(0, 0, {"global": w}, {})
        distances.append(dist(state["v"], w))
        updates.append(up.data["update"])
        turn = Turn(0, 1, {"global": w}, state, num_train=1)
        assert worker.algorithm.personalized_params(None, turn) is state["v"]
    assert distances[0] > distances[1] > distances[2] > 0
    # the global model is trained as in FedAvg: its update does not depend on lambda or v
    assert same(updates[0], updates[1]) and same(updates[0], updates[2])
    # the personal model persists: a second turn starts from v, not from w
    _, first = worker.train(0, 0, {"global": w}, {})
    _, second = worker.train(0, 1, {"global": w}, {"v": first["v"]})
    _, fresh = worker.train(0, 1, {"global": w}, {})
    assert not same(second["v"], fresh["v"])


# ---- APFL ----------------------------------------------------------------------------------
def test_apfl_alpha_moves_stays_in_unit_interval_and_mixes(tiny):
    fed = federation(tiny, "apfl")
    worker, w, hp = fed.runtime.worker, fed.global_params, fed.runtime.worker.algorithm.hp
    up, state = worker.train(0, 0, {"global": w}, {})
    assert 0.0 <= state["alpha"] <= 1.0 and state["alpha"] != hp.alpha0
    assert not same(state["v"], w) and up.data["stats"]["apfl/alpha"] == state["alpha"]
    turn = Turn(0, 1, {"global": w}, state, num_train=1)
    mixed = worker.algorithm.personalized_params(None, turn)
    a = state["alpha"]
    assert all(torch.allclose(mixed[k], a * state["v"][k] + (1 - a) * w[k]) for k in w)
    # a huge alpha step is clipped to the interval's edge
    hp.alpha_lr = 1e4
    _, state = worker.train(0, 0, {"global": w}, {})
    assert state["alpha"] in (0.0, 1.0)
    # v learns through the mixture: grad_v = alpha * grad f(vbar), so alpha = 0 leaves v at w
    hp.alpha_lr, hp.adapt_alpha, hp.alpha0 = None, False, 0.0
    up, state = worker.train(0, 0, {"global": w}, {})
    assert state["alpha"] == 0.0 and same(state["v"], w)
    assert any(u.abs().sum() > 0 for u in up.data["update"].values())  # while w still trains


# ---- FedPer / LG-FedAvg / FedRep: which part is shared --------------------------------------
@pytest.mark.parametrize("algorithm,shared,local", [("fedper", "body", "head"), ("lg_fedavg", "head", "body"),
                                                    ("fedrep", "body", "head"), ("fedbabu", "body", "head")])
def test_server_averages_exactly_the_shared_part(algorithm, shared, local):
    algo = get_algorithm(algorithm)()
    g = {"body.w": torch.ones(2), "head.w": torch.full((2,), 7.0)}
    ups = [Upload(0, 1.0, {"update": {f"{shared}.w": torch.tensor([1.0, 0.0])}}),
           Upload(1, 3.0, {"update": {f"{shared}.w": torch.tensor([5.0, 4.0])}})]
    new, _ = algo.aggregate(iter(ups), g, {})
    assert torch.allclose(new[f"{shared}.w"], g[f"{shared}.w"] + torch.tensor([4.0, 3.0]))
    assert torch.equal(new[f"{local}.w"], g[f"{local}.w"])
    assert same(average_part(iter(ups), g), new)


@pytest.mark.parametrize("algorithm,shared,local", [("fedper", "body", "head"), ("lg_fedavg", "head", "body")])
def test_shared_part_is_averaged_and_local_part_stays_with_the_client(tiny, algorithm, shared, local):
    fed = federation(tiny, algorithm, "eval_every=100")
    g0 = clone(fed.global_params)
    uploads = record_uploads(fed.algorithm)
    fed.step(0)
    assert all(u.data["update"].keys() == part(g0, shared).keys() for u in uploads)
    assert same(part(fed.global_params, local), part(g0, local))  # never averaged
    assert not same(part(fed.global_params, shared), part(g0, shared))
    for cid, state in enumerate(fed.client_states):
        assert state.keys() == {local} and state[local].keys() == part(g0, local).keys()
        assert not same(state[local], part(g0, local))
        mine = fed.algorithm.personalized_params(None, Turn(cid, 1, {"global": fed.global_params}, state, 1))
        assert same(mine, {**fed.global_params, **state[local]})
    # the next turn starts from (global shared part, own local part)
    g1, mine = clone(fed.global_params), clone(fed.client_states[0][local])
    worker, starts = fed.runtime.worker, []
    begin = worker.algorithm.client_begin
    worker.algorithm.client_begin = lambda m, t: (begin(m, t), starts.append(m.params()))
    fed.step(1)
    assert same(starts[0], {**part(g1, shared), **mine})


def test_fedrep_fits_the_head_first_then_the_body_and_shares_only_the_body(tiny):
    fed = federation(tiny, "fedrep", "algo.head_epochs=2", "eval_every=100")
    g0 = clone(fed.global_params)
    algo, log = fed.runtime.worker.algorithm, []
    begin, end = algo.begin_phase, algo.end_phase
    algo.begin_phase = lambda m, t: (log.append((t.phase.name, "begin", m.params())), begin(m, t))
    algo.end_phase = lambda m, t: (end(m, t), log.append((t.phase.name, "end", m.params())))
    uploads = record_uploads(fed.algorithm)
    fed.step(0)
    assert [(name, when) for name, when, _ in log[:4]] == [("head", "begin"), ("head", "end"),
                                                           ("body", "begin"), ("body", "end")]
    (_, _, h0), (_, _, h1), (_, _, b0), (_, _, b1) = log[:4]
    assert same(part(h0, "body"), part(h1, "body")) and not same(part(h0, "head"), part(h1, "head"))
    assert same(part(b0, "head"), part(b1, "head")) and not same(part(b0, "body"), part(b1, "body"))
    assert same(part(h1, "head"), fed.client_states[0]["head"])  # the fitted head stays with the client
    assert all(u.data["update"].keys() == part(g0, "body").keys() for u in uploads)
    assert same(part(fed.global_params, "head"), part(g0, "head"))
    assert all(p.requires_grad for p in fed.runtime.worker.module.model.parameters())  # unfrozen after


def test_fedbabu_keeps_the_head_at_init_and_fine_tunes_at_evaluation(tiny):
    fed = federation(tiny, "fedbabu", "algo.finetune_epochs=2")
    g0 = clone(fed.global_params)
    algo, phases, evaluated = fed.runtime.worker.algorithm, [], []
    begin, personalized = algo.begin_phase, algo.personalized_params
    algo.begin_phase = lambda m, t: (phases.append(t.phase), begin(m, t))

    def capture(m, t):
        before = copy.deepcopy(t.state)
        params = personalized(m, t)
        evaluated.append((before, t.state, clone(params)))
        return params
    algo.personalized_params = capture
    fed.step(0)  # trains and evaluates
    train_phases = phases[:len(fed.data.clients)]
    assert all(p.name == "body" and p.params == "body" for p in train_phases)
    assert same(part(fed.global_params, "head"), part(g0, "head"))  # the head stays at its random init
    assert not same(part(fed.global_params, "body"), part(g0, "body"))
    finetunes = phases[len(fed.data.clients):]
    assert len(finetunes) == len(fed.data.clients)
    assert all(p.name == "finetune" and p.epochs == 2 for p in finetunes)
    for before, after, params in evaluated:
        assert before == after == {}  # the fine-tune leaves the persistent state alone
        assert not same(part(params, "head"), part(fed.global_params, "head"))
        assert not same(part(params, "body"), part(fed.global_params, "body"))
    # head-only fine-tuning keeps the global body; no fine-tuning evaluates the global model
    algo.hp.finetune = "head"
    evaluated.clear()
    fed.runtime.evaluate(0, {"global": fed.global_params}, [(0, {})])
    assert same(part(evaluated[0][2], "body"), part(fed.global_params, "body"))
    assert not same(part(evaluated[0][2], "head"), part(fed.global_params, "head"))
    algo.hp.finetune_epochs = 0
    evaluated.clear()
    fed.runtime.evaluate(0, {"global": fed.global_params}, [(0, {})])
    assert same(evaluated[0][2], fed.global_params)


# ---- every baseline ------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", BASELINES)
def test_hparams_are_documented_and_validated(tiny, algorithm):
    cls = get_algorithm(algorithm)
    for f in dataclasses.fields(cls.Hparams):
        assert f.metadata.get("help"), f.name
    assert re.search(r"\(.+, .+\b20(19|20|21|22)\)", sys.modules[cls.__module__].__doc__, re.S)  # cites the paper
    bad = {"scaffold": "algo.server_lr=0", "ditto": "algo.lam=-1", "apfl": "algo.alpha0=1.5",
           "fedrep": "algo.head_epochs=-1", "fedbabu": "algo.finetune=everything",
           "fedper": "algo.anything=1", "lg_fedavg": "algo.anything=1"}[algorithm]
    with pytest.raises(ConfigError):
        load_config(None, tiny + [f"algorithm={algorithm}", bad])


@pytest.mark.parametrize("algorithm", BASELINES)
def test_runs_end_to_end(tiny, algorithm):
    rows = read_jsonl(run_cli(tiny + [f"algorithm={algorithm}"]) / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert math.isfinite(r["acc"]) and 0 <= r["acc"] <= 1 and math.isfinite(r["loss"])
        assert ("global_acc" in r) == get_algorithm(algorithm).evaluates_global
        if "global_acc" in r:
            assert math.isfinite(r["global_acc"])
