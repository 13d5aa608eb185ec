"""metrics.jsonl (one line per round, appended and flushed as rounds end) and metrics.csv."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from pflalign.checkpoint import write_text


class JsonlWriter:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.file = None

    def on_run_start(self, fed) -> None:
        # On resume the history comes from the checkpoint: rewrite the file to match it exactly.
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in fed.history))
        self.file = self.path.open("a")

    def on_round_end(self, fed, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def on_run_end(self, fed, results: dict) -> None:
        self.file.close()
        rows = [{k: v for k, v in r.items() if not isinstance(v, list)} for r in fed.history]
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with (self.path.parent / "metrics.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
