"""Round observers: W&B offline files, progress lines in non-interactive logs."""
import contextlib
import io
import json
import struct
from pathlib import Path

import pytest

from callbacks import ProgressBar
from conftest import read_jsonl, run_cli


def test_wandb_offline_writes_a_run(tiny, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc key: auto must resolve to offline
    run_dir = run_cli(tiny + ["wandb.mode=auto"])
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))


class FakeFed:
    class cfg:
        rounds, algorithm, label, seed = 20, "pflalign", None, 3
    round = 0


def test_progress_prints_every_tenth_round_when_not_a_terminal():
    out = io.StringIO()
    bar = ProgressBar(stream=out)
    bar.on_run_start(FakeFed)
    for r in range(1, 21):
        bar.on_round_end(FakeFed, {"round": r, "acc": 0.5})
    bar.on_run_end(FakeFed, {})
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1] == "[pflalign s3] round 20/20 acc 50.0"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released): connects are refused."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wandb_auto_with_a_key_but_no_server_goes_offline_at_once(tiny, tmp_path, monkeypatch, capfd):
    """auto + API key + unreachable host: decided at load time (no 2-minute wandb.init wait),
    one warning line, and the run logs offline."""
    import time

    from pflalign.config import load_config

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # fake: never sent anywhere
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("HOME", str(tmp_path))
    start = time.perf_counter()
    cfg = load_config(None, tiny + ["wandb.mode=auto"])
    assert cfg.wandb.mode == "offline" and time.perf_counter() - start < 5
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "wandb.mode=auto" in err[0] and "offline" in err[0]
    assert load_config(None, tiny + ["wandb.mode=auto"]).wandb.mode == "offline"  # decided once per process
    assert capfd.readouterr().err == ""
    run_dir = run_cli(tiny + ["wandb.mode=auto"])
    assert len(list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))) == 1
    assert "mode: offline" in (run_dir / "config.yaml").read_text()  # a resume logs the same way


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline W&B run file (wandb's log format: a 7-byte header, then
    32 KiB blocks of records, each with a 7-byte header: crc32, length, FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, chunks, out = Path(path).read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer too short for a header: padding
            pos += 32768 - pos % 32768
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunks, pos = chunks + data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = pb.Record()
            record.ParseFromString(chunks)
            out.append(record)
            chunks = b""
    return out


def test_wandb_run_of_a_compare_group_job_type_tables_files_and_summary(tiny, tmp_path, monkeypatch):
    from pflalign.cli import main
    from wandb.proto import wandb_internal_pb2 as pb

    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    variants = tmp_path / "variants.yaml"
    variants.write_text("mine: {algorithm: local}\n")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["compare", "--variants", str(variants), "--seeds", "0", *tiny, "wandb.mode=offline"]) == 0
    compare_dir = Path(out.getvalue().strip().splitlines()[-1])
    (run_dir,) = [p for p in compare_dir.iterdir() if p.is_dir()]
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    records = wandb_records(next(offline.glob("run-*.wandb")))
    (run,) = [r.run for r in records if r.HasField("run")]
    assert run.run_group == compare_dir.name and run.job_type == "mine"  # this comparison's group, the label

    files = {f.path: f.policy for r in records if r.HasField("files") for f in r.files.files}
    for name in ("config.yaml", "partition.json", "metrics.jsonl", "results.json"):
        assert files[name] == pb.FilesItem.PolicyType.END
        assert (offline / "files" / name).read_bytes() == (run_dir / name).read_bytes()

    results = json.loads((run_dir / "results.json").read_text())
    summary = {u.key: json.loads(u.value_json) for r in records if r.HasField("summary") for u in r.summary.update}
    assert summary["wall_time_s"] == results["wall_time_s"] and summary["command"] == results["command"]
    assert summary["git_commit"] == (results["git"] or {}).get("commit")
    assert summary["final/acc_worst"] == results["final"]["acc_worst"]

    sizes = json.loads((run_dir / "partition.json").read_text())["sizes"]["test"]
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "client_acc" in r]
    tables = sorted((offline / "files" / "media" / "table").glob("clients_*.table.json"),
                    key=lambda p: int(p.name.split("_")[1]))
    assert len(tables) == len(rows)
    for row, path in zip(rows, tables):  # per evaluation: client, its accuracy, its test size
        table = json.loads(path.read_text())
        assert table["columns"] == ["client", "accuracy", "test size"]
        assert table["data"] == [[c, a, sizes[c]] for c, a in enumerate(row["client_acc"])]


@pytest.mark.parametrize("out_dir, experiment, group", [
    ("runs/compare-20261124-031502", "default", "compare-20261124-031502"),
    ("runs/compare-20261124-031502-1", "default", "compare-20261124-031502-1"),  # same second, other comparison
    ("runs", "ablation", "ablation"),
    ("runs/compare-notes", "ablation", "ablation"),
])
def test_wandb_group_is_the_comparison_or_the_experiment(out_dir, experiment, group):
    from callbacks.wandb import wandb_group

    assert wandb_group(experiment, out_dir) == group
