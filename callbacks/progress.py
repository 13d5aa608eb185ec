"""A tqdm bar on a terminal; in non-interactive logs (SLURM, ray job logs) a line every 10%."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm


class ProgressBar:
    def __init__(self, enabled: bool = True, stream=None):
        self.enabled, self.stream = enabled, stream or sys.stderr
        self.bar = None

    def on_run_start(self, fed) -> None:
        self.total = fed.cfg.rounds
        self.every = max(1, self.total // 10)
        if self.enabled and self.stream.isatty():
            self.bar = tqdm(total=self.total, initial=fed.round, desc=fed.cfg.algorithm, unit="round",
                            file=self.stream, dynamic_ncols=True)

    def on_round_end(self, fed, record: dict) -> None:
        shown = {k: f"{record[k]:.3f}" for k in ("acc", "global_acc") if k in record}
        if self.bar is not None:
            self.bar.set_postfix(shown, refresh=False)
            self.bar.update(1)
        elif self.enabled and (record["round"] % self.every == 0 or record["round"] == self.total):
            print(f"round {record['round']}/{self.total} " + " ".join(f"{k} {v}" for k, v in shown.items()),
                  file=self.stream, flush=True)

    def on_run_end(self, fed, results: dict) -> None:
        if self.bar is not None:
            self.bar.close()
