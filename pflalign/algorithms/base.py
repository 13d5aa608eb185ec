"""The algorithm plug-in contract. Defaults are FedAvg; an algorithm overrides only what differs.

Hooks see tensors, state dicts and the client module, never Ray or W&B, so every algorithm
runs unchanged on every runtime. A client's turn is a pure function of (client id, round,
payload, persistent client state, seed): all randomness comes from the turn's seeded stream.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Params = dict[str, torch.Tensor]  # parameter name -> tensor, in ``named_parameters()`` order


@dataclass
class Phase:
    """One stage of local training: which parameters train, for how long, at what rate.

    ``params`` is ``all``, ``body`` or ``head`` (name prefixes of :class:`SplitModel`);
    ``epochs``/``lr`` of ``None`` mean the run's ``train.local_epochs``/``train.lr``.
    The hooks read ``turn.phase.name`` to pick the phase's loss or gradient transform.
    """
    name: str = "train"
    params: str = "all"
    epochs: Optional[int] = None
    lr: Optional[float] = None


@dataclass
class Turn:
    """Everything one client's hooks may read or write during its turn."""
    client_id: int
    round: int
    payload: dict[str, Any]
    state: dict[str, Any]  # persists across rounds (personalized weights, moments, ...)
    num_train: int
    data: Any = None  # the client's ClientData (train/val/test tensors), for extra passes
    scratch: dict[str, Any] = field(default_factory=dict)  # this turn only
    phase: Phase = field(default_factory=Phase)
    fit: Any = None  # fit(phase): run one Lightning phase on the client's train split (set by the worker)


@dataclass
class Upload:
    client_id: int
    weight: float  # n_i, the client's train size
    data: dict[str, Any]


@dataclass
class NoHparams:
    """This algorithm has no hyperparameters of its own."""


def clone(params: Params) -> Params:
    return {k: v.detach().clone() for k, v in params.items()}


def flatten(params: Params) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in params.values()])


def unflatten(vector: torch.Tensor, like: Params) -> Params:
    out, i = {}, 0
    for k, v in like.items():
        out[k] = vector[i:i + v.numel()].view_as(v).clone()
        i += v.numel()
    return out


def sq_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_k ||t_k||^2 with the squares as one multi-tensor op.

    The per-tensor sums stay separate and are added in order, so the value is bit for bit that
    of ``sum(t.pow(2).sum() for t in tensors)``; one sum over all elements (another order of
    float additions) would not be.
    """
    sums = [t.sum() for t in torch._foreach_pow(list(tensors), 2)]
    return sum(sums[1:], sums[0])


class _SqDist(torch.autograd.Function):
    """sum_k ||a_k - b_k||^2 as one autograd node (inputs: n, a_1..a_n, b_1..b_n).

    Autograd through the per-tensor ops records four nodes per tensor; this backward is one
    multi-tensor product: (2 g) d for every a_k, which rounds exactly as autograd's g (2 d)
    (doubling is exact), and its negation for b_k. Loss and gradients match the loop bit for bit.
    """

    @staticmethod
    def forward(ctx, n: int, *ab: torch.Tensor) -> torch.Tensor:
        d = torch._foreach_sub(ab[:n], ab[n:])
        ctx.save_for_backward(*d)
        return sq_norm(d)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        d = ctx.saved_tensors
        ga = torch._foreach_mul(d, g * 2)
        gb = torch._foreach_neg(ga) if any(ctx.needs_input_grad[1 + len(d):]) else [None] * len(d)
        return None, *ga, *gb


def sq_dist(module, ref: Params) -> torch.Tensor:
    """||theta - ref||^2 over the module's parameters, differentiable (the proximal terms)."""
    names, params = zip(*module.model.named_parameters())
    return _SqDist.apply(len(names), *params, *(ref[k] for k in names))


@torch.no_grad()
def sgd_step_(params: list[torch.Tensor], grads: Sequence[torch.Tensor], lr: float, weight_decay: float) -> None:
    """p <- p - lr * (g + weight_decay * p) in place, for the models an algorithm steps by hand."""
    step = torch._foreach_mul(params, weight_decay)
    torch._foreach_add_(step, list(grads))  # wd * p + g: the same float sum as g + wd * p
    torch._foreach_sub_(params, step, alpha=lr)


def weighted_mean(items: Iterable[tuple[Params, float]]) -> Params:
    """sum_i w_i x_i / sum_i w_i over (x_i, w_i) pairs, folded one at a time in float64.

    One fused add per client over the flattened parameters; consuming an iterator lets the
    Ray runtime reduce uploads as they arrive instead of buffering them all.
    """
    acc, total, like = None, 0.0, None
    for params, w in items:
        flat = flatten(params).to(torch.float64)
        acc = flat * w if acc is None else acc.add_(flat, alpha=w)
        total, like = total + w, params
    if acc is None:
        raise ValueError("weighted_mean of no items")
    return unflatten((acc / total).to(next(iter(like.values())).dtype), like)


def nbytes(obj: Any) -> int:
    """Bytes of the tensors and arrays in a (nested) payload or upload: what would cross the
    network. Python scalars (a loss, a count) are not counted: they are a few bytes each."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    return 0


class Algorithm:
    """FedAvg (McMahan et al., 2017): start from the global model, train, average the updates."""

    name = "fedavg"
    Hparams: type = NoHparams
    evaluates_global = True  # report the global model on every client's test split

    def __init__(self, hp: Any = None):
        self.hp = hp if hp is not None else self.Hparams()

    @property
    def needs_parts(self) -> dict[str, str]:
        """Model parts (``body``, ``head``) this method cannot do without parameters in, each with
        what it does with them; checked before a run starts (logreg's body has none)."""
        return {}

    # ---- server side -------------------------------------------------------------------
    def init_server_state(self, global_params: Params, client_weights: list[float]) -> dict:
        """Server state before round 1; ``client_weights`` are all N clients' train sizes."""
        return {}

    def payload(self, global_params: Params, server_state: dict) -> dict:
        """What every sampled client receives this round (broadcast once)."""
        return {"global": global_params}

    def download(self, payload: dict, client_id: int) -> dict:
        """The part of the payload client ``client_id`` is sent (communication accounting: the
        payload is one object for all clients, but a server that keeps a model per client sends
        each client only its own)."""
        return payload

    def aggregate(self, uploads: Iterable[Upload], global_params: Params,
                  server_state: dict) -> tuple[Params, dict]:
        """w <- w + sum_i p_i u_i, p renormalized over the participating clients.

        ``uploads`` arrive in client-id order; iterate once (``list()`` them if you need more).
        """
        mean = weighted_mean((u.data["update"], u.weight) for u in uploads)
        return {k: global_params[k] + mean[k] for k in global_params}, server_state

    def round_stats(self, stats: list[dict]) -> dict:
        """Reduce the clients' upload statistics to round metrics (default: mean per key)."""
        keys = sorted({k for s in stats for k in s})
        return {k: sum(s[k] for s in stats if k in s) / sum(k in s for s in stats) for k in keys}

    # ---- client side -------------------------------------------------------------------
    def extra_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        """Modules of the algorithm's own beside the model (FedCP's policy network, GPFL's
        conditional valve and category embedding), for a prediction that is more than
        ``model(x)`` (see :meth:`personalized_forward`).

        Built once per worker on the client module (so they move with it to the accelerator);
        their parameters are named ``<name>.<param>`` and take part in the module's Params like
        the model's: ``module.params()`` returns them, ``module.load_params`` loads the ones a
        dict carries, and a phase with ``params="all"`` (or ``"<name>"``) trains them. Their
        values live where the algorithm keeps them (payload, server or client state), as
        tensors. Names must differ from the model's parts (``body``, ``head``).
        """
        return {}

    def personalized_forward(self, module, turn: Turn, x: torch.Tensor) -> torch.Tensor:
        """The logits of this client's model for ``x``, its ``personalized_params`` loaded: what
        evaluation (and a newcomer's evaluation) calls. Methods whose prediction conditions the
        model per sample on the client (FedCP, GPFL) compute it here from their extra modules
        and ``turn.state``; their ``loss`` uses the same computation. Default: the model."""
        return module.model(x)

    def local_phases(self, turn: Turn) -> list[Phase]:
        return [Phase()]

    def client_begin(self, module, turn: Turn) -> None:
        """Load the model this client starts its local training from."""
        module.load_params(turn.payload["global"])
        turn.scratch["start"] = module.params()

    def begin_phase(self, module, turn: Turn) -> None:
        """Before each phase of ``local_phases`` (``turn.phase`` is set): swap models, freeze, ..."""

    def end_phase(self, module, turn: Turn) -> None:
        """After each phase: keep what it trained before the next phase overwrites it."""

    def loss(self, module, batch, turn: Turn) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(module(x), y)

    def transform_gradients(self, module, turn: Turn) -> None:
        """After backward, before the optimizer step (``param.grad`` may be rewritten)."""

    def after_step(self, module, turn: Turn) -> None:
        """After each optimizer step (e.g. pFedMe's outer update, SCAFFOLD's step count)."""

    def client_end(self, module, turn: Turn) -> dict:
        """What the client sends; it may also update ``turn.state``."""
        start = turn.scratch["start"]
        return {"update": {k: v - start[k] for k, v in module.params().items()}}

    def personalized_params(self, module, turn: Turn) -> Params:
        """The model evaluated as "this client's model" (may train, e.g. one adaptation step)."""
        return turn.payload["global"]

    # ---- clients never seen in training (data.holdout_clients) -------------------------
    def new_client_params(self, module, turn: Turn, adapt: Phase) -> Params:
        """How a client never seen in training is served: the model it is evaluated with,
        personalized from the current server state (``turn.payload``) on its own train split.

        ``adapt`` is ``eval.*``: ``epochs`` >= 1 (at 0 the worker serves the global model as is
        and does not call this), ``lr`` None = the method's own rate. ``turn.state`` starts
        empty and is discarded afterwards: nothing done here persists. Default: fine-tune the
        global model with plain SGD on cross-entropy (:func:`finetune`), what any server can
        offer a newcomer; a method with its own way of personalizing a newcomer overrides this.
        """
        return finetune(module, turn, turn.payload["global"], adapt)

    def first_turn(self, module, turn: Turn, adapt: Phase) -> Params:
        """A newcomer served by the method's own first turn: ``client_begin`` from the empty
        state, every local phase for ``adapt.epochs`` epochs (at ``adapt.lr`` when set),
        ``client_end`` (its upload is dropped), then ``personalized_params``, as a training
        client is evaluated after its first turn. For methods whose personalized model is what
        local training from the server's model leaves in the client state."""
        self.client_begin(module, turn)
        for phase in self.local_phases(turn):
            turn.fit(replace(phase, epochs=adapt.epochs, lr=adapt.lr if adapt.lr is not None else phase.lr))
        self.client_end(module, turn)
        return self.personalized_params(module, turn)


@contextmanager
def plain_hooks(module) -> Iterator[None]:
    """FedAvg's hooks (cross-entropy, gradients as they are, no phase set-up) drive ``module``'s
    training for the duration: a fine-tuning that no scratch or state of the algorithm's own
    training takes part in."""
    own, module.algorithm = module.algorithm, Algorithm()
    try:
        yield
    finally:
        module.algorithm = own


def finetune(module, turn: Turn, start: Params, phase: Phase) -> Params:
    """``start`` trained for ``phase`` with plain SGD on cross-entropy: the default new-client model."""
    module.load_params(start)
    with plain_hooks(module):
        turn.fit(phase)
    return module.params()
