"""Frozen-prefix caching: the states entering the first trained block, computed
once per example and reused in later epochs.

When every trained parameter sits at or above block ``k`` (LoRA on the last 8
of 33 ESM-2 blocks, ``partial``) and nothing below ``k`` draws random numbers
or reads the rest of the batch (no active dropout, no batch norm) or is
changed by the method (no trained parameter, no hook), then the states
entering block ``k`` of an example are a function of that example's input
alone. :func:`plan_prefix` finds the deepest such point, or the reason there is
none; :class:`PrefixCache` stores those states per example (an
:class:`~peftlab.model.example_store.ExampleStore`: in memory under a budget,
or on disk, in float16 by default there) and starts the backbone's forward
from them. A speech encoder's frozen convolutional front end is the same
mechanism at depth ``FRONT_END``: its output is cached for every method that
leaves it frozen, also when the blocks above it all train.

A disk cache lives in ``<directory>/<key>/``, where the key hashes what the
states depend on besides the example: the backbone's identity (class, sizes,
a fingerprint of its weights before the method), its options (attention
implementation, waveform normalisation...), the depth, the stored dtype and
the torch version. Each entry also records a digest of the example's input,
so changed data under the same ids is recomputed, never served stale.

Data augmentation would make the cached states wrong for later epochs:
PeftModule refuses (``true``) or skips (``auto``) the cache for an augmenting
data module.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peftlab.backbone import FRONT_END, Backbone, Features, PrefixStates
from peftlab.model.example_store import ExampleStore, input_digest, pad_rows

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def depth_name(depth: int) -> str:
    return "the front end's output" if depth == FRONT_END else f"the states entering block {depth}"


def _under(name: str, roots: list[str]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots)


def prefix_modules(backbone: Backbone, depth: int) -> list[tuple[str, nn.Module]]:
    """The modules whose own parameters and behaviour the cached prefix at ``depth`` includes
    (names relative to ``backbone``); containers of later blocks count for their own parameters."""
    named = list(backbone.named_modules())
    if depth == FRONT_END:
        return [(n, m) for n, m in named if _under(n, [backbone.front_end_path])]
    later = backbone.block_names()[depth:] + list(backbone.after_block_paths)
    if depth > 0:  # token hooks act before each block: a prefix that skips block 0 would skip them
        return [(n, m) for n, m in named if not _under(n, later)]
    return [(n, m) for n, m in named if not _under(n, later + ["token_hooks"])]


def first_trained_block(backbone: Backbone) -> tuple[int, str | None]:
    """The lowest block holding a trained parameter (token hooks count as block 0), with that
    parameter's name; ``(num_blocks, None)`` when no block trains."""
    if any(p.requires_grad for p in backbone.token_hooks.parameters()) or len(backbone.token_hooks):
        name = next((f"token_hooks.{n}" for n, p in backbone.token_hooks.named_parameters()), "token_hooks")
        return 0, name
    for i, block_name in enumerate(backbone.block_names()):
        for n, p in backbone.get_submodule(block_name).named_parameters():
            if p.requires_grad:
                return i, f"{block_name}.{n}"
    return backbone.num_blocks, None


def _module_refusal(name: str, module: nn.Module, where: str) -> str | None:
    """Why ``module`` (in the prefix) makes it untrainable-but-not-cacheable, or None."""
    label = name or "the backbone itself"
    trained = [n for n, p in module.named_parameters(recurse=False) if p.requires_grad]
    if trained:
        return f"parameter {name + '.' if name else ''}{trained[0]} trains, {where}"
    if module._forward_hooks or module._forward_pre_hooks:
        return f"module {label} has a forward hook (a method's addition), {where}"
    if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
        return f"dropout module {label} (p={module.p}) is active {where}: set the backbone's dropout to 0"
    p = getattr(module, "dropout", None)
    if isinstance(p, float) and p > 0:
        return f"module {label} applies dropout (p={p}) {where}: set the backbone's dropout to 0"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return f"batch norm {label} normalises with the batch's statistics while training, {where}"
    return None


def prefix_refusal(backbone: Backbone, depth: int) -> str | None:
    """Why ``depth`` cannot be cached (see the module docstring), or None."""
    refusal = backbone.prefix_refusal(depth)
    if refusal:
        return refusal
    where = "inside the front end" if depth == FRONT_END else f"below block {depth}"
    for name, module in prefix_modules(backbone, depth):
        refusal = _module_refusal(name, module, where)
        if refusal:
            return refusal
    return None


@dataclass
class PrefixPlan:
    """Where to cache (``depth``, None when nowhere) and, when nowhere, why (``reason``)."""

    depth: int | None
    reason: str = ""


def plan_prefix(backbone: Backbone, output_layers: bool = False) -> PrefixPlan:
    """The deepest point below every trained parameter whose states can be cached: the input
    of the first trained block, else a frozen front end; or why neither can."""
    first, trained = first_trained_block(backbone)
    reasons = []
    candidates = [first] + ([FRONT_END] if backbone.front_end_path else [])
    for depth in candidates:
        if depth == 0 and not backbone.front_end_path:  # only an embedding below: nothing worth keeping
            reasons.append(f"the first trained parameter ({trained}) is in block 0: no frozen block below it")
            continue
        if output_layers and depth > 0:
            reasons.append(f"layer_weighted_sum reads every block's output, not only from block {depth} on")
            continue
        refusal = prefix_refusal(backbone, depth)
        if refusal is None:
            return PrefixPlan(depth)
        reasons.append(f"{depth_name(depth)}: {refusal}")
    return PrefixPlan(None, "; ".join(reasons))


def cache_key(identity: dict[str, Any], spec: dict[str, Any], depth: int, dtype: torch.dtype) -> str:
    """What a cached prefix depends on besides the example (see the module docstring)."""
    options = {k: v for k, v in spec.get("init_args", {}).items() if k != "gradient_checkpointing"}
    facts = {"backbone": identity, "options": options, "depth": depth, "dtype": str(dtype),
             "torch": torch.__version__}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:20]


class PrefixCache:
    """Cached states at ``depth`` per example id (see the module docstring).

    Args:
        depth: a block index, or ``FRONT_END``.
        key: :func:`cache_key` (names the folder of a disk cache).
        directory: keep the states on disk under ``directory/key``; None: in memory.
        budget_mb: in memory, the most megabytes kept.
        dtype: the dtype states are kept in (default float32 in memory, float16 on disk).
    """

    def __init__(self, depth: int, key: str, directory: str | None = None, budget_mb: float | None = None,
                 dtype: torch.dtype | None = None) -> None:
        self.depth, self.key = depth, key
        if dtype is None:
            dtype = torch.float16 if directory is not None else torch.float32
        self.store = ExampleStore(None if directory is None else Path(directory) / key, budget_mb, dtype)

    def __len__(self) -> int:
        return len(self.store)

    def _layout(self, backbone: Backbone) -> int:
        """Where tokens sit in the cached states: the backbone's layout, batch-first for a front end."""
        return 1 if self.depth == FRONT_END else backbone.seq_dim

    def _compute(self, backbone: Backbone, batch: dict[str, Any], digests: list[str]) -> PrefixStates:
        x, attn_mask, content_mask = backbone.prefix_states(batch, self.depth)
        rows = x.transpose(0, 1) if self._layout(backbone) == 0 else x
        for i, id_ in enumerate(batch["ids"]):
            kept = attn_mask[i].nonzero()
            n = int(kept.max()) + 1 if len(kept) else attn_mask.shape[1]
            self.store.put(id_, digests[i], [rows[i, :n], attn_mask[i, :n], content_mask[i, :n]])
        return PrefixStates(self.depth, x, attn_mask, content_mask)

    def states(self, backbone: Backbone, batch: dict[str, Any]) -> PrefixStates:
        """The batch's cached prefix states, computing (and storing) them when any example lacks them."""
        ids = batch["ids"]
        digests = [input_digest(batch, i, tuple(backbone.input_keys), backbone.input_padding)
                   for i in range(len(ids))]
        rows = [self.store.get(id_, d) for id_, d in zip(ids, digests)]
        if any(r is None for r in rows):
            return self._compute(backbone, batch, digests)
        device, dtype = _device_and_dtype(backbone)
        x = pad_rows([r[0] for r in rows], 0.0, device).to(dtype)
        if self._layout(backbone) == 0:
            x = x.transpose(0, 1)
        return PrefixStates(self.depth, x, pad_rows([r[1] for r in rows], False, device),
                            pad_rows([r[2] for r in rows], False, device))

    def forward(self, backbone: Backbone, batch: dict[str, Any], output_layers: bool = False) -> Features:
        return backbone(batch, output_layers=output_layers, prefix=self.states(backbone, batch))


def _device_and_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(module.parameters())
    floating = next((q.dtype for q in module.parameters() if q.is_floating_point()), p.dtype)
    return p.device, floating

