"""Frozen-feature caching.

A linear probe trains only the head, so the backbone's features of an example
never change: they are computed once, in the first epoch, and reused every
epoch after (and in validation and test). Lightning and torch have no such
cache, so it is written here. Features are kept per example id on the CPU,
trimmed to the example's own length, and padded again to each batch's
longest example; the content mask keeps padding out of pooling.

Assumes that an id always brings the same input: no training-time
augmentation or random cropping (PeftModule refuses an augmenting data module).
Memory: one ``[T, D]`` float tensor per example (and per layer with the
weighted layer sum).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from peftlab.backbone import Features


class FeatureCache:
    def __init__(self) -> None:
        self.store: dict[str, tuple[Tensor, Tensor, Tensor | None, list[Tensor] | None]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.store)

    @torch.no_grad()
    def _compute(self, backbone: nn.Module, batch: dict[str, Any], output_layers: bool) -> None:
        f = backbone(batch, output_layers=output_layers)
        for i, id_ in enumerate(batch["ids"]):
            valid = f.mask[i].nonzero()
            length = int(valid.max()) + 2 if len(valid) else f.mask.shape[1]  # keep a trailing special token
            length = min(length, f.mask.shape[1])
            self.store[id_] = (f.hidden[i, :length].cpu(), f.mask[i, :length].cpu(),
                               None if f.cls is None else f.cls[i].cpu(),
                               None if f.layers is None else [x[i, :length].cpu() for x in f.layers])

    def features(self, backbone: nn.Module, batch: dict[str, Any], output_layers: bool) -> Features:
        ids = batch["ids"]
        missing = [i for i, id_ in enumerate(ids) if id_ not in self.store]
        self.misses += len(missing)
        self.hits += len(ids) - len(missing)
        if missing:
            self._compute(backbone, batch, output_layers)
        rows = [self.store[id_] for id_ in ids]
        device = next(backbone.parameters()).device
        width = max(r[0].shape[0] for r in rows)

        def stack(tensors: list[Tensor], fill: float | bool) -> Tensor:
            out = tensors[0].new_full((len(tensors), width) + tuple(tensors[0].shape[1:]), fill)
            for i, t in enumerate(tensors):
                out[i, : t.shape[0]] = t
            return out.to(device)

        hidden = stack([r[0] for r in rows], 0.0)
        mask = stack([r[1] for r in rows], False)
        cls = None if rows[0][2] is None else torch.stack([r[2] for r in rows]).to(device)
        layers = None
        if rows[0][3] is not None:
            layers = [stack([r[3][k] for r in rows], 0.0) for k in range(len(rows[0][3]))]
        return Features(hidden=hidden, mask=mask, cls=cls, layers=layers)
