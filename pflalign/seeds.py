"""Seeds of independent random streams, one per (run seed, client, round, purpose), and the
system-heterogeneity draws made from them (``sim.*``: who drops out, who is a straggler).

Kept apart from ``client`` so the driver side (federation, sampling) never imports Lightning.
Every draw here is a pure function of its keys, so the federation and every worker (local or
Ray, fresh or resumed) agree on it without passing it around or saving RNG state.
"""
from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import Iterable

import numpy as np

DROPOUT, STRAGGLERS = 9, 10  # purpose tags (federation.py uses 7, 8 and 11)


def turn_seed(*keys: int) -> int:
    """A 63-bit seed for one (run seed, client, round, purpose): independent, order-free streams."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> 1)


def dropped_out(seed: int, rnd: int, clients: Iterable[int], p: float) -> set[int]:
    """The clients of ``clients`` that drop out of round ``rnd``, each with probability ``p``.

    Each client draws from its own (seed, client, round) stream, so whether it drops out does
    not depend on who else was sampled (the same client drops out under any client_fraction).
    """
    if p <= 0:
        return set()
    return {c for c in clients if np.random.default_rng(turn_seed(seed, c, rnd, DROPOUT)).random() < p}


@functools.lru_cache(maxsize=16)
def stragglers(seed: int, num_clients: int, fraction: float) -> frozenset[int]:
    """The slow clients of the whole run: round(fraction x num_clients) of them, a seeded choice."""
    k = round(fraction * num_clients)
    if k == 0:
        return frozenset()
    rng = np.random.default_rng(turn_seed(seed, STRAGGLERS))
    return frozenset(int(c) for c in rng.choice(num_clients, size=k, replace=False))


def straggler_steps(full: int, work: float) -> int:
    """ceil(work x full), at least 1: the steps a straggler finishes before the deadline.

    ``work`` is taken as written (``str``), so 0.1 x 10 steps is 1 step, not the 2 that the
    binary float 0.1000000000000000055 would give.
    """
    return max(1, math.ceil(Fraction(str(work)) * full))
