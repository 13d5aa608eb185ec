"""Clients never seen in training (data.holdout_clients): they never train, stay out of the
training clients' metrics, and are served at every evaluation as each algorithm serves a newcomer."""
import pytest
import torch

from conftest import read_jsonl, run_cli
from pflalign.cli import main
from pflalign.algorithms.base import Algorithm, Phase
from pflalign.client import NEW_CLIENT, ClientWorker
from pflalign.config import load_config
from pflalign.data import build_federated_data
from pflalign.federation import Federation, held_out
from pflalign.runtime.local import LocalRuntime

HOLDOUT = ["data.holdout_clients=2"]
NEW = ("new_acc", "new_acc_mean", "new_acc_worst")


def federation(tiny, *overrides) -> Federation:
    cfg = load_config(None, [*tiny, *overrides])
    data = build_federated_data(cfg.data, cfg.seed)
    return Federation(cfg, data, LocalRuntime(cfg, data))


def spy_evaluations(fed: Federation) -> list[tuple[list[int], bool]]:
    """Record who each runtime.evaluate call covers, and whether as newcomers."""
    calls, evaluate = [], fed.runtime.evaluate

    def spy(rnd, payload, jobs, new=False):
        calls.append(([c for c, _ in jobs], new))
        return evaluate(rnd, payload, jobs, new=new)

    fed.runtime.evaluate = spy
    return calls


def test_the_held_out_clients_are_a_pure_function_of_seed_clients_and_k():
    assert held_out(0, 20, 3) == held_out(0, 20, 3) and len(set(held_out(0, 20, 3))) == 3
    assert held_out(0, 20, 0) == [] and len({tuple(held_out(s, 20, 3)) for s in range(5)}) > 1
    assert sorted(set(held_out(7, 20, 19))) == held_out(7, 20, 19) and set(held_out(7, 20, 19)) < set(range(20))


def test_held_out_clients_never_train_and_stay_out_of_the_training_metrics(tiny):
    fed = federation(tiny, *HOLDOUT, "client_fraction=0.5", "algorithm=fedavg_ft")
    calls = spy_evaluations(fed)
    results = fed.run()
    training = sorted(set(range(6)) - set(fed.holdout))
    assert len(fed.holdout) == 2 and fed.training == training
    for rnd in range(fed.cfg.rounds):  # client_fraction applies to the 4 training clients
        sampled = fed.sample(rnd)
        assert len(sampled) == 2 and set(sampled) <= set(training)
    assert all(fed.states.handles[c] is None for c in fed.holdout)  # no state was ever saved
    assert all(fed.client_states[c] == {} for c in fed.holdout)
    assert any(fed.states.handles[c] is not None for c in training)
    # every evaluation round: the training clients, then the held-out ones as newcomers
    assert calls == [(training, False), (fed.holdout, True)] * fed.cfg.rounds
    for record in fed.history:
        assert len(record["client_acc"]) == 4 and all(k in record for k in NEW)
        assert record["new_acc_worst"] <= record["new_acc_mean"] <= 1
    assert results["new_acc_last10"] == pytest.approx(sum(r["new_acc"] for r in fed.history) / fed.cfg.rounds)
    assert results["final"]["new_acc"] == fed.history[-1]["new_acc"]


def test_a_subset_evaluation_is_drawn_from_the_training_clients(tiny):
    fed = federation(tiny, *HOLDOUT, "eval_clients=subset", "eval_subset=3", "rounds=1")
    calls = spy_evaluations(fed)
    fed.run()
    (subset, _), (newcomers, new) = calls
    assert len(subset) == 3 and not set(subset) & set(fed.holdout) and newcomers == fed.holdout and new


def test_without_holdout_nothing_changes(tiny):
    fed = federation(tiny, "rounds=1")
    fed.run()
    assert fed.holdout == [] and fed.training == list(range(6))
    assert not any(k in fed.history[0] for k in NEW) and len(fed.history[0]["client_acc"]) == 6


def test_adaptation_changes_new_acc_but_never_the_training_clients(tiny):
    """Ditto's newcomer trains its personal model; at adapt_epochs=0 it is served the global model.
    Everything else in the records is identical: the adaptation leaves no trace."""
    adapted = run_cli(tiny + HOLDOUT + ["algorithm=ditto", "name=a1"])
    plain = run_cli(tiny + HOLDOUT + ["algorithm=ditto", "eval.adapt_epochs=0", "name=a0"])
    rows1, rows0 = read_jsonl(adapted / "metrics.jsonl"), read_jsonl(plain / "metrics.jsonl")
    assert [r["new_acc"] for r in rows1] != [r["new_acc"] for r in rows0]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in NEW} for r in rows]  # noqa: E731
    assert strip(rows1) == strip(rows0)


def test_adapt_epochs_zero_serves_the_global_model_as_is(tiny):
    fed = federation(tiny, *HOLDOUT, "algorithm=fedavg", "eval.adapt_epochs=0")
    fed.run()
    worker = fed.runtime.worker
    accs = [worker.module.evaluate(fed.global_params, fed.data.clients[c].test_x, fed.data.clients[c].test_y)[0]
            for c in fed.holdout]
    sizes = [len(fed.data.clients[c].test_y) for c in fed.holdout]
    assert fed.history[-1]["new_acc"] == pytest.approx(sum(a * n for a, n in zip(accs, sizes)) / sum(sizes))
    assert fed.history[-1]["new_acc_worst"] == pytest.approx(min(accs))


def newcomer(tiny, algorithm, *overrides):
    """(payload, the payload's copy, the worker) for a newcomer of ``algorithm`` at round 0."""
    cfg = load_config(None, [*tiny, *HOLDOUT, f"algorithm={algorithm}", *overrides])
    data = build_federated_data(cfg.data, cfg.seed)
    fed = Federation(cfg, data, LocalRuntime(cfg, data))
    payload = fed.algorithm.payload(fed.global_params, fed.server_state)
    return payload, {k: v.clone() for k, v in payload["global"].items()}, ClientWorker(cfg, data)


def test_fedrep_newcomer_fits_its_head_on_the_unchanged_global_body(tiny):
    payload, before, worker = newcomer(tiny, "fedrep")
    params = worker.new_client_params(0, 0, payload)
    assert all(torch.equal(params[k], before[k]) for k in before if k.startswith("body."))
    assert not all(torch.equal(params[k], before[k]) for k in before if k.startswith("head."))
    assert all(p.requires_grad for p in worker.module.model.parameters())  # the freeze is undone
    assert all(torch.equal(payload["global"][k], before[k]) for k in before)


@pytest.mark.parametrize("algorithm", ["fedavg", "pflalign", "apfl", "fedbabu"])
def test_a_newcomer_is_seeded_and_leaves_the_payload_untouched(tiny, algorithm):
    payload, before, worker = newcomer(tiny, algorithm)
    first = worker.new_client_params(1, 2, payload)
    worker.new_client_params(3, 2, payload)  # another newcomer in between changes nothing
    again = worker.new_client_params(1, 2, payload)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], before[k]) for k in before)  # it trained
    assert all(torch.equal(payload["global"][k], before[k]) for k in before)


def test_pflalign_newcomer_is_its_own_first_turn_not_plain_finetuning(tiny):
    """Mechanism 1 preconditions the newcomer's steps: a plain fine-tuning gives another model."""
    payload, _, worker = newcomer(tiny, "pflalign", "eval.adapt_epochs=2")
    own = worker.new_client_params(1, 0, payload)
    turn = worker._turn(1, 0, payload, {}, purpose=NEW_CLIENT)  # the same seeded stream
    default = Algorithm.new_client_params(worker.algorithm, worker.module, turn, Phase("adapt", epochs=2))
    assert not all(torch.equal(own[k], default[k]) for k in own)


def test_holdout_must_leave_a_training_client(tiny, capsys):
    assert main(["run", *tiny, "data.holdout_clients=6", "name=x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.holdout_clients=6" in err[0] and "data.num_clients=6" in err[0]
    assert main(["run", *tiny, "eval.adapt_epochs=-1", "name=x"]) == 2
    assert "eval.adapt_epochs" in capsys.readouterr().err


def test_natural_partition_holds_out_natural_clients(tiny):
    rows = read_jsonl(run_cli(tiny + HOLDOUT + ["data.dataset=synthetic", "data.partition=natural",
                                                "data.num_samples=600", "rounds=1", "name=nat"]) / "metrics.jsonl")
    assert len(rows[0]["client_acc"]) == 4 and all(k in rows[0] for k in NEW)


def test_held_out_clients_give_the_same_numbers_on_ray(tiny, ray_cluster):
    args = tiny + HOLDOUT + ["client_fraction=0.5", "ray.num_workers=2", "rounds=2"]
    local = read_jsonl(run_cli(args + ["name=local"]) / "metrics.jsonl")
    assert "new_acc" in local[-1]
    assert read_jsonl(run_cli(args + ["name=ray", "runtime=ray"]) / "metrics.jsonl") == local
