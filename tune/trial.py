"""One Tune trial = one federation, run with the LOCAL runtime inside the trial's process.

Why local: the models are small and a federation round is short, so one trial fits one CPU
slice (``resources`` in the sweep file); Tune already runs trials concurrently as resources
allow, and nesting a Ray actor pool per trial would only add actor start-up (~3 s per actor)
and compete with the other trials for the same CPUs.

A trial is an ordinary run directory, ``<sweep dir>/trials/<trial id>/`` (``pflalign report``
and ``pflalign run --resume`` work on it), logged to W&B as run ``<trial id>`` in group
``<sweep directory name>`` (its ``experiment``; unique per sweep) when W&B is on.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

from pflalign.checkpoint import copy_checkpoint, write_json
from pflalign.config import load_config
from pflalign.errors import NonFiniteLossError

from .spec import nest

# A trial whose loss became non-finite ended with a result (its hyperparameters diverge), not an
# error to resume: it records why here (in its run directory) and is never selected.
DIVERGED = "diverged.json"

# Driver-side W&B settings a trial inherits (a Ray worker has the environment of its raylet,
# not of the `pflalign tune` process).
WANDB_ENV = ("WANDB_MODE", "WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR",
             "WANDB_SILENT")


def trial_config(base: dict, params: dict, trial_id: str, trials_dir: str, experiment: str):
    """The trial's experiment: base + sampled params, run locally, quietly, in the sweep dir."""
    return load_config(None, [], base, nest(params), {
        "runtime": "local", "progress": False, "out_dir": trials_dir, "name": trial_id,
        "experiment": experiment, "label": trial_id})


class FaultOnce:
    """Testing (sweep key ``fault_round``): the first trial to reach this round raises, once."""

    def __init__(self, rnd: int, marker: Path):
        self.rnd, self.marker = rnd, marker

    def on_run_start(self, fed) -> None:
        pass

    def on_round_end(self, fed, record: dict) -> None:
        if record["round"] == self.rnd:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))  # atomic: only one trial
            except FileExistsError:
                return
            raise RuntimeError(f"injected fault at round {self.rnd} (sweep key fault_round)")

    def on_run_end(self, fed, results: dict) -> None:
        pass


def _restore(run_dir: Path) -> Path | None:
    """Tune's checkpoint of this trial -> the run dir's checkpoint files; None = start fresh."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        shutil.rmtree(run_dir, ignore_errors=True)  # a trial restarted from scratch
        return None
    shutil.rmtree(run_dir, ignore_errors=True)  # whatever ran after that checkpoint is replayed
    run_dir.mkdir(parents=True)
    with checkpoint.as_directory() as d:
        copy_checkpoint(Path(d), run_dir)
    return run_dir


def _abandon(callbacks: list, error: BaseException) -> None:
    """Close what on_run_end would have closed: ASHA stops a trial by SystemExit in tune.report."""
    for cb in callbacks:
        if getattr(cb, "run", None) is not None:
            cb.run.finish(exit_code=0 if isinstance(error, SystemExit) else 1)  # WandbLogger


def run_trial(params: dict, *, base: dict, sweep_dir: str, experiment: str, env: dict, umask: int,
              fault_round: int | None = None) -> None:
    """The Tune function trainable (bound with ``tune.with_parameters``). ``umask``: the user's,
    for what the trial writes (a local Ray instance runs its workers under 077)."""
    os.umask(umask)
    import ray
    from ray import tune

    from callbacks import default_callbacks
    from callbacks.tune import TuneReporter
    from pflalign.experiment import run_experiment

    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # a line per checkpoint
    for key in WANDB_ENV:
        os.environ.pop(key, None)
    os.environ.update(env)
    trial_id = tune.get_context().get_trial_id()
    trials_dir = Path(sweep_dir) / "trials"
    cfg = trial_config(base, params, trial_id, str(trials_dir), experiment)
    if ray.get_gpu_ids():
        cfg.train.accelerator = "gpu"
    resume = _restore(trials_dir / trial_id)
    reporter = TuneReporter(trials_dir / trial_id, cfg.checkpoint_every, cfg.rounds)
    made: list = []

    def callbacks(cfg, run_dir):
        made[:] = [*default_callbacks(cfg, run_dir), reporter]
        if fault_round is not None:
            made.append(FaultOnce(fault_round, Path(sweep_dir) / ".fault-injected"))
        return made

    try:
        run_experiment(cfg, callbacks, resume=resume)
    except NonFiniteLossError as e:
        _abandon(made, e)
        (trials_dir / trial_id).mkdir(parents=True, exist_ok=True)
        write_json(trials_dir / trial_id / DIVERGED, {"trial": trial_id, "error": str(e)})
    except BaseException as e:
        _abandon(made, e)
        raise
    else:
        reporter.report_final()  # after results.json: Tune may end the thread in here
    finally:
        if "wandb" in sys.modules:  # stop W&B's service now: at actor exit Ray kills it first
            sys.modules["wandb"].teardown()
