"""Frozen-feature caching.

A linear probe trains only the head, so the backbone's features of an example
never change: they are computed once, in the first epoch, and reused every
epoch after (and in validation and test). Lightning and torch have no such
cache, so it is written here. Features are kept per example id on the CPU,
trimmed to the example's own length, and padded again to each batch's
longest example; the content mask keeps padding out of pooling.

Each entry records a digest of the example's input, so an id whose input
changed is recomputed; training-time augmentation would still make every epoch
recompute, so PeftModule refuses an augmenting data module. The store
(:mod:`peftlab.model.example_store`) is shared with the frozen-prefix cache.
Memory: one ``[T, D]`` float tensor per example (and per layer with the
weighted layer sum).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peftlab.backbone import Features
from peftlab.model.example_store import ExampleStore, input_digest, pad_rows


class FeatureCache:
    """A linear probe's features per example (see the module docstring), in an
    :class:`~peftlab.model.example_store.ExampleStore` (memory by default; ``directory``,
    ``budget_mb`` and ``dtype`` as there)."""

    def __init__(self, directory: str | None = None, budget_mb: float | None = None,
                 dtype: torch.dtype | None = None) -> None:
        self.store = ExampleStore(directory, budget_mb, dtype)

    def __len__(self) -> int:
        return len(self.store)

    @property
    def hits(self) -> int:
        return self.store.hits

    @property
    def misses(self) -> int:
        return self.store.misses

    @torch.no_grad()
    def _compute(self, backbone: nn.Module, batch: dict[str, Any], output_layers: bool,
                 digests: list[str]) -> list[list]:
        """Run the backbone on the batch, store each example's features and return them."""
        f = backbone(batch, output_layers=output_layers)
        entries = []
        for i, id_ in enumerate(batch["ids"]):
            valid = f.mask[i].nonzero()
            length = int(valid.max()) + 2 if len(valid) else f.mask.shape[1]  # keep a trailing special token
            length = min(length, f.mask.shape[1])
            layers = [] if f.layers is None else [x[i, :length] for x in f.layers]
            entries.append([f.hidden[i, :length], f.mask[i, :length], None if f.cls is None else f.cls[i], *layers])
            self.store.put(id_, digests[i], entries[-1])
        return entries

    def features(self, backbone: nn.Module, batch: dict[str, Any], output_layers: bool) -> Features:
        ids = batch["ids"]
        keys = tuple(getattr(backbone, "input_keys", ()) or ())
        padding = getattr(backbone, "input_padding", None)
        digests = [input_digest(batch, i, keys, padding) for i in range(len(ids))]
        rows = [self.store.get(id_, d) for id_, d in zip(ids, digests)]
        if any(r is None for r in rows):
            rows = self._compute(backbone, batch, output_layers, digests)
        device = next(backbone.parameters()).device
        dtype = next(backbone.parameters()).dtype
        cls = None if rows[0][2] is None else torch.stack([r[2] for r in rows]).to(device, dtype)
        layers = [pad_rows([r[3 + k] for r in rows], 0.0, device).to(dtype) for k in range(len(rows[0]) - 3)]
        return Features(hidden=pad_rows([r[0] for r in rows], 0.0, device).to(dtype),
                        mask=pad_rows([r[1] for r in rows], False, device), cls=cls,
                        layers=layers if output_layers else None)
