"""Checkpoints that cannot run code, resumes that cannot change the experiment, and runs that stop
early saying what happened (Ctrl-C, disk full, a dead driver) and how to resume."""
import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import read_jsonl, run_cli
from pflalign.cli import main


@pytest.fixture
def part(tiny):
    """A run stopped after 2 of 4 rounds (its checkpoint is of round 2)."""
    return run_cli(tiny + ["rounds=2", "name=part", "checkpoint_every=1"])


def tree(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _err(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


class Pwn:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickle_bomb(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"round": 2, "x": Pwn(marker)}, buf)  # what a crafted torch checkpoint looks like
    return buf.getvalue()


@pytest.mark.parametrize("target", ["server", "manifest", "legacy"])
def test_crafted_checkpoint_is_refused_without_running_it(part, tmp_path, capsys, target):
    marker = tmp_path / "pwned"
    path = {"server": part / "server.2.safetensors", "manifest": part / "checkpoint.json",
            "legacy": part / "checkpoint.pt"}[target]
    if target == "legacy":
        (part / "checkpoint.json").unlink()
    path.write_bytes(_pickle_bomb(marker))
    before = (part / "config.yaml").read_text()
    assert main(["run", "--resume", str(part), "rounds=4"]) == 2
    err = _err(capsys)
    assert len(err) == 1 and str(path) in err[0], err
    assert not marker.exists()
    assert (part / "config.yaml").read_text() == before  # a refused resume changes nothing


def test_a_manifest_cannot_point_outside_the_run(part, capsys):
    manifest = json.loads((part / "checkpoint.json").read_text())
    manifest["server"] = "../../../etc/passwd"
    (part / "checkpoint.json").write_text(json.dumps(manifest))
    assert main(["run", "--resume", str(part), "rounds=4"]) == 2
    assert "not a pflalign checkpoint" in _err(capsys)[0]


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
@pytest.mark.parametrize("target", ["checkpoint.json", "server.2.safetensors", "metrics.jsonl"])
def test_damaged_checkpoint_names_the_file(part, capsys, damage, target):
    path = part / target
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"\x00junk" * 50}[damage])
    assert main(["run", "--resume", str(part), "rounds=4"]) == 2
    err = _err(capsys)
    assert len(err) == 1 and str(path) in err[0], err


def test_resume_continues_exactly_and_allows_only_harmless_changes(tiny, part, capsys):
    full = run_cli(tiny + ["rounds=4", "name=full"])
    stale = part / ".checkpoint.json.abc123.tmp"  # left by a kill during a checkpoint write
    stale.write_bytes(b"half a checkpoint")
    assert main(["run", "--resume", str(part), "rounds=4", "progress=false", "checkpoint_every=2",
                 "label=renamed", "wandb.mode=disabled"]) == 0
    assert (full / "metrics.jsonl").read_text() == (part / "metrics.jsonl").read_text()
    assert not stale.exists()
    saved = (part / "config.yaml").read_text()
    assert "rounds: 4" in saved and "label: renamed" in saved and "checkpoint_every: 2" in saved
    results = json.loads((part / "results.json").read_text())
    assert results["rounds"] == 4 and results["resumed_from_round"] == 2 and results["config"]["rounds"] == 4


@pytest.mark.parametrize("override, key", [
    ("data.alpha=0.3", "data.alpha"), ("seed=3", "seed"), ("train.lr=0.1", "train.lr"),
    ("algo.kappa=2", "algo.kappa"), ("eval_every=2", "eval_every"), ("data.num_clients=5", "data.num_clients"),
])
def test_resume_refuses_a_changed_experiment(part, capsys, override, key):
    before = tree(part)
    assert main(["run", "--resume", str(part), "rounds=4", override]) == 2
    err = _err(capsys)
    assert len(err) == 1 and f"--resume cannot change '{key}'" in err[0], err
    assert tree(part) == before


def test_resume_refuses_fewer_rounds(part, capsys):
    assert main(["run", "--resume", str(part), "rounds=1"]) == 2
    assert "rounds=1 is below the run's rounds=2" in _err(capsys)[0]


def test_resume_refuses_a_config_edited_after_the_checkpoint(part, capsys):
    path = part / "config.yaml"
    path.write_text(path.read_text().replace("num_clients: 6", "num_clients: 5"))
    assert main(["run", "--resume", str(part), "rounds=4"]) == 2
    err = _err(capsys)
    assert len(err) == 1 and "no longer matches" in err[0] and "'data.num_clients' is 5 there, 6 in the checkpoint" in err[0]


def test_resuming_a_finished_run_is_immediate(part, capsys):
    before = {p: p.stat().st_mtime_ns for p in part.rglob("*")}
    start = time.perf_counter()
    assert main(["run", "--resume", str(part)]) == 0
    assert time.perf_counter() - start < 1.0
    captured = capsys.readouterr()
    assert "already finished its 2 rounds" in captured.err and captured.out.strip() == str(part)
    assert {p: p.stat().st_mtime_ns for p in part.rglob("*")} == before


def test_outputs_honour_the_umask(tiny):
    old = os.umask(0o027)
    try:
        run_dir = run_cli(tiny + ["rounds=1", "name=umask"])
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in run_dir.rglob("*") if p.is_file()}
    assert {"config.yaml", "metrics.jsonl", "results.json", "checkpoint.json", "partition.json", "0.1.safetensors",
            "server.1.safetensors"} <= set(modes)
    assert set(modes.values()) == {0o640}, modes


@pytest.mark.parametrize("fail_at", [1, 2])
def test_disk_full_during_a_checkpoint_says_what_was_kept(tiny, tmp_path, monkeypatch, capsys, fail_at):
    import pflalign.checkpoint as ckpt
    from pflalign.checkpoint import load_checkpoint

    real, calls = ckpt.save_tree, []

    def save_tree(path, tree, fsync=True):
        calls.append(1)
        if len(calls) == fail_at:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, tree, fsync)

    monkeypatch.setattr(ckpt, "save_tree", save_tree)
    assert main(["run", *tiny, "rounds=3", "checkpoint_every=1", "name=full"]) == 1
    err = _err(capsys)
    run_dir = tmp_path / "runs" / "full"
    assert len(err) == 1 and "ENOSPC" in err[0] and f"server.{fail_at}.safetensors" in err[0], err
    assert f"at round {fail_at}" in err[0]
    if fail_at == 1:
        assert "no checkpoint was written yet" in err[0] and load_checkpoint(run_dir) is None
    else:
        assert "the checkpoint of round 1 is kept" in err[0]
        assert load_checkpoint(run_dir)["round"] == 1
    assert not list(run_dir.rglob(".*.tmp"))


def test_nan_without_any_checkpoint_does_not_claim_one(tiny, capsys):
    assert main(["run", *tiny, "rounds=8", "train.lr=1e8", "checkpoint_every=0", "name=nan"]) == 1
    err = _err(capsys)
    assert len(err) == 1 and "non-finite loss" in err[0] and "no checkpoint was written yet" in err[0], err


def test_ctrl_c_says_where_it_stopped_and_resumes_exactly(tiny, tmp_path):
    args = [*tiny, "rounds=12", "checkpoint_every=1", "name=int"]
    proc = subprocess.Popen([sys.executable, "-m", "pflalign.cli", "run", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "runs" / "int"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (run_dir / "metrics.jsonl").exists() and len((run_dir / "metrics.jsonl").read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    done = len(read_jsonl(run_dir / "metrics.jsonl"))
    assert 2 <= done < 12
    assert err.strip().splitlines() == [
        f"pflalign: interrupted at round {done + 1}; resume with: pflalign run --resume {run_dir}"]
    assert main(["run", "--resume", str(run_dir)]) == 0
    full = run_cli(tiny + ["rounds=12", "name=ref"])
    assert (run_dir / "metrics.jsonl").read_text() == (full / "metrics.jsonl").read_text()


def test_a_dead_driver_says_how_to_resume(tiny, ray_cluster, tmp_path):
    from pflalign.config import load_config
    from pflalign.errors import RunStopped
    from pflalign.experiment import launch

    def callbacks(cfg, run_dir):
        class DieAtRound2:  # defined here so Ray ships it by value to the driver actor
            def on_run_start(self, fed):
                pass

            def on_round_end(self, fed, record):
                if record["round"] == 2:
                    os._exit(1)

            def on_run_end(self, fed, results):
                pass

        return [DieAtRound2()]

    cfg = load_config(None, [*tiny, "runtime=ray", "ray.num_workers=1", "name=dies"])
    with pytest.raises(RunStopped) as info:
        launch(cfg, callbacks)
    msg = str(info.value)
    run_dir = tmp_path / "runs" / "dies"
    assert "\n" not in msg and "driver actor died at round 3" in msg
    assert msg.endswith(f"resume with: pflalign run --resume {run_dir}")


def test_a_checkpoint_from_before_a_key_existed_resumes_at_its_default(tiny, part, capsys):
    """Keys added to pflalign after a run's checkpoint (here: sim.*) read as their defaults."""
    full = run_cli(tiny + ["rounds=4", "name=full"])
    manifest = part / "checkpoint.json"
    saved = json.loads(manifest.read_text())
    saved["config"] = {k: v for k, v in saved["config"].items() if not k.startswith("sim.")}
    manifest.write_text(json.dumps(saved))
    before = tree(part)
    assert main(["run", "--resume", str(part), "rounds=4", "sim.dropout=0.5"]) == 2  # not the default: a change
    assert "'sim.dropout'" in _err(capsys)[0] and tree(part) == before
    assert main(["run", "--resume", str(part), "rounds=4"]) == 0
    assert (full / "metrics.jsonl").read_text() == (part / "metrics.jsonl").read_text()
