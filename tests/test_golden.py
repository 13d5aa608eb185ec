"""Every algorithm gives, byte for byte, the metrics.jsonl that pflalign 0.1 (commit 3281664, before
the client-state store and the per-turn work) gave on this config, plus the communication keys
(comm_*) and participation keys (clients_completed, local_steps) added since (every other byte
checked unchanged when each was added): refactors of the
engine must not move a single number. Regenerate only for a deliberate change of results, and say why.
fedala.jsonl was regenerated when FedALA's weight learning started keeping the last partial
batch of its slice and evaluation started using the model the client trains from next (the
slice offset kept in the client state), both as in PFLlib."""
from pathlib import Path

import pytest

from conftest import run_cli
from pflalign.algorithms import ALGORITHMS

GOLDEN = Path(__file__).parent / "golden"
ARGS = ["data.dataset=digits", "data.num_clients=6", "data.alpha=0.5", "model.hidden=[32]", "rounds=3",
        "wandb.mode=disabled", "progress=false", "train.batch_size=32", "client_fraction=0.5", "eval_every=1"]


def test_every_algorithm_has_a_golden_file():
    assert sorted(p.stem for p in GOLDEN.glob("*.jsonl")) == sorted(ALGORITHMS)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_metrics_match_the_golden_file(tmp_path, data_cache, algorithm):
    run_dir = run_cli([f"algorithm={algorithm}", f"out_dir={tmp_path}", f"data.cache_dir={data_cache}", *ARGS])
    assert (run_dir / "metrics.jsonl").read_text() == (GOLDEN / f"{algorithm}.jsonl").read_text()
