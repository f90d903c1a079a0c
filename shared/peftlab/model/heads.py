"""Pooling and task heads, shared by every domain."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from peftlab.backbone import Features
from peftlab.tasks import PER_TOKEN_TASK_TYPES, check_task_type

POOLINGS = ("cls", "mean", "attention")


class Pooling(nn.Module):
    """Sequence features ``[B, T, D]`` -> ``[B, D]``.

    ``cls``: the summary token (class token / BOS); ``mean``: mean over content
    tokens (the mask excludes padding and special tokens); ``attention``: a
    learned query scores each content token, softmax-weighted sum.
    """

    def __init__(self, kind: str, dim: int) -> None:
        super().__init__()
        if kind not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {kind!r}")
        self.kind = kind
        self.score = nn.Linear(dim, 1) if kind == "attention" else None

    def forward(self, f: Features) -> Tensor:
        if self.kind == "cls":
            if f.cls is None:
                raise ValueError("pooling='cls' needs a backbone with a class/BOS token; use 'mean' or 'attention'")
            return f.cls
        mask = f.mask.unsqueeze(-1).to(f.hidden.dtype)
        if self.kind == "mean":
            return (f.hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        scores = self.score(f.hidden).squeeze(-1).masked_fill(~f.mask, torch.finfo(f.hidden.dtype).min)
        weights = scores.softmax(dim=1).unsqueeze(-1) * mask
        return (f.hidden * weights).sum(1)


class LayerWeightedSum(nn.Module):
    """SUPERB's featurizer (Yang et al. 2021): a softmax-weighted sum of every
    layer's states (embeddings included), each layer-normalised first. Chen et
    al. 2022 found it strong alone and with adapters. The weights start equal."""

    def __init__(self, num_layers: int, dim: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_layers))
        self.dim = dim

    def forward(self, f: Features) -> Features:
        if f.layers is None:
            raise ValueError("the weighted layer sum needs per-layer states; this backbone gave none")
        if len(f.layers) != len(self.weights):
            raise ValueError(f"the weighted layer sum was built for {len(self.weights)} layers, got {len(f.layers)}")
        stacked = torch.stack([nn.functional.layer_norm(x, (self.dim,)) for x in f.layers])  # [L, B, T, D]
        hidden = (self.weights.softmax(0).view(-1, 1, 1, 1) * stacked).sum(0)
        return Features(hidden=hidden, mask=f.mask, cls=hidden[:, 0] if f.cls is not None else None, layers=f.layers)


class TaskHead(nn.Module):
    """An optional weighted layer sum, pooling (for sequence tasks), an optional
    hidden layer and the output layer.

    Outputs ``[B, K]`` for sequence tasks and ``[B, T, K]`` for per-token
    ones (:data:`peftlab.tasks.PER_TOKEN_TASK_TYPES`).
    """

    def __init__(self, dim: int, task_type: str, num_outputs: int, pooling: str = "mean",
                 hidden_dim: int | None = None, dropout: float = 0.1, weighted_layers: int | None = None) -> None:
        super().__init__()
        self.layer_sum = LayerWeightedSum(weighted_layers, dim) if weighted_layers else None
        self.task_type = check_task_type(task_type)
        self.per_token = task_type in PER_TOKEN_TASK_TYPES
        self.pool = None if self.per_token else Pooling(pooling, dim)
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if hidden_dim:
            layers += [nn.Linear(dim, hidden_dim), nn.GELU(), nn.Dropout(dropout)]
            dim = hidden_dim
        layers.append(nn.Linear(dim, num_outputs))
        self.mlp = nn.Sequential(*layers)

    def forward(self, f: Features) -> Tensor:
        if self.layer_sum is not None:
            f = self.layer_sum(f)
        x = f.hidden if self.per_token else self.pool(f)
        return self.mlp(x)
