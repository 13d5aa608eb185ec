"""pFLAlign: personalized FL by gradient alignment (arXiv 2605.02143; spec in ALGORITHM.md).

Mechanism 1 multiplies each local gradient by a client-specific signal-to-noise shrinkage P
built from moments that persist across rounds (a Wiener estimate of the client's expected
gradient). Mechanism 2 restarts each turn from w + Gamma*(theta_i - w) and moves the gates
Gamma toward coordinates where the client's descent direction agrees with its personalized
direction, minus a KL shrinkage (both from a PAC-Bayes bound).

Two variants from the same bound, options beside the specified default: ``gate_shape=tensor``
restricts the posterior mean to w + gamma_l * d_l with one gate per tensor (J's gradient summed
over the tensor: the gate moves by cos(-gbar, d) minus lam_g * gamma), and ``kappa_mode=client``
weights the noise by the bound's KL weight, which falls as 1/sqrt(n_i): a client with less data
shrinks noisy coordinates harder (kappa_i = kappa * sqrt(mean n / n_i)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch

from ..config import option
from .base import Algorithm, Params, Phase, Turn, Upload, clone, weighted_mean
from .diagnostics import gradient_variance
from .moments import update_moments


@dataclass
class PFLAlignHparams:
    m1: bool = option(True, "mechanism 1: preconditioned local update (off: P=1, h=g)")
    m2: bool = option(True, "mechanism 2: gated personalized start (off: start from w)")
    precond: str = option("snr", "preconditioner form", choices=["snr", "var", "fisher", "rms", "none"])
    direction: str = option("momentum", "h = bias-corrected EMA of gradients, or the raw gradient",
                            choices=["momentum", "gradient"])
    kappa: float = option(1.0, "noise weight of the SNR shrinkage", lo=0, sweep="loguniform(0.1, 10)")
    kappa_mode: str = option("global", "kappa for every client, or per client from the bound: "
                             "kappa * sqrt(mean train size / n_i)", choices=["global", "client"])
    pmax: float = option(4.0, "cap on P after per-tensor mean normalization", lo=0, lo_open=True,
                         sweep="uniform(2, 16)")
    b1: float = option(0.9, "first-moment decay", lo=0, hi=0.9999, sweep="uniform(0.8, 0.95)")
    b2: float = option(0.99, "second-moment decay", lo=0, hi=0.9999, sweep="uniform(0.95, 0.999)")
    rho_p: float = option(1.0, "damping of the var/fisher forms", lo=0, lo_open=True,
                          sweep="loguniform(0.1, 10)")
    gate_scope: str = option("all", "tensors with gates (head: the body always starts from w)",
                             choices=["all", "head"])
    gate_shape: str = option("coordinate", "a gate per coordinate, or one per tensor (its step: "
                             "cos(-gbar, d) - lam_g * gamma)", choices=["coordinate", "tensor"])
    gamma0: float = option(0.2, "initial gate", lo=0, hi=1, sweep="uniform(0, 1)")
    eta_g: float = option(0.1, "gate step", lo=0, sweep="loguniform(0.01, 0.5)")
    lam_g: float = option(4.0, "KL shrinkage weight of the gate update", lo=0, sweep="loguniform(0.1, 10)")
    score: str = option("clip", "alignment score form", choices=["clip", "sign"])
    mu: float = option(0.0, "proximal pull toward the round's global model", lo=0, sweep="uniform(0, 1)")
    send: str = option("update", "what the server averages", choices=["update", "model"])
    diag_every: int = option(10, "measure gradient variance every k rounds (0: never)", lo=0)
    diag_clients: int = option(3, "clients 0..k-1 are measured on diagnostic rounds they take part in", lo=1)
    diag_batches: int = option(8, "random minibatches per gradient-variance measurement", lo=1)


def preconditioners(kind: str, mh: list[torch.Tensor], vh: list[torch.Tensor], kappa: float, pmax: float,
                    rho_p: float) -> list[torch.Tensor]:
    """The multiplicative preconditioner P of each tensor (mean ~1 for snr and rms).

    The default (snr) runs as multi-tensor operations over all tensors at once; only the
    per-tensor means are a loop.
    """
    if kind != "snr":
        return [_preconditioner(kind, m, v, kappa, pmax, rho_p) for m, v in zip(mh, vh)]
    mh2 = torch._foreach_mul(mh, mh)
    var = torch._foreach_sub(vh, mh2)
    torch._foreach_clamp_min_(var, 0)
    den = torch._foreach_add(mh2, torch._foreach_mul(var, kappa))
    torch._foreach_add_(den, 1e-30)
    r = torch._foreach_div(mh2, den)
    for t in r:
        t.div_(t.mean() + 1e-12)
    torch._foreach_clamp_max_(r, pmax)
    return r


def preconditioner(kind: str, mh: torch.Tensor, vh: torch.Tensor, kappa: float, pmax: float,
                   rho_p: float) -> torch.Tensor:
    """P of one tensor."""
    return preconditioners(kind, [mh], [vh], kappa, pmax, rho_p)[0]


def _preconditioner(kind: str, mh: torch.Tensor, vh: torch.Tensor, kappa: float, pmax: float,
                    rho_p: float) -> torch.Tensor:
    if kind == "var":
        var = (vh - mh * mh).clamp_min(0)
        return rho_p / (var / (var.mean() + 1e-30) + rho_p)
    if kind == "fisher":
        return rho_p / (vh / (vh.mean() + 1e-30) + rho_p)
    if kind == "rms":
        r = 1 / (vh.sqrt() + 1e-8)
        return (r / r.mean()).clamp_max(pmax)
    return torch.ones_like(mh)


def gate_step(gamma: torch.Tensor, gbar: torch.Tensor, d: torch.Tensor, *, eta_g: float,
              lam_g: float, score: str) -> torch.Tensor:
    """Gamma + eta_g * (alignment of -gbar with d  -  KL shrinkage), clipped to [0, 1]."""
    rms = lambda t: t.pow(2).mean().sqrt()  # noqa: E731
    align = -(gbar * d) / (rms(gbar) * rms(d) + 1e-30)
    align = align.clamp(-1, 1) if score == "clip" else torch.sign(align)
    kl = lam_g * gamma * d * d / (d.pow(2).mean() + 1e-30)
    return (gamma + eta_g * (align - kl)).clamp(0, 1)


def tensor_gate_step(gamma: torch.Tensor, gbar: torch.Tensor, d: torch.Tensor, *, eta_g: float,
                     lam_g: float, score: str) -> torch.Tensor:
    """One gate for a whole tensor: :func:`gate_step`'s score and KL averaged over the tensor's
    coordinates at a common gamma (the mean per-coordinate score is cos(-gbar, d); the mean KL
    term is lam_g * gamma), clipped to [0, 1]."""
    align = cosine(-gbar, d)
    align = align if score == "clip" else float(math.copysign(1, align) if align else 0)
    return (gamma + eta_g * (align - lam_g * gamma)).clamp(0, 1)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.reshape(1, -1), b.reshape(1, -1), eps=1e-30))


class PFLAlign(Algorithm):
    name = "pflalign"
    Hparams = PFLAlignHparams

    def _in_scope(self, name: str) -> bool:
        return self.hp.gate_scope == "all" or name.startswith("head.")

    def _initial_gate(self, like: torch.Tensor) -> torch.Tensor:
        shape = like.shape if self.hp.gate_shape == "coordinate" else ()
        return torch.full(shape, self.hp.gamma0, dtype=like.dtype, device=like.device)

    def _kappa(self, turn: Turn) -> float:
        """This client's noise weight: the global kappa, or kappa scaled by the bound's KL weight
        relative to a client of the federation's mean size (equal sizes: exactly kappa)."""
        if self.hp.kappa_mode == "global":
            return self.hp.kappa
        return self.hp.kappa * math.sqrt(turn.payload["mean_train"] / turn.num_train)

    def init_server_state(self, global_params: Params, client_weights: list[float]) -> dict:
        if self.hp.kappa_mode == "global":
            return {}
        return {"mean_train": sum(client_weights) / len(client_weights)}

    def payload(self, global_params: Params, server_state: dict) -> dict:
        return {"global": global_params, **server_state}

    # ---- client side -------------------------------------------------------------------
    def client_begin(self, module, turn: Turn) -> None:
        hp, w, theta = self.hp, turn.payload["global"], turn.state.get("theta")
        start = dict(w)
        if hp.m2 and theta is not None:
            gamma = turn.state.setdefault(
                "gamma", {k: self._initial_gate(v) for k, v in w.items() if self._in_scope(k)})
            d = {k: theta[k] - w[k] for k in gamma}
            start.update({k: w[k] + gamma[k] * d[k] for k in gamma})
            turn.scratch["d"] = d
        module.load_params(start)
        turn.scratch.update(start=clone(start), gsum={}, steps=0)
        turn.state.setdefault("s", 0)

    def transform_gradients(self, module, turn: Turn) -> None:
        hp, sc, w = self.hp, turn.scratch, turn.payload["global"]
        sc["steps"] += 1
        if hp.m1:
            turn.state["s"] += 1
        named = [(k, p) for k, p in module.model.named_parameters() if p.grad is not None]
        names, grads = [k for k, _ in named], [p.grad for _, p in named]
        if "d" in sc:  # the round's gradient sum, for the gate step
            gated = [(k, g) for k, g in zip(names, grads) if k in sc["d"]]
            if sc["gsum"]:
                torch._foreach_add_([sc["gsum"][k] for k, _ in gated], [g for _, g in gated])
            else:
                sc["gsum"] = dict(zip([k for k, _ in gated], torch._foreach_add([g for _, g in gated], 0)))
        if hp.m1:
            mh, vh = update_moments(turn.state, names, grads, hp.b1, hp.b2)
            P = preconditioners(hp.precond, mh, vh, self._kappa(turn), hp.pmax, hp.rho_p)
            h = mh if hp.direction == "momentum" else grads
        else:
            P, h = None, grads
        if hp.mu:
            h = [hi + hp.mu * (p.detach() - w[k]) for hi, (k, p) in zip(h, named)]
        for (_, p), g in zip(named, torch._foreach_mul(P, h) if P is not None else h):
            p.grad = g

    def client_end(self, module, turn: Turn) -> dict:
        hp, sc, end = self.hp, turn.scratch, module.params()
        stats = {}
        if "d" in sc and sc["steps"]:
            gamma, step = turn.state["gamma"], gate_step if hp.gate_shape == "coordinate" else tensor_gate_step
            cos = []
            for k, d in sc["d"].items():
                gbar = sc["gsum"][k] / sc["steps"]
                cos.append(cosine(-gbar, d))
                gamma[k] = step(gamma[k], gbar, d, eta_g=hp.eta_g, lam_g=hp.lam_g, score=hp.score)
            stats["align/cos_dir"] = sum(cos) / len(cos)
        if "gamma" in turn.state:  # the mean gate over coordinates, whatever the gates' shape
            gates = [g.expand_as(end[k]).reshape(-1) for k, g in turn.state["gamma"].items()]
            stats["gamma"] = float(torch.cat(gates).mean())
        if hp.diag_every and turn.round % hp.diag_every == 0 and turn.client_id < hp.diag_clients:
            stats.update(gradient_variance(module, turn.data, self._current_p(module, turn), hp.diag_batches,
                                           module.batch_size))
        turn.state["theta"] = end
        start = sc["start"]
        data = {"model": end} if hp.send == "model" else {"update": {k: v - start[k] for k, v in end.items()}}
        return {**data, "stats": stats}

    def _current_p(self, module, turn: Turn) -> Params | None:
        """P from the client's current moments (None when mechanism 1 is off: P = 1)."""
        hp, s = self.hp, turn.state.get("s", 0)
        if not hp.m1 or not s:
            return None
        m, v = turn.state["m"], turn.state["v"]
        P = preconditioners(hp.precond, torch._foreach_div(list(m.values()), 1 - hp.b1 ** s),
                            torch._foreach_div([v[k] for k in m], 1 - hp.b2 ** s), self._kappa(turn), hp.pmax,
                            hp.rho_p)
        return dict(zip(m, P))

    def personalized_params(self, module, turn: Turn) -> Params:
        return turn.state.get("theta", turn.payload["global"])

    def new_client_params(self, module, turn: Turn, adapt: Phase) -> Params:
        """A newcomer's first turn, its upload dropped: without a theta, mechanism 2 starts it at w
        (no gates yet) and mechanism 1 preconditions from fresh moments; the theta it ends with is
        its model, as ALGORITHM.md evaluates a client. ``client_end`` (gate step: none on a first
        turn; the gradient-variance diagnostic) is skipped: theta is the trained model itself."""
        self.client_begin(module, turn)
        turn.fit(adapt)
        return module.params()

    # ---- server side -------------------------------------------------------------------
    def round_stats(self, stats: list[dict]) -> dict:
        out = super().round_stats(stats)
        gammas = torch.tensor([s["gamma"] for s in stats if "gamma" in s], dtype=torch.float64)
        out.pop("gamma", None)
        if len(gammas):
            out["align/gamma_mean"] = float(gammas.mean())
            out["align/gamma_std"] = float(gammas.std(unbiased=False))
        return out

    def aggregate(self, uploads: Iterable[Upload], global_params: Params, server_state: dict):
        if self.hp.send == "model":
            return weighted_mean((u.data["model"], u.weight) for u in uploads), server_state
        return super().aggregate(uploads, global_params, server_state)
