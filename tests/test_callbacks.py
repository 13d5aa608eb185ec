"""Round observers: W&B offline files, progress lines in non-interactive logs."""
import io

from callbacks import ProgressBar
from conftest import run_cli


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
