"""The Backbone contract that every domain implements.

A backbone maps a domain batch (a dict) to :class:`Features`. It also declares
what PEFT methods need to know about it, so that no method ever hard-codes a
backbone's module names:

* ``embed_dim``: width of the token states (channels of a CNN's last stage).
* ``blocks``: its blocks, in order: the ``nn.ModuleList`` at ``blocks_path``,
  or, for hierarchical models (Swin, ResNet), the modules named by
  ``block_names()``.
* ``seq_dim``: where tokens sit in the state that flows between blocks
  (1 for batch-first ``[B, T, D]``, 0 for time-first ``[T, B, D]`` such as
  fair-esm).
* ``num_prefix_tokens``: summary tokens at the start (class token, BOS) that
  inserted tokens (prompts) go after.
* ``target_presets``: named groups of block-relative module names
  (``attention``, ``attention+mlp``, ``all-linear``, ``mlp``, ``conv``...);
  ``default_targets`` names the one methods use when given none.
* ``token_sequence``: False for backbones whose blocks do not run over one
  token sequence (CNNs, Swin's windows); methods that insert tokens refuse them.
* ``adapter_sites``: block-relative names of the attention output projection
  and the MLP input / output layers, where bottleneck adapters attach.

A backbone implements ``embed``, ``run_block`` and (optionally)
``final_norm``; the shared ``forward`` here runs the blocks, gives token hooks
(prompt tuning) their turn before each block, strips the tokens they inserted
and collects per-layer states.

A forward may also start from cached states (``forward(batch, prefix=PrefixStates(...))``):
the states entering block ``k``, or a frozen front end's output; see
:mod:`peftlab.model.prefix_cache` for when that is allowed and what a backbone
declares to opt in (``resumes_at_blocks``, ``after_block_paths``, ``input_padding``,
``front_end_path`` with ``front_end`` / ``embed_front_end``).

Gradient (activation) checkpointing is implemented here, once: with
``gradient_checkpointing`` on (every backbone takes it as an ``__init__``
option), while training with gradients enabled, each block call that
``run_block`` makes goes through ``torch.utils.checkpoint.checkpoint``
(``use_reentrant=False``): the block's activations are dropped after the
forward and recomputed in the backward. Only the block call is checkpointed,
not the rest of ``run_block``, so the state a backbone keeps between blocks
(position biases, masks, counters) is not replayed by the recomputation. The
option changes memory and time, never the weights or the values: it is in the
backbone's ``spec`` (init args) but not in its ``identity``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from peftlab.classpath import public_class_path


@dataclass
class Features:
    """What a backbone returns.

    hidden: ``[B, T, D]`` final token states (batch-first, after the final norm).
    mask: ``[B, T]`` bool, True where a token is content (pooled and labelled);
        False for padding and special tokens.
    cls: ``[B, D]`` the summary token's final state (class token, BOS), or None.
    layers: per-layer states ``[B, T, D]`` (embeddings, then each block's
        output), only when asked for.
    skips: dense backbones (segmentation): what their ``segmentation_head``
        decoder reads besides ``hidden``, in the order that backbone documents
        (e.g. the input image and intermediate encoder states); else None.
    """

    hidden: Tensor
    mask: Tensor
    cls: Tensor | None = None
    layers: list[Tensor] | None = None
    skips: list[Tensor] | None = None


#: the depth of a front end's output, before any block (see :meth:`Backbone.prefix_states`)
FRONT_END = -1


@dataclass
class PrefixStates:
    """Cached states a forward starts from: entering block ``depth`` in the backbone's layout
    (``depth == FRONT_END``: the front end's output, batch-first), with the ``[B, T]`` masks."""

    depth: int
    x: Tensor
    attn_mask: Tensor
    content_mask: Tensor


class TokenHook(nn.Module):
    """A module that may insert or rewrite tokens before each block.

    Tokens are inserted right after the backbone's prefix tokens; the backbone
    counts how many were inserted and strips them from its outputs, so that
    outputs stay aligned with the inputs.
    """

    def forward(self, block_index: int, x: Tensor, attn_mask: Tensor, backbone: "Backbone") -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class Backbone(nn.Module):
    """Base class of every backbone (see the module docstring for the contract)."""

    embed_dim: int
    blocks_path: str = "blocks"
    seq_dim: int = 1
    num_prefix_tokens: int = 0
    target_presets: dict[str, tuple[str, ...]] = {}
    default_targets: str = "attention"
    preset_notes: dict[str, str] = {}  # why a usual preset is missing on this backbone
    #: block-relative names of layers whose weights the block reads directly instead of calling them
    #: (fused attention kernels): injected layers and hooks there would never run, so methods skip them
    bypassed_modules: tuple[str, ...] = ()
    adapter_sites: dict[str, str] = {}
    token_sequence: bool = True
    #: recompute each block's activations in the backward instead of keeping them (set from ``__init__``)
    gradient_checkpointing: bool = False
    #: the batch keys ``embed`` reads (``tokens``, ``images``, ``waveforms``); a data module declares the
    #: keys its batches carry as its ``input_keys``, and a run whose data lacks one stops before training
    input_keys: tuple[str, ...] = ()
    #: the value each input key is padded with at the end of a row (ESM's padding token), so that
    #: caches recognise one example however a batch padded it
    input_padding: dict[str, float | int] = {}

    def __init__(self) -> None:
        super().__init__()
        self.token_hooks = nn.ModuleDict()
        self.init_args: dict[str, Any] = {}

    # ---- what a backbone implements ------------------------------------------------
    def embed(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(x, attn_mask, content_mask)``: the states entering block 0 in
        this backbone's layout, ``[B, T]`` True where a token may be attended to,
        and ``[B, T]`` True where a token is content."""
        raise NotImplementedError

    def run_block(self, block: nn.Module, x: Tensor, attn_mask: Tensor) -> Tensor:
        raise NotImplementedError

    def final_norm(self, x: Tensor) -> Tensor:
        return x

    def config(self) -> dict[str, Any]:
        """Architecture facts that identify this backbone (sizes, source)."""
        return {}

    def always_frozen(self) -> list[nn.Parameter]:
        """Parameters that stay frozen whatever the method (e.g. a speech
        encoder's convolutional front end); PeftModule freezes them after the
        method is applied."""
        return []

    # ---- resuming from cached states (frozen-prefix caching, :mod:`peftlab.model.prefix_cache`) ----
    #: True where ``forward`` may start at any block from cached states entering it
    resumes_at_blocks: bool = False
    #: why ``resumes_at_blocks`` is False (said when the prefix cache is asked for)
    resume_refusal: str = "its forward has not been split at its blocks for the frozen-prefix cache"
    #: modules that run after the last block (the final norm), relative to the backbone
    after_block_paths: tuple[str, ...] = ()
    #: the module of a frozen front end whose output can be cached (a speech encoder's CNN), else None
    front_end_path: str | None = None

    def front_end(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """``(features, valid, valid)``: the front end's output ``[B, F, C]`` (batch-first) and
        ``[B, F]`` True on valid frames. Backbones with a ``front_end_path`` implement it."""
        raise NotImplementedError

    def embed_front_end(self, features: Tensor, valid: Tensor, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """What ``embed`` returns, from the front end's output (see :meth:`front_end`)."""
        raise NotImplementedError

    def resume_at_block(self, index: int) -> None:
        """Reset the state a backbone keeps between blocks before a forward that starts at
        block ``index`` from cached states (a block counter, a position bias)."""

    def prefix_refusal(self, depth: int) -> str | None:
        """Why the states entering block ``depth`` (``FRONT_END``: the front end's output)
        cannot be cached and resumed from, or None."""
        if depth == FRONT_END:
            return None if self.front_end_path else f"{self.name} has no separate frozen front end"
        return None if self.resumes_at_blocks else f"{self.name}: {self.resume_refusal}"

    @torch.no_grad()
    def prefix_states(self, batch: dict[str, Any], depth: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(x, attn_mask, content_mask)`` entering block ``depth`` (this backbone's layout), or the
        front end's output for ``depth == FRONT_END``; token hooks do not run in a cached prefix."""
        if depth == FRONT_END:
            return self.front_end(batch)
        x, attn_mask, content_mask = self.embed(batch)
        for block in self.blocks[:depth]:
            x = self.run_block(block, x, attn_mask)
        return x, attn_mask, content_mask

    # ---- shared behaviour -------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.init_args.get("name", type(self).__name__))

    def block_names(self) -> list[str]:
        """Qualified names of the blocks, in order."""
        return [f"{self.blocks_path}.{i}" for i in range(len(self.get_submodule(self.blocks_path)))]

    @property
    def blocks(self) -> list[nn.Module]:
        return [self.get_submodule(n) for n in self.block_names()]

    @property
    def num_blocks(self) -> int:
        return len(self.block_names())

    def spec(self) -> dict[str, Any]:
        """``class_path`` + ``init_args``: enough to build this backbone again."""
        return {"class_path": public_class_path(type(self)), "init_args": dict(self.init_args)}

    def identity(self) -> dict[str, Any]:
        """Name, architecture and a fingerprint of the weights: what an adapter was trained on."""
        return {"class_path": self.spec()["class_path"], "name": self.name, "config": self.config(),
                "fingerprint": weights_fingerprint(self)}

    def _to_batch_first(self, x: Tensor) -> Tensor:
        return x.transpose(0, 1) if self.seq_dim == 0 else x

    def _strip_inserted(self, x: Tensor, n: int) -> Tensor:
        """Drop the ``n`` tokens that hooks inserted after the prefix tokens."""
        if n == 0:
            return x
        p = self.num_prefix_tokens
        keep = torch.cat([torch.arange(p), torch.arange(p + n, x.shape[self.seq_dim])]).to(x.device)
        return x.index_select(self.seq_dim, keep)

    def _entry(self, batch: dict[str, Any], prefix: "PrefixStates | None") -> tuple[Tensor, Tensor, Tensor, int]:
        """The states entering the first block to run, its masks and its index."""
        if prefix is None:
            return (*self.embed(batch), 0)
        if prefix.depth == FRONT_END:
            return (*self.embed_front_end(prefix.x, prefix.attn_mask, batch), 0)
        self.resume_at_block(prefix.depth)
        return prefix.x, prefix.attn_mask, prefix.content_mask, prefix.depth

    def forward(self, batch: dict[str, Any], output_layers: bool = False,
                prefix: "PrefixStates | None" = None) -> Features:
        """Run the backbone; with ``prefix`` (cached states entering block ``prefix.depth``, or the
        front end's output), start from those instead of embedding the batch."""
        x, attn_mask, content_mask, start = self._entry(batch, prefix)
        if output_layers and start > 0:
            raise ValueError(f"per-layer states were asked for, but the forward starts at block {start} "
                             f"from cached states")
        layers = [self._to_batch_first(x)] if output_layers else None
        inserted = 0
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks[start:], start=start):
            for hook in self.token_hooks.values():
                before = x.shape[self.seq_dim]
                x, attn_mask = hook(i, x, attn_mask, self)
                inserted += x.shape[self.seq_dim] - before
            x = self.run_block(CheckpointedBlock(block) if checkpointing else block, x, attn_mask)
            if layers is not None:
                layers.append(self._to_batch_first(self._strip_inserted(x, inserted)))
        hidden = self._to_batch_first(self.final_norm(self._strip_inserted(x, inserted)))
        cls = hidden[:, 0] if self.num_prefix_tokens > 0 else None
        return Features(hidden=hidden, mask=content_mask, cls=cls, layers=layers)


class CheckpointedBlock:
    """Stands in for a block inside ``run_block`` while gradient checkpointing
    is active: calling it runs the block under ``torch.utils.checkpoint``
    (non-reentrant, so frozen inputs and keyword arguments work and the RNG
    state is replayed for dropout); any other attribute is the block's."""

    def __init__(self, block: nn.Module) -> None:
        self.block = block

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return checkpoint(self.block, *args, use_reentrant=False, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.block, name)


# ---- targets: presets and layer subsets -> module names --------------------------------

def select_layers(num_blocks: int, layers: list[int] | str | None) -> list[int]:
    """Block indices from ``None`` (all), a list (negative counts from the end),
    or ``"last:N"`` / ``"first:N"``."""
    if layers is None:
        return list(range(num_blocks))
    if isinstance(layers, str):
        m = re.fullmatch(r"(last|first):(\d+)", layers.strip())
        if not m:
            raise ValueError(f"layers must be a list of block indices, 'last:N' or 'first:N', got {layers!r}")
        n = int(m.group(2))
        if not 1 <= n <= num_blocks:
            raise ValueError(f"layers={layers!r}: the backbone has {num_blocks} blocks")
        return list(range(num_blocks - n, num_blocks)) if m.group(1) == "last" else list(range(n))
    out = []
    for i in layers:
        j = i + num_blocks if i < 0 else i
        if not 0 <= j < num_blocks:
            raise ValueError(f"layer {i} is out of range: the backbone has {num_blocks} blocks")
        out.append(j)
    return sorted(set(out))


def resolve_targets(backbone: Backbone, targets: str | list[str] | None, layers: list[int] | str | None = None) -> list[str]:
    """Full module names (relative to ``backbone``) for a preset (``None``: the
    backbone's default preset) or a list of block-relative names, restricted to
    the chosen blocks."""
    if targets is None:
        targets = backbone.default_targets
    if isinstance(targets, str):
        if targets not in backbone.target_presets:
            if targets in backbone.preset_notes:
                raise ValueError(f"{backbone.name} has no target preset {targets!r}: {backbone.preset_notes[targets]}")
            raise ValueError(f"{type(backbone).__name__} has no target preset {targets!r}; "
                             f"presets: {', '.join(sorted(backbone.target_presets))}, or give a list of "
                             f"block-relative module names")
        suffixes = list(backbone.target_presets[targets])
    else:
        suffixes = list(targets)
    names = []
    block_names = backbone.block_names()
    for i in select_layers(len(block_names), layers):
        block = backbone.get_submodule(block_names[i])
        block_modules = dict(block.named_modules())
        for suffix in suffixes:
            if suffix not in block_modules:
                known = sorted(n for n, m in block.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv1d)))
                raise ValueError(f"block {i} of {type(backbone).__name__} has no module {suffix!r}; "
                                 f"its linear layers are: {', '.join(known)}")
            names.append(f"{block_names[i]}.{suffix}")
    return names


def weights_fingerprint(module: nn.Module, samples: int = 64) -> str:
    """A cheap, order-sensitive hash of a module's parameters.

    Hashing every byte of a 15B-parameter model takes minutes, so this hashes
    names, shapes and dtypes and ``samples`` evenly spaced values of each
    tensor: enough to tell two different weight sets apart (another seed, other
    pretrained weights), not a cryptographic guarantee.
    """
    h = hashlib.sha256()
    for name, p in module.named_parameters():
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // samples)
        picked = flat[::step][:samples].to(torch.float64).cpu().numpy()
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        h.update(picked.round(6).tobytes())
    return h.hexdigest()[:16]


def check_backbone_reads_data(backbone: Any, data: Any) -> None:
    """Raise a :class:`peftlab.errors.ConfigError` naming both when ``data``'s
    batches lack an input ``backbone`` reads (a ViT given protein tokens, ...).
    Either side that declares no ``input_keys`` is not checked."""
    needed = tuple(getattr(backbone, "input_keys", ()) or ())
    given = getattr(data, "input_keys", None)
    if not needed or given is None:
        return
    missing = [k for k in needed if k not in given]
    if missing:
        from peftlab.errors import ConfigError

        b, d = type(backbone), type(data)
        raise ConfigError(
            f"the backbone {public_class_path(b)} ({getattr(backbone, 'name', b.__name__)}) reads "
            f"{', '.join(repr(k) for k in needed)} from each batch, but the data module {public_class_path(d)} "
            f"gives {', '.join(repr(k) for k in given) or 'none of them'}: they belong to different domains. "
            f"Pair a backbone config with a data config of the same field (configs/<field>/), "
            f"e.g. 'peftlab list backbones' and 'peftlab list data' show which is which.")
