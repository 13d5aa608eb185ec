"""Per-client evaluations -> federation metrics, over ALL training clients (not just the sampled).

Accuracies are fractions in [0, 1]; ``acc`` is sample-weighted, ``acc_mean`` unweighted,
``acc_bottom10`` the mean of the worst ceil(10%) clients. Held-out clients (never trained,
served as newcomers) have their own ``new_*`` metrics and never enter the others.
"""
from __future__ import annotations

import math

import numpy as np


def summarize(evals: list[dict]) -> dict:
    n = np.array([e["n_test"] for e in evals], dtype=np.float64)
    acc = np.array([e["acc"] for e in evals])
    k = max(1, math.ceil(0.1 * len(acc)))
    out = {
        "acc": float(np.average(acc, weights=n)),
        "acc_mean": float(acc.mean()),
        "acc_std": float(acc.std()),
        "acc_worst": float(acc.min()),
        "acc_bottom10": float(np.sort(acc)[:k].mean()),
        "loss": float(np.average([e["loss"] for e in evals], weights=n)),
    }
    if "global_acc" in evals[0]:
        out["global_acc"] = float(np.average([e["global_acc"] for e in evals], weights=n))
        out["global_loss"] = float(np.average([e["global_loss"] for e in evals], weights=n))
    n_val = np.array([e["n_val"] for e in evals], dtype=np.float64)
    for key in ("val_acc", "val_loss", "global_val_acc"):
        if key in evals[0] and n_val.sum():
            out[key] = float(np.average([e[key] for e in evals], weights=n_val))
    out["client_acc"] = [round(float(a), 6) for a in acc]
    return out


def summarize_new(evals: list[dict]) -> dict:
    """Held-out clients' accuracy (``new_acc`` sample-weighted, ``new_acc_mean``, ``new_acc_worst``)."""
    n = np.array([e["n_test"] for e in evals], dtype=np.float64)
    acc = np.array([e["acc"] for e in evals])
    return {"new_acc": float(np.average(acc, weights=n)), "new_acc_mean": float(acc.mean()),
            "new_acc_worst": float(acc.min())}


def stability(accs: list[float], window: int) -> dict:
    """Std of the accuracy over the last ``window`` evaluations and their mean absolute change.

    Fed with the unweighted mean personalized accuracy, as ALGORITHM.md defines stability.
    """
    tail = np.asarray(accs[-window:], dtype=np.float64)
    if len(tail) < 2:
        return {}
    return {"stability_std": float(tail.std()), "stability_change": float(np.abs(np.diff(tail)).mean())}


def final_results(history: list[dict], window: int, last: int = 10) -> dict:
    """Best and final values of the evaluated rounds, the last-``last`` mean, and stability."""
    evaluated = [h for h in history if "acc" in h]
    if not evaluated:
        return {}
    best = max(evaluated, key=lambda h: h["acc"])
    final = {k: v for k, v in evaluated[-1].items() if k != "client_acc"}
    tail = evaluated[-last:]
    out = {"final": final, "best": {"round": best["round"], "acc": best["acc"]},
           f"acc_last{last}": float(np.mean([h["acc"] for h in tail])),
           f"acc_mean_last{last}": float(np.mean([h["acc_mean"] for h in tail])),
           **stability([h["acc_mean"] for h in evaluated], window)}
    for key in ("global_acc", "new_acc", "new_acc_mean", "new_acc_worst"):
        if key in best:
            out[f"{key}_last{last}"] = float(np.mean([h[key] for h in tail]))
    if "val_acc" in best:
        best_val = max(evaluated, key=lambda h: h["val_acc"])
        out["best_val"] = {"round": best_val["round"], "val_acc": best_val["val_acc"], "acc": best_val["acc"]}
    return out
