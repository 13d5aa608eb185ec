"""Progress of one run, labelled ``<label> s<seed>`` (the label defaults to the algorithm).

A tqdm bar on a terminal. Otherwise, in non-interactive logs (SLURM, ray job logs) and where
runs share a terminal (``pflalign compare --jobs N`` sets ``PFLALIGN_PROGRESS=lines`` in its
worker processes), a line every 10% of rounds: ``[gateA s0] round 30/150 acc 81.2 global_acc
79.0`` (accuracies in %), one whole line per write, so parallel runs never interleave mid-line.
"""
from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm

LINES_ENV = "PFLALIGN_PROGRESS"  # "lines": lines even on a terminal


class ProgressBar:
    def __init__(self, enabled: bool = True, stream=None):
        self.enabled, self.stream = enabled, stream or sys.stderr
        self.bar = None

    def on_run_start(self, fed) -> None:
        cfg = fed.cfg
        self.total, self.tag = cfg.rounds, f"{cfg.label or cfg.algorithm} s{cfg.seed}"
        self.every = max(1, self.total // 10)
        if self.enabled and self.stream.isatty() and os.environ.get(LINES_ENV) != "lines":
            self.bar = tqdm(total=self.total, initial=fed.round, desc=self.tag, unit="round",
                            file=self.stream, dynamic_ncols=True)

    def on_round_end(self, fed, record: dict) -> None:
        shown = {k: f"{100 * record[k]:.1f}" for k in ("acc", "global_acc") if k in record}
        if self.bar is not None:
            self.bar.set_postfix(shown, refresh=False)
            self.bar.update(1)
        elif self.enabled and (record["round"] % self.every == 0 or record["round"] == self.total):
            line = " ".join([f"[{self.tag}] round {record['round']}/{self.total}", *(f"{k} {v}" for k, v in shown.items())])
            self.stream.write(line + "\n")
            self.stream.flush()

    def on_run_end(self, fed, results: dict) -> None:
        if self.bar is not None:
            self.bar.close()
