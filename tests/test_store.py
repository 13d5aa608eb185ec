"""Client-state stores: memory and disk give the same numbers, disk use stays bounded, and a kill
at any point of a state write or a checkpoint leaves a run that resumes to the same numbers."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import run_cli
from pflalign.cli import main
from pflalign.errors import InputError
from pflalign.serialize import load_tree, save_tree
from pflalign.store import MODEL_COPIES, choose_kind, state_files


def jsonl(run_dir) -> str:
    return (run_dir / "metrics.jsonl").read_text()


@pytest.mark.parametrize("algorithm", ["pflalign", "scaffold", "ditto", "fedala", "fedcac", "fedamp", "local"])
def test_memory_and_disk_stores_give_the_same_numbers(tiny, algorithm):
    args = tiny + [f"algorithm={algorithm}", "client_fraction=0.5", "checkpoint_every=2"]
    memory = run_cli(args + ["name=memory", "state_store=memory"])
    disk = run_cli(args + ["name=disk", "state_store=disk"])
    assert jsonl(memory) == jsonl(disk)
    assert json.loads((disk / "results.json").read_text())["state_store"] == "disk"


def test_disk_store_keeps_at_most_two_versions_and_only_the_checkpoint_at_the_end(tiny, monkeypatch):
    import pflalign.store as store

    seen = []
    update = store.ClientStates.update

    def spy(self, client, version, handle):
        update(self, client, version, handle)
        per_client = {}
        for c, _ in state_files(self.root):
            per_client[c] = per_client.get(c, 0) + 1
        seen.append(max(per_client.values()))

    monkeypatch.setattr(store.ClientStates, "update", spy)
    run_dir = run_cli(tiny + ["rounds=7", "client_fraction=0.5", "checkpoint_every=3", "state_store=disk"])
    assert max(seen) == 2
    manifest = json.loads((run_dir / "checkpoint.json").read_text())
    named = {(c, v) for c, v in enumerate(manifest["versions"]) if v is not None}
    assert set(state_files(run_dir / "states")) == named
    assert [p.name for p in run_dir.glob("server.*")] == ["server.7.safetensors"]


def test_a_resume_can_switch_the_store(tiny):
    full = run_cli(tiny + ["rounds=4", "name=full"])
    part = run_cli(tiny + ["rounds=2", "name=part", "state_store=memory"])
    assert main(["run", "--resume", str(part), "rounds=4", "state_store=disk"]) == 0
    assert jsonl(part) == jsonl(full)


KILL = textwrap.dedent("""
    import os, sys
    import pflalign.checkpoint as ckpt, pflalign.serialize as ser, pflalign.store as store
    point, nth = sys.argv[1], int(sys.argv[2])
    calls = []

    def die_on(obj, name, when):
        real = getattr(obj, name)
        def wrapper(*a, **k):
            calls.append(name)
            if calls.count(name) == nth and when == "before":
                os._exit(9)
            out = real(*a, **k)
            if calls.count(name) == nth and when == "after":
                os._exit(9)
            return out
        setattr(obj, name, wrapper)

    if point == "state-write":        # between two clients' state files
        die_on(store.DiskIO, "save", "before")
    elif point == "before-manifest":  # state and server files written, manifest not yet
        die_on(ckpt, "write_json", "before")
    elif point == "manifest-replace": # the manifest's temp file is written, not yet renamed
        real_replace = os.replace
        def replace(src, dst):
            if str(dst).endswith("checkpoint.json"):
                calls.append("replace")
                if calls.count("replace") == nth:
                    os._exit(9)
            real_replace(src, dst)
        ser.os.replace = replace
    elif point == "before-gc":        # manifest committed, old versions not yet removed
        die_on(store.ClientStates, "committed", "before")
    from pflalign.cli import main
    sys.exit(main(["run", *sys.argv[3:]]))
""")


CHECKPOINT_POINTS = [("before-manifest", 2), ("manifest-replace", 2), ("before-gc", 2)]


@pytest.mark.parametrize("store, point, nth", [("disk", "state-write", 5)]  # memory: no state writes in turns
                         + [(s, p, n) for s in ("disk", "memory") for p, n in CHECKPOINT_POINTS])
def test_a_kill_anywhere_resumes_to_the_same_numbers(tiny, tmp_path, point, nth, store):
    args = tiny + ["rounds=5", "client_fraction=0.5", "checkpoint_every=1", f"state_store={store}"]
    full = run_cli(args + ["name=full"])
    proc = subprocess.run([sys.executable, "-c", KILL, point, str(nth), *args, "name=killed"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr[-2000:]
    killed = tmp_path / "runs" / "killed"
    assert main(["run", "--resume", str(killed)]) == 0
    assert jsonl(killed) == jsonl(full)
    manifest = json.loads((killed / "checkpoint.json").read_text())
    assert set(state_files(killed / "states")) == {(c, v) for c, v in enumerate(manifest["versions"]) if v is not None}


def test_trees_round_trip_and_foreign_files_are_refused(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    tree = {"theta": {"w": base[1], "b": torch.zeros(())}, "mask": torch.tensor([True, False]),
            7: [1, 2.5, None, "x", True], "nested": {"$t": "not a tensor ref"}}
    save_tree(tmp_path / "t.safetensors", tree)
    back = load_tree(tmp_path / "t.safetensors")
    assert back.keys() == tree.keys() and back[7] == tree[7] and back["nested"] == tree["nested"]
    assert torch.equal(back["theta"]["w"], base[1]) and back["mask"].dtype == torch.bool
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(InputError, match="bad.safetensors"):
        load_tree(tmp_path / "bad.safetensors")
    with pytest.raises(TypeError, match="cannot store a object"):
        save_tree(tmp_path / "x.safetensors", {"x": object()})


def test_auto_store_picks_disk_when_states_would_crowd_memory():
    assert choose_kind("auto", 20, 100_000) == "memory"
    assert choose_kind("auto", 100, 45_000_000) == "disk"  # 100 x ResNet-18: ~18 GB of state
    assert choose_kind("memory", 100, 45_000_000) == "memory" and MODEL_COPIES == 4


@pytest.mark.parametrize("how, n", [("sampled", 3), ("subset", 4)])
def test_eval_clients_is_recorded_with_the_numbers(tiny, how, n):
    run_dir = run_cli(tiny + ["client_fraction=0.5", f"eval_clients={how}", "eval_subset=4", "name=e"])
    rows = [json.loads(line) for line in jsonl(run_dir).splitlines()]
    assert all(r["eval_clients"] == n and len(r["client_acc"]) == n for r in rows)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["evaluated"] == {"sampled": "sampled", "subset": "subset of 4"}[how]
    everyone = run_cli(tiny + ["client_fraction=0.5", "name=all"])
    assert "eval_clients" not in jsonl(everyone)
