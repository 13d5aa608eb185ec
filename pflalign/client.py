"""Client-side execution: a long-lived Lightning ``ClientModule`` driven by a ``ClientWorker``.

One worker (in-process, or one per Ray actor) holds ONE module, set up once with Lightning
Fabric, for the whole run and swaps clients in and out of it: a client's persistent state
travels with its turn, so any worker can train any client and the result depends only on the
turn's inputs.
"""
from __future__ import annotations

import itertools
import logging
import math
import warnings
from typing import Any, Callable, Iterator

import lightning.pytorch as pl
from lightning.fabric import Fabric
from lightning.pytorch.plugins.environments import LightningEnvironment
import torch
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from .algorithms import Algorithm, Turn, Upload, build_algorithm
from .algorithms.base import Params, Phase
from .data import FederatedData, build_federated_data
from .errors import ConfigError, NonFiniteLossError
from .models import build_model
from .seeds import straggler_steps, stragglers, turn_seed
from .store import DiskIO, MemoryIO

NEW_CLIENT = 3  # turn_seed purpose of a held-out client's adaptation (0: training, 2: evaluation)


class ClientModule(pl.LightningModule):
    """The model plus the algorithm's hooks at Lightning's fixed points."""

    def __init__(self, model: torch.nn.Module, algorithm: Algorithm, train_cfg, num_classes: int):
        super().__init__()
        self.model, self.algorithm, self.train_cfg = model, algorithm, train_cfg
        extra = algorithm.extra_modules(model)  # the algorithm's own modules (FedCP, GPFL); usually none
        if set(extra) & set(dict(model.named_children())):
            raise ConfigError(f"algorithm {algorithm.name}: extra module names {sorted(extra)} clash with the model's parts")
        self.extra = torch.nn.ModuleDict(extra)
        self.batch_size = train_cfg.batch_size
        self.turn: Turn | None = None
        self.automatic_optimization = False
        self.accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.mean_loss = MeanMetric()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def named_params(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        """The model's parameters, then the algorithm's extra modules' (``<name>.<param>``)."""
        return itertools.chain(self.model.named_parameters(), self.extra.named_parameters())

    def params(self) -> Params:
        return {k: p.detach().clone() for k, p in self.named_params()}

    @torch.no_grad()
    def load_params(self, params: Params) -> None:
        """Every model tensor from ``params``, and the extra modules' tensors that it carries (a
        global model's dict has none: the extras keep what they had)."""
        for k, p in self.model.named_parameters():
            p.copy_(params[k])
        for k, p in self.extra.named_parameters():
            if k in params:
                p.copy_(params[k])

    def training_step(self, minibatches, batch_idx):
        # One training_step = one local epoch (the worker passes the epoch's minibatches), manual
        # optimization inside: the algorithm's hooks run at explicit points of every minibatch.
        opt, turn = self.optimizers(), self.turn
        epoch_loss = 0.0
        for batch in minibatches:
            opt.zero_grad()
            loss = self.algorithm.loss(self, batch, turn)
            self.manual_backward(loss)
            self.algorithm.transform_gradients(self, turn)
            opt.step()
            self.algorithm.after_step(self, turn)
            epoch_loss = epoch_loss + loss.detach()
        if not torch.isfinite(torch.as_tensor(epoch_loss)):  # NaN/inf anywhere in the epoch shows in the sum
            raise NonFiniteLossError(f"non-finite loss at round {turn.round + 1}, client {turn.client_id}, "
                                     f"phase {turn.phase.name}: lower train.lr or check the data")
        turn.scratch["loss_sum"] = turn.scratch.get("loss_sum", 0.0) + epoch_loss
        turn.scratch["loss_steps"] = turn.scratch.get("loss_steps", 0) + len(minibatches)

    def configure_optimizers(self):
        phase = self.turn.phase
        params = [p for k, p in self.named_params() if phase.params == "all" or k.startswith(phase.params + ".")]
        lr = phase.lr if phase.lr is not None else self.train_cfg.lr
        return torch.optim.SGD(params, lr=lr, weight_decay=self.train_cfg.weight_decay)

    @torch.no_grad()
    def evaluate(self, params: Params, x: torch.Tensor, y: torch.Tensor,
                 forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[float, float]:
        """(accuracy, mean loss) of ``params`` on (x, y); ``forward`` (default: the model) maps
        inputs to logits once they are loaded (a personalized forward)."""
        self.load_params(params)
        self.model.eval()
        self.accuracy.reset(), self.mean_loss.reset()
        forward = forward or self.model
        for i in range(0, len(y), 1024):
            logits = forward(x[i:i + 1024])
            self.accuracy.update(logits, y[i:i + 1024])
            self.mean_loss.update(torch.nn.functional.cross_entropy(logits, y[i:i + 1024]), len(logits))
        self.model.train()
        return float(self.accuracy.compute()), float(self.mean_loss.compute())


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                 "lightning.fabric.utilities.seed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> torch.utils.data.DataLoader:
    """Shuffled minibatches of in-memory tensors, one index tensor per batch (no per-item collate)."""
    ds = torch.utils.data.TensorDataset(x, y)
    sampler = torch.utils.data.BatchSampler(
        torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(seed)), batch_size, False)
    return torch.utils.data.DataLoader(ds, batch_size=None, sampler=sampler)


class ClientWorker:
    """Runs client turns: train (returns the upload and the new client state) and evaluate."""

    def __init__(self, cfg, data: FederatedData | None = None, io: MemoryIO | DiskIO | None = None):
        _quiet_lightning()
        self.io = io or MemoryIO()
        torch.set_num_threads(cfg.train.num_threads)
        self.cfg = cfg
        self.data = data if data is not None else build_federated_data(cfg.data, cfg.seed)
        self.algorithm = build_algorithm(cfg)
        model = build_model(cfg.model, self.data.input_shape, self.data.num_classes)
        self.module = ClientModule(model, self.algorithm, cfg.train, self.data.num_classes)
        # Lightning Fabric drives the LightningModule: its hooks run at the same fixed points as
        # under a Trainer, without a Trainer.fit per turn (setup, teardown, device moves, loops):
        # framework bookkeeping is paid once per worker, not once per turn.
        self.fabric = Fabric(accelerator=cfg.train.accelerator, devices=1, precision="32-true",
                             # Not a SLURM/torchrun task even inside one: no requeue signal handlers.
                             plugins=[LightningEnvironment()])
        self.fabric.setup_module(self.module)

    def _turn(self, client_id: int, rnd: int, payload: dict, state: dict, purpose: int) -> Turn:
        seed = turn_seed(self.cfg.seed, client_id, rnd, purpose)
        torch.default_generator.manual_seed(seed)  # torch.manual_seed also pokes every lazy device: ms each
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.manual_seed(seed)
        client = self.data.clients[client_id]
        turn = Turn(client_id, rnd, payload, state, num_train=len(client.train_y), data=client)
        fits = itertools.count()  # each phase of the turn gets its own batch-order stream
        late = purpose == 0 and self._straggles(client_id)  # only a training turn (purpose 0) has a deadline
        # No reference to ``turn`` in here: a turn -> fit -> turn cycle would keep every turn's
        # state alive until the cyclic garbage collector ran (hundreds of MB at 10,000 clients).
        turn.fit = lambda phase: self._fit(self.module.turn, phase,
                                           turn_seed(self.cfg.seed, client_id, rnd, purpose, 1, next(fits)), late)
        self.module.turn = turn
        return turn

    def train(self, client_id: int, rnd: int, payload: dict, handle: Any) -> tuple[Upload, Any]:
        """One turn from the client's state ``handle``; returns the upload and the new handle."""
        turn = self._turn(client_id, rnd, payload, self.io.load(client_id, handle), purpose=0)
        self.algorithm.client_begin(self.module, turn)
        for phase in self.algorithm.local_phases(turn):
            turn.fit(phase)
        data = self.algorithm.client_end(self.module, turn)
        stats, steps = data.pop("stats", {}), turn.scratch.get("loss_steps", 0)
        if steps:
            stats["train_loss"] = float(turn.scratch["loss_sum"]) / steps
        stats["local_steps"] = steps  # the federation sums it (metrics: local_steps) and keeps it out of round_stats
        upload = Upload(client_id, float(turn.num_train), {**data, "stats": stats})
        return upload, self.io.save(client_id, rnd + 1, turn.state)

    def _on_device(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The client's data on the module's device: one copy per phase or evaluation, none on CPU."""
        return tuple(self.fabric.to_device(t) for t in tensors)

    def _fit(self, turn: Turn, phase: Phase, seed: int, late: bool = False) -> None:
        turn.phase = phase
        epochs = phase.epochs if phase.epochs is not None else self.cfg.train.local_epochs
        self.module.algorithm.begin_phase(self.module, turn)  # the module's hooks: base.plain_hooks swaps them
        if epochs > 0:
            self.module._fabric_optimizers = [self.fabric.setup_optimizers(self.module.configure_optimizers())]
            x, y = self._on_device(turn.data.train_x, turn.data.train_y)
            loader = batches(x, y, self.cfg.train.batch_size, seed)
            for epoch, steps in enumerate(self._epoch_steps(epochs, len(loader), late)):
                # one training_step = one local epoch (see ClientModule); a straggler's last one is cut short
                self.module.training_step(list(itertools.islice(loader, steps)), epoch)
        self.module.algorithm.end_phase(self.module, turn)

    def _straggles(self, client_id: int) -> bool:
        """A straggler that uploads partial work (``sim.straggler_mode=partial``): its training
        turns stop at the deadline. Stragglers are a pure function of (seed, client), so the
        worker decides this itself; evaluation-time fine-tuning is never cut short."""
        sim = self.cfg.sim
        return sim.straggler_mode == "partial" and client_id in stragglers(
            self.cfg.seed, self.data.num_clients, sim.stragglers)

    def _epoch_steps(self, epochs: int, per_epoch: int, late: bool) -> list[int]:
        """Minibatch steps of each epoch of a phase: all of them, or for a ``late`` turn (a
        straggler's) the first ceil(sim.straggler_work x all), epoch by epoch."""
        if not late or not per_epoch:
            return [per_epoch] * epochs
        budget = straggler_steps(epochs * per_epoch, self.cfg.sim.straggler_work)
        return [min(per_epoch, budget - e * per_epoch) for e in range(math.ceil(budget / per_epoch))]

    def evaluate(self, client_id: int, rnd: int, payload: dict, handle: Any) -> dict[str, Any]:
        """Personalized (and global) accuracy/loss on the client's test and validation splits."""
        turn = self._turn(client_id, rnd, payload, self.io.load(client_id, handle), purpose=2)
        client = turn.data
        models = {"": self.algorithm.personalized_params(self.module, turn)}
        if self.algorithm.evaluates_global:
            models["global_"] = payload["global"]
        out: dict[str, Any] = {"client": client_id, "n_test": len(client.test_y), "n_val": len(client.val_y)}
        for prefix, params in models.items():
            if prefix and params is models[""]:  # the personalized model is the global one: evaluated once
                out.update({prefix + k: out[k] for k in ("acc", "loss", "val_acc", "val_loss") if k in out})
                continue
            forward = None if prefix else self._personalized_forward(turn)  # the global model: the model itself
            out[prefix + "acc"], out[prefix + "loss"] = self.module.evaluate(
                params, *self._on_device(client.test_x, client.test_y), forward)
            if len(client.val_y):
                out[prefix + "val_acc"], out[prefix + "val_loss"] = self.module.evaluate(
                    params, *self._on_device(client.val_x, client.val_y), forward)
        return out

    def _personalized_forward(self, turn: Turn) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda x: self.algorithm.personalized_forward(self.module, turn, x)

    def new_client_params(self, client_id: int, rnd: int, payload: dict) -> Params:
        """The model held-out client ``client_id`` is served at round ``rnd`` (the algorithm's
        ``new_client_params``; ``eval.adapt_epochs=0``: the global model as is). Its state starts
        empty and is never saved; its training has its own seeded stream (NEW_CLIENT), so every
        runtime gives the same model."""
        return self._new_client(client_id, rnd, payload)[0]

    def _new_client(self, client_id: int, rnd: int, payload: dict) -> tuple[Params, Callable | None]:
        """The newcomer's model and how it predicts: the algorithm's personalized forward over its
        adaptation turn, or (no adaptation) the global model itself."""
        ev = self.cfg.eval
        if not ev.adapt_epochs:
            return payload["global"], None
        turn = self._turn(client_id, rnd, payload, {}, purpose=NEW_CLIENT)
        params = self.algorithm.new_client_params(self.module, turn, Phase("adapt", epochs=ev.adapt_epochs,
                                                                           lr=ev.adapt_lr))
        return params, self._personalized_forward(turn)

    def evaluate_new(self, client_id: int, rnd: int, payload: dict) -> dict[str, Any]:
        """Accuracy/loss of the model a held-out client is served, on its test split."""
        client = self.data.clients[client_id]
        params, forward = self._new_client(client_id, rnd, payload)
        acc, loss = self.module.evaluate(params, *self._on_device(client.test_x, client.test_y), forward)
        return {"client": client_id, "n_test": len(client.test_y), "acc": acc, "loss": loss}
