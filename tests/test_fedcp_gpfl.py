"""FedCP and GPFL: their per-sample conditioning through the personalized-forward hook, each one's
defining mechanism, and the hook's contract (extra modules train, travel and evaluate)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import read_jsonl, run_cli
from pflalign.algorithms.base import Algorithm, Phase, Turn, nbytes
from pflalign.algorithms.fedcp import FedCP, FedCPHparams, mmd
from pflalign.algorithms.fedper import part
from pflalign.algorithms.gpfl import GPFL, GPFLHparams, conditional_inputs
from pflalign.client import ClientModule
from pflalign.config import TrainConfig, load_config
from pflalign.data import ClientData, build_federated_data
from pflalign.errors import ConfigError
from pflalign.federation import Federation
from pflalign.models import SplitModel
from pflalign.runtime.local import LocalRuntime


def federation(tiny, *overrides) -> Federation:
    cfg = load_config(None, [*tiny, *overrides])
    data = build_federated_data(cfg.data, cfg.seed)
    return Federation(cfg, data, LocalRuntime(cfg, data))


def toy(algorithm, n=16, seed=1) -> tuple[ClientModule, Turn, dict]:
    """A 5-feature, 3-class module with the algorithm's extras, and a first turn from the server's state."""
    torch.manual_seed(0)
    model = SplitModel(nn.Sequential(nn.Linear(4, 5), nn.ReLU()), nn.Linear(5, 3))
    module = ClientModule(model, algorithm, TrainConfig(lr=0.1, batch_size=4), num_classes=3)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 4, generator=g), torch.arange(n) % 3
    global_params = {k: p.detach().clone() for k, p in model.named_parameters()}
    server = algorithm.init_server_state(global_params, [float(n)])
    payload = algorithm.payload(global_params, server)
    turn = Turn(0, 0, payload, {}, num_train=n, data=ClientData(x, y, x[:0], y[:0], x, y))
    module.turn = turn
    return module, turn, server


# ---- FedCP ---------------------------------------------------------------------------
def test_fedcp_policy_splits_each_feature_between_the_two_heads():
    algo = FedCP()
    module, turn, _ = toy(algo)
    algo.client_begin(module, turn)
    rep = module.model.body(turn.data.train_x)
    personal, shared = algo.split(module, rep, algo.context(module))
    assert torch.allclose(personal + shared, rep, atol=1e-6)  # the two heads' inputs sum to h
    share = personal / rep.masked_fill(rep == 0, 1)
    on = rep != 0
    assert (share[on] >= 0).all() and (share[on] <= 1).all()
    assert share[on].std() > 0.05  # a policy per sample and feature, not one split for all
    torch.manual_seed(3)
    out = algo.personalized_forward(module, turn, turn.data.train_x)
    torch.manual_seed(3)
    personal, shared = algo.split(module, rep, algo.context(module))
    head = module.model.head
    assert torch.allclose(out, module.extra["phead"](personal) + head(shared), atol=1e-6)


def test_fedcp_the_cpn_decides_which_head_sees_the_features():
    """A CPN whose scores put everything on one side turns the prediction into that head's (plus the
    other's bias), sample by sample; in between, changing the CPN changes every sample's logits differently."""
    algo = FedCP()
    module, turn, _ = toy(algo)
    algo.client_begin(module, turn)
    x = turn.data.train_x
    rep = module.model.body(x)
    with torch.no_grad():
        module.extra["phead"].weight.add_(torch.randn(3, 5))  # the two heads differ
    before = algo.personalized_forward(module, turn, x)
    norm = module.extra["cpn"][1]  # LayerNorm: weight 0 makes the scores its bias
    with torch.no_grad():
        norm.weight.zero_()
        phead, ghead = module.extra["phead"], module.model.head  # a head fed zeros gives its bias
        for first, want in ((50.0, phead(rep) + ghead.bias), (0.0, ghead(rep) + phead.bias)):
            norm.bias.copy_(torch.cat([torch.full((5,), first), torch.full((5,), 50.0 - first)]))
            assert torch.allclose(algo.personalized_forward(module, turn, x), want, atol=1e-4)
        norm.weight.fill_(1.0), norm.bias.zero_()
        torch.manual_seed(0)
        base = algo.personalized_forward(module, turn, x)
        module.extra["cpn"][0].weight.add_(0.5 * torch.randn(10, 5))
        torch.manual_seed(0)
        moved = algo.personalized_forward(module, turn, x) - base
    assert not torch.allclose(before, base)
    features = rep.abs().sum(1) > 0  # a sample whose features are all zero has nothing to route
    assert features.sum() >= 12 and (moved[features].abs().sum(1) > 1e-4).all()
    assert moved.std(0).max() > 1e-3  # per sample, not one shift of every sample's logits


def test_fedcp_context_comes_from_the_personalized_head():
    algo = FedCP()
    module, turn, _ = toy(algo)
    algo.client_begin(module, turn)
    w = module.extra["phead"].weight.detach()
    assert torch.allclose(algo.context(module), F.normalize(w.sum(0), dim=0))
    assert torch.allclose(w, turn.payload["global"]["head.weight"])  # a first turn: a copy of the global head


def test_fedcp_mmd_aligns_local_features_to_the_frozen_global_extractor():
    x = torch.randn(32, 6)
    assert mmd(x, x).abs() < 1e-5 and mmd(x, x + 3) > mmd(x, x + 1) > 0
    grads = []
    for lam in (0.0, 5.0):
        algo = FedCP(FedCPHparams(lam=lam))
        module, turn, _ = toy(algo)
        algo.client_begin(module, turn)
        with torch.no_grad():  # the extractor has moved since the round started
            module.model.body[0].weight.add_(0.3)
        torch.manual_seed(0)
        algo.loss(module, (turn.data.train_x, turn.data.train_y), turn).backward()
        grads.append(module.model.body[0].weight.grad.clone())
        assert module.model.head.weight.grad is None  # the global head is frozen in local training
        assert torch.equal(turn.scratch["extractor"]["0.weight"], turn.payload["global"]["body.0.weight"])
    assert not torch.allclose(grads[0], grads[1])


def test_fedcp_round_uploads_half_head_and_keeps_the_personal_one(tiny):
    fed = federation(tiny, "algorithm=fedcp", "client_fraction=1.0")
    g0 = fed.global_params
    cpn0 = fed.server_state["extra"]
    fed.step(0)
    states = fed.client_states
    weights = fed.data.train_sizes().tolist()
    expected = sum(w * 0.5 * (s["phead"]["phead.weight"] + g0["head.weight"]) for w, s in zip(weights, states))
    assert torch.allclose(fed.global_params["head.weight"], expected / sum(weights), atol=1e-5)
    assert all(set(s) == {"phead"} for s in states)
    assert set(fed.server_state["extra"]) == set(cpn0) and all(k.startswith("cpn.") for k in cpn0)
    assert not torch.equal(fed.server_state["extra"]["cpn.0.weight"], cpn0["cpn.0.weight"])  # the CPN is averaged
    down = nbytes(fed.global_params) + nbytes(cpn0)  # extractor, global head, CPN; the personal head stays
    assert fed.step(1)["comm_down_bytes"] == 6 * down


# ---- GPFL ----------------------------------------------------------------------------
def test_gpfl_guidance_terms_change_the_gradient():
    """Angle-level guidance trains the GCE and the extractor; magnitude-level pulls the global-route
    features toward this round's (frozen) class embeddings."""
    def grads(lam):
        algo = GPFL(GPFLHparams(lam=lam, mu=0.0))
        module, turn, _ = toy(algo)
        algo.client_begin(module, turn)
        with torch.no_grad():
            module.extra["gce"].weight.add_(0.5)  # the local GCE has moved from the frozen one
        algo.loss(module, (turn.data.train_x, turn.data.train_y), turn).backward()
        return module.model.body[0].weight.grad.clone(), module.extra["gce"].weight.grad, turn
    body0, gce0, turn = grads(0.0)
    body1, gce1, _ = grads(1.0)
    assert not torch.allclose(body0, body1)  # the magnitude term reaches the extractor
    assert gce0.abs().sum() > 0 and torch.allclose(gce0, gce1)  # the GCE learns only by angle
    assert not turn.scratch["frozen"].requires_grad


def test_gpfl_conditional_inputs_personalize_the_prediction():
    algo = GPFL()
    module, turn, _ = toy(algo)
    emb = torch.randn(3, 5)
    g, p = conditional_inputs(emb, torch.tensor([0.5, 0.5, 0.0]))
    assert torch.allclose(g, emb.mean(0)) and torch.allclose(p, (emb[0] + emb[1]) / 2)
    algo.client_begin(module, turn)
    x = turn.data.train_x
    zero = algo.personalized_forward(module, turn, x)  # before a first turn: zero inputs
    turn.state["p"] = p
    assert not torch.allclose(algo.personalized_forward(module, turn, x), zero)
    turn.state["g"] = g + 1  # the global route's input is for training only
    with_p = algo.personalized_forward(module, turn, x)
    assert torch.allclose(with_p, module.model.head(module.extra["cov"](module.model.body(x), p)))


def test_gpfl_turn_sets_inputs_from_its_trained_gce_and_uploads_the_shared_parts():
    algo = GPFL()
    module, turn, _ = toy(algo)  # 16 samples of classes 0, 1, 2, 0, 1, ...: frequencies 6, 5, 5 / 16
    algo.client_begin(module, turn)
    with torch.no_grad():
        module.extra["gce"].weight.add_(torch.randn(3, 5))  # what local training did
    trained = module.extra["gce"].weight.detach().clone()
    update = algo.client_end(module, turn)["update"]
    assert torch.allclose(turn.state["p"], torch.tensor([6, 5, 5]) / 16 @ trained, atol=1e-6)
    assert torch.allclose(turn.state["g"], trained.mean(0))
    assert set(turn.state) == {"head", "g", "p"} and set(turn.state["head"]) == {"head.weight", "head.bias"}
    assert {k.split(".")[0] for k in update} == {"body", "cov", "gce"}  # the head never leaves the client


def test_gpfl_round_averages_cov_and_gce_and_sends_no_head(tiny):
    fed = federation(tiny, "algorithm=gpfl", "client_fraction=1.0")
    extra0 = fed.server_state["extra"]
    fed.step(0)
    assert all(set(s) == {"head", "g", "p"} for s in fed.client_states)
    assert not torch.equal(fed.server_state["extra"]["gce.weight"], extra0["gce.weight"])
    assert not torch.equal(fed.server_state["extra"]["cov.gamma.0.weight"], extra0["cov.gamma.0.weight"])
    down = nbytes(part(fed.global_params, "body")) + nbytes(extra0)
    assert fed.step(1)["comm_down_bytes"] == 6 * down


def test_gpfl_extra_weight_decay_only_on_cov_and_gce():
    algo = GPFL(GPFLHparams(mu=0.5))
    module, turn, _ = toy(algo)
    for p in module.parameters():
        p.grad = torch.zeros_like(p)
    algo.transform_gradients(module, turn)
    assert torch.allclose(module.extra["gce"].weight.grad, 0.5 * module.extra["gce"].weight)
    assert module.model.body[0].weight.grad.abs().sum() == 0


# ---- the hook, end to end ------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["fedcp", "gpfl"])
def test_training_clients_and_newcomers_are_predicted_by_the_hook(tiny, algorithm, monkeypatch):
    cls = {"fedcp": FedCP, "gpfl": GPFL}[algorithm]
    calls = []
    forward = cls.personalized_forward
    monkeypatch.setattr(cls, "personalized_forward",
                        lambda self, module, turn, x: calls.append(turn.client_id) or forward(self, module, turn, x))
    run = run_cli(tiny + [f"algorithm={algorithm}", "data.holdout_clients=1", "eval.adapt_epochs=1", "rounds=2"])
    rows = read_jsonl(run / "metrics.jsonl")
    assert all(0 <= r["new_acc"] <= 1 and 0 <= r["acc"] <= 1 for r in rows) and "global_acc" not in rows[0]
    assert len(set(calls)) == 6  # every training client and the newcomer are predicted by the hook


def test_extra_modules_must_not_shadow_the_model():
    class Clash(Algorithm):
        def extra_modules(self, model):
            return {"head": nn.Linear(5, 3)}
    with pytest.raises(ConfigError, match="clash"):
        toy(Clash())


def test_a_model_without_a_linear_head_is_refused():
    model = SplitModel(nn.Linear(4, 5), nn.Sequential(nn.Linear(5, 5), nn.Linear(5, 3)))
    for algo in (FedCP(), GPFL()):
        with pytest.raises(ConfigError, match="one linear layer"):
            ClientModule(model, algo, TrainConfig(), num_classes=3)


def test_default_forward_is_the_model_and_phases_train_extras():
    algo = GPFL()
    module, turn, _ = toy(algo)
    x = turn.data.train_x
    assert torch.equal(Algorithm.personalized_forward(algo, module, turn, x), module.model(x))
    turn.phase = Phase()
    trained = {id(p) for g in module.configure_optimizers().param_groups for p in g["params"]}
    assert {id(p) for p in module.extra.parameters()} <= trained
    turn.phase = Phase(params="body")
    trained = {id(p) for g in module.configure_optimizers().param_groups for p in g["params"]}
    assert not {id(p) for p in module.extra.parameters()} & trained


@pytest.mark.parametrize("algorithm", ["fedcp", "gpfl"])
def test_resume_from_disk_states_gives_the_uninterrupted_numbers(tiny, algorithm):
    """The extra modules' server tensors and the clients' heads and inputs survive a checkpoint."""
    from pflalign.cli import main

    args = tiny + [f"algorithm={algorithm}", "client_fraction=0.5", "state_store=disk"]
    full = run_cli(args + ["name=full"])
    part = run_cli(args + ["name=part", "rounds=2", "checkpoint_every=1"])
    assert main(["run", "--resume", str(part), "rounds=3"]) == 0
    assert (part / "metrics.jsonl").read_text() == (full / "metrics.jsonl").read_text()
