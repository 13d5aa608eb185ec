"""pflalign: personalized federated learning with gradient alignment (pFLAlign) and pFL baselines."""

__version__ = "0.1.0"
