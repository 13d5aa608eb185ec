"""System heterogeneity (sim.*): seeded drop-outs and stragglers remove or shorten exactly the
clients they should, the same way on every rerun and resume, and a round nobody completes
leaves the federation as it was."""
import copy
import math

import numpy as np
import pytest
import torch

from conftest import read_jsonl, run_cli
from pflalign.algorithms import ALGORITHMS
from pflalign.algorithms.base import Turn
from pflalign.cli import main
from pflalign.config import load_config
from pflalign.data import build_federated_data
from pflalign.federation import Federation
from pflalign.runtime.local import LocalRuntime
from pflalign.seeds import DROPOUT, straggler_steps, stragglers, turn_seed


def federation(tiny, *overrides) -> Federation:
    cfg = load_config(None, tiny + [*overrides])
    data = build_federated_data(cfg.data, cfg.seed)
    return Federation(cfg, data, LocalRuntime(cfg, data))


def uploaders(fed: Federation) -> list[list[int]]:
    """Wrap the server's aggregate: per round, the ids of the clients whose uploads it saw."""
    seen, inner = [], fed.algorithm.aggregate

    def aggregate(uploads, global_params, server_state):
        seen.append([])

        def tee():
            for u in uploads:
                seen[-1].append(u.client_id)
                yield u
        return inner(tee(), global_params, server_state)

    fed.algorithm.aggregate = aggregate
    return seen


def step(fed: Federation, rnd: int) -> dict:
    record = fed.step(rnd)
    fed.history.append(record)
    fed.round = rnd + 1
    return record


def same_tree(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_tree(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same_tree(x, y) for x, y in zip(a, b))
    return a == b


def test_dropout_removes_exactly_the_seeded_clients(tiny):
    p = 0.5
    fed = federation(tiny, "algorithm=ditto", f"sim.dropout={p}")
    full = federation(tiny, "algorithm=ditto")  # no dropout: what every sampled client sends
    seen = uploaders(fed)
    all_dropped = set()
    for rnd in range(3):
        # Independently of the federation: each client's own (seed, client, round) uniform draw.
        gone = {c for c in range(6) if np.random.default_rng(turn_seed(0, c, rnd, DROPOUT)).random() < p}
        all_dropped |= gone
        before = copy.deepcopy(fed.client_states)
        record, ref = step(fed, rnd), step(full, rnd)
        after = fed.client_states
        assert seen[-1] == [c for c in range(6) if c not in gone]
        assert (record["clients"], record["clients_completed"]) == (6, 6 - len(gone))
        for c in range(6):
            assert same_tree(before[c], after[c]) == (c in gone), (rnd, c)
        # Everyone sampled was sent the payload; only the completed clients uploaded.
        assert record["comm_down_bytes"] == ref["comm_down_bytes"]
        assert record["comm_up_bytes"] * 6 == ref["comm_up_bytes"] * (6 - len(gone))
    assert all_dropped and all_dropped != set(range(6))  # the draws did remove some clients, not all


def test_stragglers_are_a_seeded_fixed_share_of_the_clients():
    slow = stragglers(3, 40, 0.25)
    assert len(slow) == 10 and slow <= set(range(40))
    assert stragglers(3, 40, 0.25) == slow and stragglers(4, 40, 0.25) != slow
    assert stragglers(3, 40, 0.0) == frozenset()
    # ceil(work x steps) as the fraction is written: 0.1 x 10 and 0.3 x 10 in binary floats are
    # 1.0000000000000000555 and 3.0000000000000004, whose ceilings would be 2 and 4.
    assert [straggler_steps(10, w) for w in (0.1, 0.3, 0.35, 1.0)] == [1, 3, 4, 10]
    assert straggler_steps(3, 0.01) == 1  # at least one step


@pytest.mark.parametrize("algorithm", ["fedavg", "fedrep"])  # one local phase; two (head, then body)
def test_stragglers_do_ceil_of_their_share_of_each_phase(tiny, algorithm):
    work, epochs = 0.4, 3
    fed = federation(tiny, f"algorithm={algorithm}", "sim.stragglers=0.5", f"sim.straggler_work={work}",
                     f"train.local_epochs={epochs}", "client_fraction=1.0")
    slow = stragglers(0, 6, 0.5)
    assert len(slow) == 3

    def phase_steps(c: int) -> list[int]:  # each phase's full minibatch steps
        n = len(fed.data.clients[c].train_y)
        phases = fed.algorithm.local_phases(Turn(c, 0, {}, {}, n))
        return [(epochs if ph.epochs is None else ph.epochs) * math.ceil(n / fed.cfg.train.batch_size) for ph in phases]

    record = step(fed, 0)
    assert record["clients_completed"] == 6  # partial mode: stragglers upload what they did
    assert record["local_steps"] == sum(straggler_steps(s, work) if c in slow else s
                                        for c in range(6) for s in phase_steps(c))
    assert record["local_steps"] < sum(sum(phase_steps(c)) for c in range(6))


def test_only_training_turns_have_a_deadline(tiny):
    """FedBABU fine-tunes at evaluation: a straggler's evaluation is not cut short, its training is."""
    plain = federation(tiny, "algorithm=fedbabu", "algo.finetune_epochs=2")
    slow = federation(tiny, "algorithm=fedbabu", "algo.finetune_epochs=2", "sim.stragglers=0.5")
    c = min(stragglers(0, 6, 0.5))
    payload = plain.algorithm.payload(plain.global_params, plain.server_state)
    workers = plain.runtime.worker, slow.runtime.worker
    assert workers[0].evaluate(c, 0, payload, None) == workers[1].evaluate(c, 0, payload, None)
    full, cut = (w.train(c, 0, payload, None)[0].data["stats"]["local_steps"] for w in workers)
    assert cut == straggler_steps(full, 0.5) < full


def test_drop_mode_sends_nothing_from_stragglers(tiny):
    fed = federation(tiny, "algorithm=ditto", "sim.stragglers=0.5", "sim.straggler_mode=drop")
    seen = uploaders(fed)
    slow = stragglers(0, 6, 0.5)
    records = [step(fed, rnd) for rnd in range(2)]
    assert seen == [[c for c in range(6) if c not in slow]] * 2
    assert [r["clients_completed"] for r in records] == [3, 3]
    assert [c for c, v in enumerate(fed.states.versions) if v is None] == sorted(slow)  # never trained


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_a_round_nobody_completes_changes_nothing(tiny, algorithm):
    fed = federation(tiny, f"algorithm={algorithm}", "sim.dropout=1.0", "rounds=2")
    before = copy.deepcopy((fed.global_params, fed.server_state))
    record = step(fed, 0)
    assert same_tree((fed.global_params, fed.server_state), before)
    assert (record["clients"], record["clients_completed"], record["local_steps"]) == (6, 0, 0)
    assert record["comm_up_bytes"] == 0 and record["comm_down_bytes"] == record["comm_total_bytes"]
    assert fed.states.versions == [None] * 6


SIM = ["sim.dropout=0.3", "sim.stragglers=0.5", "sim.straggler_work=0.3", "client_fraction=0.5"]


def test_resume_with_dropout_ends_with_the_uninterrupted_metrics(tiny, capsys):
    full = run_cli(tiny + SIM + ["rounds=4", "name=full"])
    again = run_cli(tiny + SIM + ["rounds=4", "name=again"])
    part = run_cli(tiny + SIM + ["rounds=2", "name=part", "checkpoint_every=1"])
    rows = read_jsonl(full / "metrics.jsonl")
    assert any(r["clients_completed"] < r["clients"] for r in rows)  # someone did drop out
    assert (again / "metrics.jsonl").read_text() == (full / "metrics.jsonl").read_text()
    assert main(["run", "--resume", str(part), "rounds=4", "sim.dropout=0.1"]) == 2
    assert "--resume cannot change 'sim.dropout'" in capsys.readouterr().err
    assert main(["run", "--resume", str(part), "rounds=4"]) == 0
    assert (part / "metrics.jsonl").read_text() == (full / "metrics.jsonl").read_text()


@pytest.mark.parametrize("override, message", [
    ("sim.dropout=1.5", "sim.dropout must be <= 1"),
    ("sim.stragglers=-0.1", "sim.stragglers must be >= 0"),
    ("sim.straggler_work=0", "sim.straggler_work must be > 0"),
    ("sim.straggler_mode=late", "sim.straggler_mode must be one of partial, drop"),
])
def test_bad_sim_values_are_one_line_exit_2(tiny, tmp_path, capsys, override, message):
    assert main(["run", *tiny, override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "runs").exists()


def test_sim_keys_are_listed(capsys):
    assert main(["list", "keys"]) == 0
    out = capsys.readouterr().out
    assert all(f"sim.{k}" in out for k in ("dropout", "stragglers", "straggler_work", "straggler_mode"))
