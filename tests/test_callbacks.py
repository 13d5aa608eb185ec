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
        rounds, algorithm = 20, "pflalign"
    round = 0


def test_progress_prints_every_tenth_round_when_not_a_terminal():
    out = io.StringIO()
    bar = ProgressBar(stream=out)
    bar.on_run_start(FakeFed)
    for r in range(1, 21):
        bar.on_round_end(FakeFed, {"round": r, "acc": 0.5})
    bar.on_run_end(FakeFed, {})
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1] == "round 20/20 acc 0.500"
