"""Where client turns run. The federation talks to this interface only:

``train(round, payload, jobs)`` and ``evaluate(round, payload, jobs)`` take ``jobs`` as
``[(client_id, state handle), ...]`` and return results in the same order (train: pairs of
(upload, new handle); ``evaluate(..., new=True)``: held-out clients, served as newcomers from
``payload`` alone, handles ignored); its workers turn handles into states and back through ``io``
(``store``); ``fetch_states(handles)`` turns memory-store handles into state dicts for a
checkpoint; ``close()`` frees resources.
"""
from __future__ import annotations

from ..errors import ConfigError


def build_runtime(cfg, data, io=None):
    """The runtime of ``cfg.runtime``; ``io`` is how its workers read and write client states
    (``store.MemoryIO`` or ``store.DiskIO``)."""
    if cfg.runtime == "local":
        from .local import LocalRuntime
        return LocalRuntime(cfg, data, io)
    if cfg.runtime == "ray":
        from .ray import RayRuntime
        return RayRuntime(cfg, data, io)
    raise ConfigError(f"unknown runtime '{cfg.runtime}'")
