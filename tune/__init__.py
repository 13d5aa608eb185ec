"""Ray Tune sweeps over pflalign experiments (``pflalign tune``).

``spec`` reads and validates sweep files without Ray (bad input fails before anything
starts); ``runner`` runs them with Ray Tune (imported lazily); ``trial`` is the trainable.
"""
from .spec import Sweep, load_sweep

__all__ = ["Sweep", "load_sweep"]
