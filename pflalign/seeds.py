"""Seeds of independent random streams, one per (run seed, client, round, purpose).

Kept apart from ``client`` so the driver side (federation, sampling) never imports Lightning.
"""
from __future__ import annotations

import numpy as np


def turn_seed(*keys: int) -> int:
    """A 63-bit seed for one (run seed, client, round, purpose): independent, order-free streams."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> 1)
