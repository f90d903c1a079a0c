"""Per-example tensors computed once and reused: the store behind both caches
(:class:`peftlab.model.cache.FeatureCache` for linear probes,
:class:`peftlab.model.prefix_cache.PrefixCache` for frozen prefixes).

Each entry is keyed by the example id and carries a digest of the input it
was computed from (:func:`input_digest`), so an example whose input changed
(another data set with the same ids, a random crop) is never served stale: the
entry is recomputed and replaced. Entries live in memory under a byte budget
(past it, examples are not stored and are recomputed when seen again), or on
disk, one file per example, renamed into place once complete (not synced to
disk: a cache file lost to a crash is recomputed) and read back in torch's
weights-only mode; a file that cannot be read counts as missing. Floating tensors are stored in ``dtype`` (e.g. float16 on
disk) and handed back in the dtype they were given in.
"""

from __future__ import annotations

import hashlib
import os
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

Entry = list[Tensor | None]


def _trim_padding(row: Tensor, pad: float | int | None) -> Tensor:
    """``row`` without the run of ``pad`` values at its end (for 1-D rows; None: as it is)."""
    if pad is None or row.ndim != 1 or len(row) == 0:
        return row
    content = (row != pad).nonzero()
    return row[: int(content.max()) + 1] if len(content) else row[:0]


def input_digest(batch: dict[str, Any], index: int, keys: tuple[str, ...],
                 padding: dict[str, float | int] | None = None) -> str:
    """A digest of example ``index``'s inputs in ``batch`` (the ``keys`` a backbone reads), whatever
    padding the batch gave it: rows are cut to ``lengths`` where the batch has them, else trailing
    ``padding[key]`` values are left out (a key without a padding value is taken as it is, so the
    same example padded otherwise gets another digest and is recomputed, never mixed up)."""
    h = hashlib.blake2b(digest_size=16)
    lengths = batch.get("lengths")
    for key in keys:
        row = batch[key][index].detach()
        if lengths is not None and row.ndim == 1:
            row = row[: int(lengths[index])]
            h.update(f"len={int(lengths[index])}".encode())
        else:
            row = _trim_padding(row, (padding or {}).get(key))
        h.update(f"{key}:{row.dtype}:{tuple(row.shape)}".encode())
        h.update(row.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def pad_rows(rows: list[Tensor], fill: float | bool, device: torch.device) -> Tensor:
    """Stack ``[T_i, ...]`` tensors into ``[B, max T_i, ...]``, filling the rest with ``fill``."""
    width = max(r.shape[0] for r in rows)
    out = rows[0].new_full((len(rows), width) + tuple(rows[0].shape[1:]), fill)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
    return out.to(device)


class ExampleStore:
    """Tensors per example id, in memory (under ``budget_mb``) or in ``directory``.

    Args:
        directory: keep entries on disk here (created); None: in memory.
        budget_mb: in memory, the most megabytes stored (None: no limit).
        dtype: the dtype floating tensors are stored in (None: as given).
    """

    def __init__(self, directory: str | Path | None = None, budget_mb: float | None = None,
                 dtype: torch.dtype | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self.budget_bytes = None if budget_mb is None else int(budget_mb * 2**20)
        self.dtype = dtype
        self.memory: dict[str, tuple[str, Entry]] = {}
        self.bytes = 0
        self.hits = self.misses = self.stale = self.over_budget = 0

    def __len__(self) -> int:
        if self.directory is not None:
            return sum(1 for _ in self.directory.glob("*.pt"))
        return len(self.memory)

    def _file(self, id_: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{hashlib.blake2b(str(id_).encode(), digest_size=16).hexdigest()}.pt"

    def _read(self, id_: str) -> tuple[str, Entry] | None:
        if self.directory is None:
            return self.memory.get(id_)
        file = self._file(id_)
        if not file.is_file():
            return None
        try:
            saved = torch.load(file, map_location="cpu", weights_only=True)
            return saved["digest"], saved["tensors"]
        except Exception:  # truncated or foreign: recomputed and rewritten
            return None

    def get(self, id_: str, digest: str) -> Entry | None:
        """The entry of ``id_`` if it was computed from an input with this ``digest``, else None."""
        found = self._read(id_)
        if found is None or found[0] != digest:
            self.misses += 1
            self.stale += found is not None
            return None
        self.hits += 1
        return found[1]

    def put(self, id_: str, digest: str, tensors: Entry) -> None:
        stored = [None if t is None else self._storable(t) for t in tensors]
        if self.directory is not None:
            file = self._file(id_)
            tmp = file.with_name(f".{file.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
            torch.save({"digest": digest, "tensors": stored}, tmp)
            os.replace(tmp, file)
            return
        size = sum(t.numel() * t.element_size() for t in stored if t is not None)
        old = self.memory.pop(id_, None)
        if old is not None:
            self.bytes -= sum(t.numel() * t.element_size() for t in old[1] if t is not None)
        if self.budget_bytes is not None and self.bytes + size > self.budget_bytes:
            if not self.over_budget:
                warnings.warn(f"the in-memory example cache is full ({self.budget_bytes / 2**20:.0f} MB): examples "
                              f"past it are recomputed whenever they are seen (raise the budget, or cache on disk)",
                              stacklevel=2)
            self.over_budget += 1
            return
        self.memory[id_] = (digest, stored)
        self.bytes += size

    def _storable(self, t: Tensor) -> Tensor:
        t = t.detach().to("cpu")
        if self.dtype is not None and t.is_floating_point():
            t = t.to(self.dtype)
        return t.clone() if t.untyped_storage().nbytes() > t.numel() * t.element_size() else t
