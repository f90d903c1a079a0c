"""Pooling and task heads, shared by every domain."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from peftlab.backbone import Features
from peftlab.tasks import PER_TOKEN_TASK_TYPES, check_task_type

POOLINGS = ("cls", "mean", "attention")
PAIR_COMBINATIONS = ("symmetric", "ordered", "both_orders")


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


class PairCombination(nn.Module):
    """The pooled embeddings of a pair's two sides -> one input of the output layers.

    A pair batch holds the first sides' rows, then the second sides' (``[2B, D]``).
    ``symmetric``: ``[a + b, a * b, |a - b|]``, the same for both orders by
    construction (PPI is undirected). ``ordered``: ``[a, b, a * b, |a - b|]``,
    for directed pairs. ``both_orders``: the ordered features of ``(a, b)`` and
    ``(b, a)``, whose outputs the head averages (symmetric by averaging, as
    Sledzieski et al.'s and D-SCRIPT's heads are symmetric).
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind not in PAIR_COMBINATIONS:
            raise ValueError(f"pair_combination must be one of {PAIR_COMBINATIONS}, got {kind!r}")
        self.kind = kind
        self.width = 3 if kind == "symmetric" else 4  # in multiples of the embedding width

    def forward(self, pooled: Tensor) -> list[Tensor]:
        """One ``[B, width * D]`` input per order to average over (two for ``both_orders``)."""
        if pooled.shape[0] % 2:
            raise ValueError(f"a pair batch holds 2B rows (first sides, then second sides), got {pooled.shape[0]}")
        a, b = pooled.chunk(2)
        if self.kind == "symmetric":
            return [torch.cat([a + b, a * b, (a - b).abs()], dim=-1)]
        orders = [(a, b), (b, a)] if self.kind == "both_orders" else [(a, b)]
        return [torch.cat([x, y, x * y, (x - y).abs()], dim=-1) for x, y in orders]


class TaskHead(nn.Module):
    """An optional weighted layer sum, pooling (for sequence tasks), an optional
    hidden layer and the output layer.

    With ``pair_combination`` the batch holds pairs (``2B`` rows, see
    :class:`PairCombination`) and the output is one row per pair.

    Outputs ``[B, K]`` for sequence tasks and ``[B, T, K]`` for per-token
    ones (:data:`peftlab.tasks.PER_TOKEN_TASK_TYPES`).
    """

    def __init__(self, dim: int, task_type: str, num_outputs: int, pooling: str = "mean",
                 hidden_dim: int | None = None, dropout: float = 0.1, weighted_layers: int | None = None,
                 pair_combination: str | None = None) -> None:
        super().__init__()
        self.layer_sum = LayerWeightedSum(weighted_layers, dim) if weighted_layers else None
        self.task_type = check_task_type(task_type)
        self.per_token = task_type in PER_TOKEN_TASK_TYPES
        self.pool = None if self.per_token else Pooling(pooling, dim)
        if pair_combination is not None and self.per_token:
            raise ValueError(f"pairs are classified or scored as a whole; {task_type} is a per-token task")
        self.pair = PairCombination(pair_combination) if pair_combination is not None else None
        if self.pair is not None:
            dim = dim * self.pair.width
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
        if self.pair is None:
            return self.mlp(x)
        outputs = [self.mlp(combined) for combined in self.pair(x)]
        return outputs[0] if len(outputs) == 1 else torch.stack(outputs).mean(0)
