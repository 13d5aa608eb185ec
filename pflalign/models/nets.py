"""The networks. Normalization is GroupNorm (never BatchNorm): batch statistics are
client-specific buffers that averaging would corrupt, and parameters-only state keeps every
algorithm's bookkeeping to ``named_parameters()``."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError


class SplitModel(nn.Module):
    def __init__(self, body: nn.Module, head: nn.Module):
        super().__init__()
        self.body, self.head = body, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _out_features(body: nn.Module, input_shape: tuple[int, ...]) -> int:
    with torch.no_grad():
        return body(torch.zeros(1, *input_shape)).shape[1]


def logreg(cfg, input_shape, num_classes):
    """Multinomial logistic regression (FedProx's ``mclr``): one linear layer on the flattened
    input. The head is that layer; the body only flattens and has no parameters, so methods
    that share, keep or train the body refuse this model (``Algorithm.needs_parts``)."""
    return SplitModel(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


def mlp(cfg, input_shape, num_classes):
    """Fully connected net: body = hidden layers, head = the last linear layer."""
    if not cfg.hidden:
        raise ConfigError("model.hidden needs at least one width for mlp")
    widths = [math.prod(input_shape), *cfg.hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return SplitModel(nn.Sequential(*layers), nn.Linear(widths[-1], num_classes))


def cnn1d(cfg, input_shape, num_classes):
    """1-D CNN for sequence-like features (MNIST-1D): three strided convs, then a linear head."""
    if len(input_shape) not in (1, 2):
        raise ConfigError(f"model cnn1d needs 1-D inputs, the data has shape {input_shape}")
    channels = 1 if len(input_shape) == 1 else input_shape[0]
    w = cfg.width or 32
    body = nn.Sequential(
        nn.Unflatten(1, (channels, -1)) if len(input_shape) == 1 else nn.Identity(),
        nn.Conv1d(channels, w, 5, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(w, w, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(w, w, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
    )
    return SplitModel(body, nn.Linear(_out_features(body, input_shape), num_classes))


def cnn(cfg, input_shape, num_classes):
    """The FedAvg CNN of the PFLlib leaderboard: conv32-pool-conv64-pool-fc512, linear head."""
    if len(input_shape) != 3:
        raise ConfigError(f"model cnn needs image inputs (C,H,W), the data has shape {input_shape}")
    w = cfg.width or 32
    body = nn.Sequential(
        nn.Conv2d(input_shape[0], w, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(w, 2 * w, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
    )
    body.append(nn.Linear(_out_features(body, input_shape), 512))
    body.append(nn.ReLU())
    return SplitModel(body, nn.Linear(512, num_classes))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(2, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(2, cout)
        self.skip = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(2, cout))

    def forward(self, x):
        out = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(out)) + self.skip(x))


def resnet18(cfg, input_shape, num_classes):
    """ResNet-18 (CIFAR stem: 3x3 conv, no max-pool) with GroupNorm(2 groups), width 64 by default."""
    if len(input_shape) != 3:
        raise ConfigError(f"model resnet18 needs image inputs (C,H,W), the data has shape {input_shape}")
    w = cfg.width or 64
    layers: list[nn.Module] = [nn.Conv2d(input_shape[0], w, 3, 1, 1, bias=False), nn.GroupNorm(2, w), nn.ReLU()]
    cin = w
    for i, cout in enumerate([w, 2 * w, 4 * w, 8 * w]):
        stride = 1 if i == 0 else 2
        layers += [_Block(cin, cout, stride), _Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return SplitModel(nn.Sequential(*layers), nn.Linear(cin, num_classes))


class _CharLSTMBody(nn.Module):
    """Token ids [N, L] -> embedding -> 2-layer LSTM -> hidden state after the last token [N, H]."""

    def __init__(self, vocab: int, embed_dim: int, hidden: int, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers=layers, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point() or x.is_complex():
            raise RuntimeError(f"charlstm needs integer token ids, got {x.dtype} inputs")
        out, _ = self.lstm(self.embed(x.long()))
        return out[:, -1]


def charlstm(cfg, input_shape, num_classes):
    """LEAF's Shakespeare model: embedding (model.embed_dim, 8) + 2-layer LSTM (model.width,
    256) in the body, a linear head over the vocabulary. Inputs are token ids [N, seq_len]
    whose vocabulary is the class set (next-token prediction); no normalization layers."""
    if len(input_shape) != 1:
        raise ConfigError(f"model charlstm needs token sequences (L,), the data has shape {input_shape}")
    hidden = cfg.width or 256
    return SplitModel(_CharLSTMBody(num_classes, cfg.embed_dim, hidden), nn.Linear(hidden, num_classes))
