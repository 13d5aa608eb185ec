"""What every run records besides accuracy: communication per round, wall times, code version."""
import json
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import read_jsonl, run_cli
from pflalign.algorithms import get_algorithm
from pflalign.algorithms.base import nbytes

ROOT = Path(__file__).resolve().parents[1]
MODEL_BYTES = (64 * 32 + 32 + 32 * 10 + 10) * 4  # the tiny fixture's mlp on digits: 64 -> 32 -> 10, float32
BODY_BYTES = (64 * 32 + 32) * 4


@pytest.mark.parametrize("algorithm, up, down", [
    ("fedavg", MODEL_BYTES, MODEL_BYTES),      # the update up, the global model down
    ("scaffold", 2 * MODEL_BYTES, 2 * MODEL_BYTES),  # plus the control variates both ways
    ("fedrep", BODY_BYTES, BODY_BYTES),        # the head never leaves the client
    ("local", 0, 0),
])
def test_metrics_count_the_bytes_each_algorithm_sends(tiny, algorithm, up, down):
    rows = read_jsonl(run_cli(tiny + [f"algorithm={algorithm}", "client_fraction=0.5"]) / "metrics.jsonl")
    total = 0
    for r in rows:
        assert (r["comm_up_bytes"], r["comm_down_bytes"]) == (r["clients"] * up, r["clients"] * down)
        total += r["comm_up_bytes"] + r["comm_down_bytes"]
        assert r["comm_total_bytes"] == total


def test_a_per_client_server_model_is_counted_once_per_client():
    fedamp = get_algorithm("fedamp")()
    glob, own = {"w": torch.zeros(10)}, {"w": torch.zeros(3)}
    payload = {"global": glob, "cloud": {4: own, 5: glob}}
    assert nbytes(payload) == 40 + 12 + 40
    assert nbytes(fedamp.download(payload, 4)) == 12 and nbytes(fedamp.download(payload, 0)) == 40


def test_timings_and_results_record_time_communication_and_code(tiny):
    run_dir = run_cli(tiny + ["rounds=4", "eval_every=2"])
    timings = read_jsonl(run_dir / "timings.jsonl")
    assert [t["round"] for t in timings] == [1, 2, 3, 4]
    assert [t["eval_s"] > 0 for t in timings] == [False, True, False, True]
    for t in timings:
        assert t["train_s"] > 0 and t["round_s"] >= t["train_s"] + t["eval_s"]
    results = json.loads((run_dir / "results.json").read_text())
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert results["comm"] == {"up_bytes": sum(r["comm_up_bytes"] for r in rows),
                               "down_bytes": sum(r["comm_down_bytes"] for r in rows),
                               "total_bytes": rows[-1]["comm_total_bytes"]}
    assert results["time_s"]["eval_s"] == pytest.approx(sum(t["eval_s"] for t in timings), abs=2e-3)
    assert results["time_s"]["round_s"] <= results["wall_time_s"]
    if (ROOT / ".git").exists():  # run from a checkout: the commit that made the numbers
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        assert results["git"]["commit"] == head and isinstance(results["git"]["dirty"], bool)
