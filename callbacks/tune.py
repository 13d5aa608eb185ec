"""Round callback that feeds Ray Tune: one ``tune.report`` per evaluation round.

Reporting every evaluation (not only at the end) is what lets ASHA stop bad trials early.
A checkpoint (a copy of the run directory's checkpoint files, written by the run's own
Checkpointer just before) goes with the report every ``checkpoint_every`` rounds and at the
end, so ``Tuner.restore`` resumes a trial mid-run; Tune keeps a bounded number of them
(``CheckpointConfig``).

Tune may end a trial's thread inside any report (ASHA stops every trial that reaches
``max_t``), so the last round is reported by :meth:`TuneReporter.report_final`, called once
the run directory is complete (``results.json`` written).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from pflalign.checkpoint import copy_checkpoint


def tune_metrics(fed, record: dict) -> dict:
    """The record's scalars, plus ``val_acc_last10`` (mean of the last 10 evaluations)."""
    metrics = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    vals = [h["val_acc"] for h in fed.history if "val_acc" in h][-10:]
    if vals:
        metrics["val_acc_last10"] = float(np.mean(vals))
    return metrics


def _report(metrics: dict, run_dir: Path | None = None) -> None:
    """``tune.report``, with the run's current checkpoint when ``run_dir`` is given."""
    from ray import tune

    if run_dir is None:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="pflalign-ckpt-") as d:
        copy_checkpoint(run_dir, Path(d))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))  # persisted on return


class TuneReporter:
    def __init__(self, run_dir: Path, checkpoint_every: int, total_rounds: int):
        self.run_dir, self.every, self.total, self.final = Path(run_dir), checkpoint_every, total_rounds, None

    def on_run_start(self, fed) -> None:
        pass

    def on_round_end(self, fed, record: dict) -> None:
        rnd = record["round"]
        if "acc" not in record or rnd == self.total:  # not evaluated / reported by report_final
            return
        _report(tune_metrics(fed, record), self.run_dir if self.every and rnd % self.every == 0 else None)

    def on_run_end(self, fed, results: dict) -> None:
        self.final = tune_metrics(fed, fed.history[-1])

    def report_final(self) -> None:
        """The last round's metrics, with the run's final checkpoint (saved by its Checkpointer)."""
        _report(self.final, self.run_dir)
