"""Personalized-FL baselines (FedALA, pFedMe, Per-FedAvg, FedRoD, FedAMP, FedCAC, FedDBE, FedAS):
each one's defining mechanism on small hand-built tensors or a 6-client digits federation, and
an end-to-end smoke run through the CLI."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import read_jsonl, run_cli
from pflalign.algorithms.base import Turn, Upload, flatten
from pflalign.algorithms.fedala import FedALA, FedALAHparams
from pflalign.algorithms.fedamp import FedAMP, FedAMPHparams, attention_weights
from pflalign.algorithms.fedas import FedAS, FedASHparams
from pflalign.algorithms.fedcac import FedCAC, FedCACHparams, critical_mask, customized, overlaps
from pflalign.algorithms.feddbe import FedDBE, FedDBEHparams, fold_bias
from pflalign.algorithms.fedrod import FedRoD, FedRoDHparams, balanced_softmax_loss
from pflalign.algorithms.perfedavg import PerFedAvg, PerFedAvgHparams
from pflalign.algorithms.pfedme import PFedMe, PFedMeHparams
from pflalign.client import ClientModule
from pflalign.config import TrainConfig, load_config
from pflalign.data import ClientData, build_federated_data
from pflalign.federation import Federation
from pflalign.models import SplitModel
from pflalign.runtime.local import LocalRuntime

NAMES = ["fedala", "pfedme", "perfedavg", "fedrod", "fedamp", "fedcac", "feddbe", "fedas"]


# ---- helpers ---------------------------------------------------------------------------
def federation(tiny, *overrides) -> Federation:
    cfg = load_config(None, [*tiny, *overrides])
    data = build_federated_data(cfg.data, cfg.seed)
    return Federation(cfg, data, LocalRuntime(cfg, data))


def module_for(algorithm, lr=0.1):
    torch.manual_seed(0)
    model = SplitModel(nn.Sequential(nn.Linear(3, 4), nn.ReLU()), nn.Linear(4, 3))
    return ClientModule(model, algorithm, TrainConfig(lr=lr, batch_size=4), num_classes=3)


def toy_data(n=12, seed=1) -> ClientData:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, generator=g), torch.randint(0, 3, (n,), generator=g)
    return ClientData(x, y, x[:0], y[:0], x, y)


def turn_for(module, state=None, payload=None, data=None, rnd=1) -> Turn:
    payload = payload if payload is not None else {"global": module.params()}
    data = data if data is not None else toy_data()
    turn = Turn(client_id=0, round=rnd, payload=payload, state=state if state is not None else {},
                num_train=len(data.train_y), data=data)
    module.turn = turn
    return turn


def full(module, value):
    return {k: torch.full_like(p, value) for k, p in module.model.named_parameters()}


# ---- FedALA ----------------------------------------------------------------------------
def test_fedala_learns_weights_in_unit_interval_on_top_layers(tiny):
    fed = federation(tiny, "algorithm=fedala")
    fed.step(0)
    assert all("W" not in s for s in fed.client_states)  # no local model yet: ALA is skipped
    fed.step(1)
    worker, algo = fed.runtime.worker, fed.runtime.worker.algorithm
    for state in fed.client_states:
        W = state["W"]
        assert list(W) == ["head.weight", "head.bias"]  # layer_idx=2: the top two tensors
        flat = torch.cat([w.reshape(-1) for w in W.values()])
        assert flat.min() >= 0 and flat.max() <= 1
        assert (flat < 1).any()  # learned: moved away from the all-ones initialization
    # ALA start: lower layers global, top layers local + (global - local) * W
    payload, state = algo.payload(fed.global_params, fed.server_state), fed.client_states[0]
    before = copy.deepcopy(state)
    turn = worker._turn(0, 2, payload, state, purpose=0)
    start, W, _ = algo.ala(worker.module, turn)
    g, local = payload["global"], state["theta"]
    for k in g:
        expected = local[k] + (g[k] - local[k]) * W[k] if k.startswith("head.") else g[k]
        assert torch.allclose(start[k], expected), k
    # evaluation leaves the client's weights, model and slice as they were
    worker.evaluate(0, 2, payload, state)
    assert all(torch.equal(before["W"][k], state["W"][k]) for k in W)
    assert all(torch.equal(before["theta"][k], state["theta"][k]) for k in local)
    assert before["ala_first"] == state["ala_first"]


def test_fedala_weight_learning_keeps_the_last_partial_batch():
    """PFLlib's ALA loader has drop_last=False: a 10-sample slice in batches of 4 is 4 + 4 + 2."""
    algo = FedALA(FedALAHparams(rand_percent=85))  # int(0.85 * 12) = 10 samples
    module = module_for(algo)
    data = toy_data(n=12)
    w = module.params()
    state = {"theta": {k: v + 0.1 for k, v in w.items()}, "ala_first": 2, "ala_started": True}
    turn = turn_for(module, state=state, payload={"global": w}, data=data)
    seen = []
    hook = module.model.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].clone()))
    try:
        _, _, losses = algo.ala(module, turn)
    finally:
        hook.remove()
    assert [len(x) for x in seen] == [4, 4, 2] and len(losses) == 1  # one epoch once ALA has started
    assert torch.equal(torch.cat(seen), data.train_x[2:12])  # the contiguous slice from ala_first


def test_fedala_evaluates_the_model_the_client_trains_from_next(tiny, monkeypatch):
    calls = []  # (client, round, start model) of every ALA
    ala = FedALA.ala

    def counted(self, module, turn):
        out = ala(self, module, turn)
        calls.append((turn.client_id, turn.round, out[0]))
        return out

    monkeypatch.setattr(FedALA, "ala", counted)
    fed = federation(tiny, "algorithm=fedala", "client_fraction=0.5")
    fed.step(0)
    trained = set(fed.sample(0))
    assert len(calls) == len(trained)  # evaluation only: clients without a local model have no ALA
    evaluated = {c: start for c, _, start in calls}
    for rnd in (1, 2):
        calls.clear()
        fed.step(rnd)
        returning = [c for c in fed.sample(rnd) if c in trained]  # sampled clients with a local model
        training, evaluation = calls[:len(returning)], calls[len(returning):]
        # training: one ALA per returning client, giving exactly the model it was evaluated by
        assert [c for c, r, _ in training] == returning and all(r == rnd for _, r, _ in training)
        for c, _, start in training:
            assert all(torch.equal(start[k], evaluated[c][k]) for k in start)
        trained |= set(fed.sample(rnd))
        # evaluation: one ALA per client with a local model, on the new global model
        assert sorted(c for c, _, _ in evaluation) == sorted(trained)
        evaluated = {c: start for c, _, start in evaluation}


def test_fedala_training_does_not_depend_on_evaluation(tiny):
    """Evaluation reads the client state and draws nothing from it: the same global model after
    three rounds whether every round is evaluated or only the last."""
    runs = [federation(tiny, "algorithm=fedala", "client_fraction=0.5", f"eval_every={k}") for k in (1, 3)]
    for fed in runs:
        for rnd in range(3):
            fed.step(rnd)
    assert all(torch.equal(runs[0].global_params[k], runs[1].global_params[k]) for k in runs[0].global_params)


# ---- pFedMe ----------------------------------------------------------------------------
def test_pfedme_local_model_moves_toward_theta_by_eta_lambda():
    algo = PFedMe(PFedMeHparams(lam=15.0, eta=0.01, K=1))
    module = module_for(algo)
    turn = turn_for(module, payload={"global": full(module, 1.0)})
    algo.client_begin(module, turn)
    module.load_params(full(module, 3.0))  # theta after the inner steps
    for p in module.model.parameters():
        p.grad = torch.zeros_like(p)
    algo.transform_gradients(module, turn)  # proximal gradient lambda * (theta - w)
    assert all(torch.allclose(p.grad, torch.full_like(p, 15.0 * 2.0)) for p in module.model.parameters())
    algo.after_step(module, turn)
    # w <- w - eta * lambda * (w - theta) = 1 - 0.15 * (1 - 3) = 1.3
    assert all(torch.allclose(w, torch.full_like(w, 1.3)) for w in turn.scratch["w"].values())
    up = algo.client_end(module, turn)["update"]
    assert all(torch.allclose(u, torch.full_like(u, 0.3)) for u in up.values())
    assert all(torch.equal(turn.state["theta"][k], v) for k, v in full(module, 3.0).items())  # evaluated


def test_pfedme_inner_steps_and_server_beta_mixing():
    data = toy_data()
    batch = (data.train_x[:4], data.train_y[:4])
    moved = []
    for K in (1, 3):
        algo = PFedMe(PFedMeHparams(K=K))
        module = module_for(algo)
        turn = turn_for(module, data=data)
        algo.client_begin(module, turn)
        w0 = module.params()
        algo.loss(module, batch, turn)
        moved.append(max(float((p.detach() - w0[k]).abs().max()) for k, p in module.model.named_parameters()))
    assert moved[0] == 0 and moved[1] > 0  # K - 1 inner steps happen in the loss hook
    algo = PFedMe(PFedMeHparams(beta=2.0))
    w = {"a": torch.zeros(2)}
    ups = [Upload(0, 1.0, {"update": {"a": torch.ones(2)}}), Upload(1, 3.0, {"update": {"a": torch.full((2,), 3.0)}})]
    new, _ = algo.aggregate(iter(ups), w, {})
    assert torch.allclose(new["a"], torch.full((2,), 2.0 * 2.5))  # w + beta * mean(w_i - w)


# ---- Per-FedAvg ------------------------------------------------------------------------
def test_perfedavg_first_order_maml_step():
    algo = PerFedAvg(PerFedAvgHparams(alpha=0.3))
    module, data = module_for(algo), toy_data()
    turn = turn_for(module, data=data)
    algo.client_begin(module, turn)
    w = {k: v.clone() for k, v in module.params().items()}
    x, y = data.train_x[:4], data.train_y[:4]
    gen_state = turn.scratch["gen"].get_state()  # the turn's own stream for D'
    loss = algo.loss(module, (x, y), turn)
    loss.backward()
    algo.transform_gradients(module, turn)
    got = {k: p.grad.clone() for k, p in module.model.named_parameters()}
    assert all(torch.equal(p, w[k]) for k, p in module.model.named_parameters())  # the step starts from w
    # expected: grad of f(w - alpha * grad f(w; D); D') with D' the turn stream's random batch
    ref = module_for(algo)
    ref.load_params(w)
    g = torch.autograd.grad(F.cross_entropy(ref(x), y), list(ref.model.parameters()))
    ref.load_params({k: w[k] - 0.3 * gi for k, gi in zip(w, g)})
    idx = torch.randperm(len(data.train_y), generator=torch.Generator().set_state(gen_state))[:4]
    g2 = torch.autograd.grad(F.cross_entropy(ref(data.train_x[idx]), data.train_y[idx]), list(ref.model.parameters()))
    assert all(torch.allclose(got[k], gi, atol=1e-6) for k, gi in zip(w, g2))


def test_perfedavg_evaluates_global_after_one_step_without_touching_state(tiny):
    fed = federation(tiny, "algorithm=perfedavg", "algo.alpha=0.1")
    fed.step(0)
    worker, algo = fed.runtime.worker, fed.runtime.worker.algorithm
    payload = algo.payload(fed.global_params, fed.server_state)
    saved = {k: v.clone() for k, v in payload["global"].items()}
    state = fed.client_states[0]
    before = copy.deepcopy(state)
    turn = worker._turn(0, 1, payload, state, purpose=2)
    pers = algo.personalized_params(worker.module, turn)
    assert any(not torch.equal(pers[k], saved[k]) for k in saved)  # adapted, not the global model
    # exactly one step of size alpha on one random train batch of the turn's seeded stream
    module = worker.module
    module.load_params(saved)
    worker._turn(0, 1, payload, state, purpose=2)  # reseeds the turn's stream
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))
    idx = torch.randperm(len(turn.data.train_y), generator=gen)[:module.batch_size]
    x, y = turn.data.train_x[idx], turn.data.train_y[idx]
    g = torch.autograd.grad(F.cross_entropy(module(x), y), list(module.model.parameters()))
    assert all(torch.allclose(pers[k], saved[k] - 0.1 * gi, atol=1e-6) for k, gi in zip(saved, g))
    out = worker.evaluate(0, 1, payload, state)
    assert out["loss"] != out["global_loss"]
    assert all(torch.equal(payload["global"][k], saved[k]) for k in saved)
    assert state.keys() == before.keys()


def test_perfedavg_turn_does_not_depend_on_the_workers_history(tiny):
    """A turn depends only on its inputs (D' from the turn's own stream): a fresh worker and a used
    one train alike, which is what makes the ray runtime reproduce the local one."""
    from pflalign.client import ClientWorker

    cfg = load_config(None, [*tiny, "algorithm=perfedavg"])
    data = build_federated_data(cfg.data, cfg.seed)
    payload = {"global": Federation(cfg, data, LocalRuntime(cfg, data)).global_params}
    fresh, used = ClientWorker(cfg, data), ClientWorker(cfg, data)
    used.train(0, 0, payload, {})
    a, b = fresh.train(1, 0, payload, {})[0], used.train(1, 0, payload, {})[0]
    assert all(torch.equal(a.data["update"][k], b.data["update"][k]) for k in a.data["update"])

# ---- FedRoD ----------------------------------------------------------------------------
def test_fedrod_balanced_softmax_adds_log_class_counts():
    logits, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 2, 1])
    counts = torch.tensor([1, 3, 1])
    assert torch.allclose(balanced_softmax_loss(logits, y, counts),
                          F.cross_entropy(logits + torch.log(torch.tensor([1.0, 3.0, 1.0])), y))
    assert not torch.allclose(balanced_softmax_loss(logits, y, counts), F.cross_entropy(logits, y))


def test_fedrod_personalized_logits_are_generic_plus_personal_head():
    algo = FedRoD(FedRoDHparams())
    module, data = module_for(algo), toy_data()
    w = module.params()
    torch.manual_seed(3)
    head = {"head.weight": torch.randn(3, 4), "head.bias": torch.randn(3)}
    turn = turn_for(module, state={"head": head}, payload={"global": w}, data=data)
    module.load_params(w)
    x = data.test_x
    rep = module.model.body(x)
    expected = module.model.head(rep) + F.linear(rep, head["head.weight"], head["head.bias"])
    module.load_params(algo.personalized_params(module, turn))
    assert torch.allclose(module(x), expected, atol=1e-5)
    # training: the body and the generic head see only the balanced-softmax loss, the personal
    # head only the plain cross-entropy of generic (detached) + personal logits
    algo.client_begin(module, turn)
    xb, yb = data.train_x[:6], data.train_y[:6]
    algo.loss(module, (xb, yb), turn).backward()
    counts = torch.bincount(data.train_y, minlength=3)
    ref = module_for(algo)
    ref.load_params(w)
    bsm = balanced_softmax_loss(ref(xb), yb, counts)
    g_ref = torch.autograd.grad(bsm, list(ref.model.parameters()))
    assert all(torch.allclose(p.grad, g, atol=1e-6) for p, g in zip(module.model.parameters(), g_ref))
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in turn.scratch["head"].values())
    old = {k: v.detach().clone() for k, v in turn.scratch["head"].items()}
    grads = {k: v.grad.clone() for k, v in turn.scratch["head"].items()}
    algo.transform_gradients(module, turn)  # the personal head's own SGD step at train.lr
    assert all(torch.allclose(turn.scratch["head"][k], old[k] - 0.1 * grads[k]) for k in old)


# ---- FedAMP ----------------------------------------------------------------------------
def test_fedamp_cloud_models_are_convex_combinations_favoring_similar_clients():
    models = torch.tensor([[1.0, 0.0, 0.2], [0.9, 0.1, 0.2], [-1.0, 0.5, -0.3]], dtype=torch.float64)
    for attention, kw in (("cosine", {}), ("distance", {"sigma": 10.0, "alphaK": 1.0})):
        hp = FedAMPHparams(attention=attention, **kw)
        xi = attention_weights(models, hp.attention, hp.sigma, hp.alphaK, hp.self_weight)
        assert torch.allclose(xi.sum(1), torch.ones(3, dtype=torch.float64))
        assert (xi >= 0).all()
        assert xi[0, 1] > xi[0, 2] and xi[1, 0] > xi[1, 2]  # similar clients weigh more
        if attention == "cosine":
            assert torch.allclose(xi.diagonal(), torch.full((3,), hp.self_weight, dtype=torch.float64))
    algo = FedAMP(FedAMPHparams())
    like = {"a": torch.zeros(3)}
    ups = [Upload(i, 1.0, {"model": {"a": models[i].float()}}) for i in range(3)]
    _, state = algo.aggregate(iter(ups), like, algo.init_server_state(like, [1.0] * 3))
    xi = attention_weights(models, "cosine", 1.0, 1.0, 0.5)
    for i in range(3):
        assert torch.allclose(state["cloud"][i]["a"], (xi[i] @ models).float(), atol=1e-6)
    assert sorted(algo.payload(like, state)["cloud"]) == [0, 1, 2]  # per-client messages by id


def test_fedamp_client_is_pulled_toward_its_cloud_model():
    algo = FedAMP(FedAMPHparams(lam=2.0, alphaK=0.5))
    module, data = module_for(algo), toy_data()
    cloud = full(module, 0.5)
    turn = turn_for(module, state={"theta": full(module, 1.0)},
                    payload={"global": full(module, 9.0), "cloud": {0: cloud}}, data=data)
    algo.client_begin(module, turn)
    assert all(torch.equal(p, torch.ones_like(p)) for p in module.model.parameters())  # own model, not global
    batch = (data.train_x, data.train_y)
    d = sum(p.numel() for p in module.model.parameters())
    assert torch.isclose(algo.loss(module, batch, turn) - F.cross_entropy(module(batch[0]), batch[1]),
                         torch.tensor(2.0 / (2 * 0.5) * 0.25 * d))


# ---- FedCAC ----------------------------------------------------------------------------
def test_fedcac_selects_critical_parameters_by_sensitivity():
    before = torch.tensor([0.0, 0.0, 1.0, 4.0])
    after = torch.tensor([1.0, -2.0, 3.0, 4.0])  # |delta * after| = [1, 4, 6, 0]
    assert critical_mask(before, after, 0.5).tolist() == [False, True, True, False]
    assert critical_mask(before, after, 0.25).tolist() == [False, False, True, False]


def test_fedcac_critical_parameters_collaborate_only_with_overlapping_clients():
    masks = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0]], dtype=torch.float64)
    ov = overlaps(masks)
    assert ov[0, 1] == 1 and ov[0, 2] == 0 and ov[0, 3] == 0.5
    models = torch.arange(4, dtype=torch.float64)[:, None].expand(4, 4)
    custom = customized(models, masks, progress=0.5)  # threshold = 5/12 + 0.5 * (1 - 5/12) ~ 0.71
    assert custom[0, 0] == 0.5 and custom[1, 0] == 0.5  # clients 0 and 1 average each other
    assert custom[2, 0] == 2 and custom[3, 0] == 3  # nobody overlaps enough: own model
    # the client starts (and is evaluated) from critical <- customized, the rest <- global
    algo = FedCAC(FedCACHparams())
    module = module_for(algo)
    w, c = full(module, 0.0), full(module, 1.0)
    mask = {k: torch.rand_like(v) > 0.5 for k, v in w.items()}
    turn = turn_for(module, state={"mask": mask}, payload={"global": w, "custom": {0: c}})
    start = algo.personalized_params(module, turn)
    assert all(torch.equal(start[k], mask[k].float()) for k in w)


def test_fedcac_round_trip(tiny):
    fed = federation(tiny, "algorithm=fedcac", "algo.tau=0.3")
    fed.step(0)
    state = fed.client_states[0]
    frac = float(flatten(state["mask"]).float().mean())
    assert 0.25 < frac < 0.35
    assert sorted(fed.server_state["custom"]) == list(range(6))
    fed.step(1)


# ---- FedDBE ----------------------------------------------------------------------------
def test_feddbe_prbias_folds_into_the_linear_head():
    module = module_for(FedDBE())
    w, c, x = module.params(), torch.randn(4), torch.randn(5, 3)
    expected = module.model.head(module.model.body(x) + c)
    module.load_params(fold_bias(w, c))
    assert torch.allclose(module(x), expected, atol=1e-6)


def test_feddbe_global_mean_fixed_after_init_and_prbias_learned(tiny):
    fed = federation(tiny, "algorithm=feddbe")
    fed.step(0)  # initialization period: no DBE, running means collected
    gm = fed.server_state["global_mean"].clone()
    assert gm.shape == (32,) and all("prbias" not in s for s in fed.client_states)
    fed.step(1)
    assert torch.equal(fed.server_state["global_mean"], gm)  # consensus stays fixed
    c = fed.client_states[0]["prbias"]
    assert c.abs().sum() > 0  # learned
    algo = fed.runtime.worker.algorithm
    pers = algo.personalized_params(fed.runtime.worker.module,
                                    Turn(0, 2, algo.payload(fed.global_params, fed.server_state),
                                         fed.client_states[0], 1))
    assert not torch.equal(pers["head.bias"], fed.global_params["head.bias"])
    # mean regularization: kappa * mean(0.5 (running mean - global mean)^2) joins the loss
    module, data = module_for(FedDBE(FedDBEHparams(kl_weight=0.0))), toy_data()
    losses = []
    for kl in (0.0, 10.0):
        algo = FedDBE(FedDBEHparams(kl_weight=kl, momentum=1.0))
        turn = turn_for(module, payload={"global": module.params(), "global_mean": torch.full((4,), 3.0)}, data=data)
        algo.client_begin(module, turn)
        losses.append(algo.loss(module, (data.train_x, data.train_y), turn))
    rep = module.model.body(data.train_x).mean(0)
    assert torch.isclose(losses[1] - losses[0], 10.0 * (0.5 * (rep - 3.0).pow(2)).mean())


# ---- FedAS -----------------------------------------------------------------------------
def test_fedas_aggregates_by_fisher_trace():
    algo = FedAS(FedASHparams())
    w = {"a": torch.zeros(2)}
    ups = [Upload(0, 3.0, {"model": {"a": torch.zeros(2)}, "fim": 1.0}),
           Upload(1, 1.0, {"model": {"a": torch.ones(2)}, "fim": 3.0})]
    new, _ = algo.aggregate(iter(ups), w, {})
    assert torch.allclose(new["a"], torch.full((2,), 0.75))  # train sizes would give 0.25


def test_fedas_aligns_global_body_to_local_prototypes(tiny):
    fed = federation(tiny, "algorithm=fedas", "algo.align_epochs=3")
    fed.step(0)
    worker, algo = fed.runtime.worker, fed.runtime.worker.algorithm
    payload, state = algo.payload(fed.global_params, fed.server_state), fed.client_states[1]
    turn = worker._turn(1, 1, payload, state, purpose=0)
    algo.client_begin(worker.module, turn)
    start = worker.module.params()
    assert all(torch.equal(start[k], (payload["global"] if k.startswith("body.") else state["theta"])[k])
               for k in start)  # global body under the client's own head
    phases = algo.local_phases(turn)
    assert [p.name for p in phases] == ["align", "train"] and phases[0].params == "body"
    x, y, protos = turn.data.train_x, turn.data.train_y, turn.scratch["protos"]

    def gap():
        with torch.no_grad():
            return float(F.mse_loss(worker.module.model.body(x), protos[y]))

    before = gap()
    turn.fit(phases[0])
    assert gap() < before
    assert torch.equal(worker.module.params()["head.weight"], state["theta"]["head.weight"])  # body only


# ---- end to end ------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_runs_end_to_end(tiny, name):
    rows = read_jsonl(run_cli(tiny + [f"algorithm={name}"]) / "metrics.jsonl")
    assert len(rows) == 3
    for r in rows:
        assert 0 <= r["acc"] <= 1 and math.isfinite(r["loss"])
        assert ("global_acc" in r) == (name != "fedamp")
