"""An example pflalign plug-in package: an algorithm, a model and a dataset of one's own.

Installed, its entry points (pyproject.toml) make them ``algorithm=fedavgm``,
``model.name=gelu_mlp`` and ``data.dataset=blobs``; without installing, on ``PYTHONPATH``, the
same objects are ``pflalign_example.algorithm:FedAvgM``, ``pflalign_example.model:gelu_mlp`` and
``pflalign_example.data:blobs``.
"""
