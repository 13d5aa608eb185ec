"""Where client turns run. The federation talks to this interface only:

``train(round, payload, jobs)`` and ``evaluate(round, payload, jobs)`` take ``jobs`` as
``[(client_id, state), ...]`` and return results in the same order; ``fetch_states(states)``
turns the states it returned into plain dicts for a checkpoint; ``close()`` frees resources.
A runtime may keep client states wherever it likes (the state objects it returns are opaque
to the federation, which only stores and hands them back; plain dicts are accepted too).
"""
from __future__ import annotations

from ..errors import ConfigError


def build_runtime(cfg, data):
    if cfg.runtime == "local":
        from .local import LocalRuntime
        return LocalRuntime(cfg, data)
    if cfg.runtime == "ray":
        from .ray import RayRuntime
        return RayRuntime(cfg, data)
    raise ConfigError(f"unknown runtime '{cfg.runtime}'")
