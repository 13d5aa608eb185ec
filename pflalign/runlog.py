"""metrics.jsonl (one line per round, appended and flushed as rounds end) and metrics.csv.

Every run writes it (it is the run's history: a resume reads its checkpoint's rounds back from
it, so checkpoints need not repeat them).
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

from .checkpoint import write_text


class JsonlWriter:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.file = None

    def on_run_start(self, fed) -> None:
        # On resume: drop the rounds after the checkpoint (they will be replayed), exactly.
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in fed.history))
        self.file = self.path.open("a")

    def close(self) -> None:
        if self.file is not None and not self.file.closed:
            self.file.close()

    def on_round_end(self, fed, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def on_run_end(self, fed, results: dict) -> None:
        self.close()
        rows = [{k: v for k, v in r.items() if not isinstance(v, list)} for r in fed.history]
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with (self.path.parent / "metrics.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)


class TimingLog:
    """timings.jsonl: each round's wall times, kept apart from metrics.jsonl so that the metrics
    stay identical from run to run. ``round_s`` spans the whole round: training, evaluation
    (``eval_s``, 0 in rounds without one), metrics and the checkpoint (``checkpoint_s``, when one
    was written). A resume appends, so a replayed round has two rows: the file is the time spent."""

    TOTALS = ("train_s", "eval_s", "checkpoint_s", "round_s")

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "timings.jsonl"

    def on_run_start(self, fed) -> None:
        pass

    def on_round_end(self, fed, record: dict) -> None:
        fed.timing["round_s"] = time.perf_counter() - fed.round_started  # the callbacks before this one included
        with self.path.open("a") as f:
            f.write(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in fed.timing.items()}) + "\n")

    def on_run_end(self, fed, results: dict) -> None:
        pass

    def totals(self) -> dict:
        """Seconds spent in each part over every row (resumed sessions and replays included)."""
        rows = [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.exists() else []
        return {k: round(sum(r.get(k, 0.0) for r in rows), 3) for k in self.TOTALS}
