"""Prompt tuning: learnable tokens inserted before the first block (shallow) or
fresh ones at every block (deep, as in VPT-deep and P-tuning v2).

peft's prompt learning only works on HF models through their embedding
inputs, so this is written here once, as a token hook of the Backbone
contract. Tokens go right after the backbone's prefix tokens (class token,
BOS) and respect its token layout; the backbone strips them from its outputs.

Prefix tuning (Li & Liang 2021): ``P`` learned key and value vectors are
prepended in every attention layer of the chosen blocks. Queries attend to
them as to extra tokens, but they produce no outputs of their own, so the
sequence length and every output stay aligned with the input.

peft's prefix tuning feeds ``past_key_values`` to HF transformers models only,
so it is written here. An attention module cannot be extended from outside
(its projections are reshaped to the input length before attention), so each
attention implementation that prefix tuning supports registers a small
forward with :func:`register_prefix_attention`: it computes queries, keys
and values as the library does and calls :func:`attend_with_prefix`. The core
registers the toy backbone's attention; each domain registers its
libraries' (fair-esm, timm, torchaudio, transformers). Keys are used as
learned, after any rotary embedding or key norm (they have no position).
"""

from __future__ import annotations

import types
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peftlab.backbone import Backbone, TokenHook, select_layers
from peftlab.methods.base import Method, freeze, register_method

class PromptTokens(TokenHook):
    def __init__(self, num_tokens: int, dim: int, block_indices: list[int], deep: bool, init_std: float) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.deep = deep
        self.first = block_indices[0]
        self.slot = {b: k for k, b in enumerate(block_indices)}
        self.tokens = nn.Parameter(torch.randn(len(block_indices), num_tokens, dim) * init_std)

    def _tokens(self, k: int, batch: int, backbone: Backbone) -> Tensor:
        t = self.tokens[k].unsqueeze(0).expand(batch, -1, -1)  # [B, n, D]
        return t.transpose(0, 1) if backbone.seq_dim == 0 else t

    def forward(self, block_index: int, x: Tensor, attn_mask: Tensor, backbone: Backbone) -> tuple[Tensor, Tensor]:
        if block_index not in self.slot:
            return x, attn_mask
        batch = x.shape[1 - backbone.seq_dim]
        p, n, d = backbone.num_prefix_tokens, self.num_tokens, backbone.seq_dim
        new = self._tokens(self.slot[block_index], batch, backbone).to(x.dtype)
        head, tail = x.narrow(d, 0, p), x.narrow(d, p, x.shape[d] - p)
        if block_index == self.first:  # insert
            ones = attn_mask.new_ones(batch, n)
            return torch.cat([head, new, tail], dim=d), torch.cat([attn_mask[:, :p], ones, attn_mask[:, p:]], dim=1)
        # deep: replace the previous block's prompt outputs with fresh tokens
        return torch.cat([head, new, tail.narrow(d, n, tail.shape[d] - n)], dim=d), attn_mask

@register_method("prompt")
class Prompt(Method):
    """Learnable prompt tokens.

    Args:
        num_tokens: tokens per block.
        deep: fresh tokens at every block (in ``layers``) instead of only the first.
        layers: with ``deep``, which blocks get fresh tokens (``None`` = all);
            shallow prompts always enter at the first of these blocks.
        init_std: standard deviation of the initial tokens.
    """

    size_option = "num_tokens"

    trains = "prompt tokens in the input (or at every block)"

    family = "prompt"

    def __init__(self, num_tokens: int = 10, deep: bool = False, layers: list[int] | str | None = None,
                 init_std: float = 0.02) -> None:
        self.num_tokens, self.deep, self.layers, self.init_std = num_tokens, deep, layers, init_std

    def apply(self, backbone: Backbone) -> None:
        if not backbone.token_sequence:
            raise ValueError(f"prompt tuning inserts tokens into the sequence that every block reads; "
                             f"{backbone.name} ({type(backbone).__name__}) has no such sequence "
                             f"(a CNN or a windowed/hierarchical transformer)")
        freeze(backbone)
        if "prompt" in backbone.token_hooks:
            raise ValueError("prompt tokens are already applied to this backbone")
        blocks = select_layers(backbone.num_blocks, self.layers)
        if not self.deep:
            blocks = blocks[:1]
        backbone.token_hooks["prompt"] = PromptTokens(self.num_tokens, backbone.embed_dim, blocks,
                                                      self.deep, self.init_std)


# ---- prefix tuning ----------------------------------------------------------------------------

#: attention class -> forward(attention, prefix, *args, **kwargs) with the class's own signature and returns
PREFIX_FORWARDS: dict[type, Callable] = {}

#: attention class -> why prefix tuning cannot extend it
PREFIX_REFUSALS: dict[type, str] = {}

def register_prefix_attention(cls: type, forward: Callable | None = None, refuse: str | None = None) -> None:
    """Teach prefix tuning one attention implementation (or say why it cannot)."""
    if forward is not None:
        PREFIX_FORWARDS[cls] = forward
    if refuse is not None:
        PREFIX_REFUSALS[cls] = refuse

class KVPrefix(nn.Module):
    """``num_tokens`` learned keys and values (``[P, D]`` each, D = heads x head_dim)."""

    def __init__(self, num_tokens: int, dim: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.keys = nn.Parameter(torch.randn(num_tokens, dim) * init_std)
        self.values = nn.Parameter(torch.randn(num_tokens, dim) * init_std)

    def heads(self, batch: int, num_heads: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Keys and values as ``[B, H, P, head_dim]``."""
        p, d = self.keys.shape
        split = lambda t: t.to(dtype).view(p, num_heads, d // num_heads).transpose(0, 1).unsqueeze(0).expand(batch, -1, -1, -1)  # noqa: E731
        return split(self.keys), split(self.values)

def attend_with_prefix(prefix: KVPrefix, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
                       dropout: float = 0.0, scale: float | None = None) -> Tensor:
    """Scaled dot-product attention over ``[prefix keys; keys]``. ``q, k, v``:
    ``[B, H, T, hd]``; ``mask``: boolean (True = attend) or additive, broadcastable
    to ``[B, H, T, S]``, or None. Every query may attend to every prefix token."""
    b, h = q.shape[:2]
    pk, pv = prefix.heads(b, h, k.dtype)
    k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
    if mask is not None:
        shape = (*mask.shape[:-1], pk.shape[2])
        attend = (torch.ones(shape, dtype=torch.bool, device=mask.device) if mask.dtype == torch.bool
                  else torch.zeros(shape, dtype=mask.dtype, device=mask.device))
        mask = torch.cat([attend, mask], dim=-1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale)

def _prefixed_forward(module: nn.Module, *args, **kwargs):
    return PREFIX_FORWARDS[type(module)](module, module.prefix, *args, **kwargs)

@register_method("prefix")
class PrefixTuning(Method):
    """Prefix tuning: learned keys and values in every attention layer.

    Args:
        num_tokens: ``P``, prefix length per layer.
        layers: blocks whose attention gets a prefix (``None`` = all).
        init_std: standard deviation of the initial keys and values.
    """

    size_option = "num_tokens"

    trains = "keys and values prepended in every attention layer"

    family = "prompt"

    def __init__(self, num_tokens: int = 10, layers: list[int] | str | None = None, init_std: float = 0.02) -> None:
        self.num_tokens, self.layers, self.init_std = num_tokens, layers, init_std

    def _attention(self, backbone: Backbone, i: int) -> nn.Module:
        block = backbone.blocks[i]
        found = [m for m in block.modules() if type(m) in PREFIX_FORWARDS]
        refused = [m for m in block.modules() if type(m) in PREFIX_REFUSALS]
        if refused and not found:
            raise ValueError(f"prefix tuning cannot extend {backbone.name}'s attention "
                             f"({type(refused[0]).__name__}): {PREFIX_REFUSALS[type(refused[0])]}")
        if len(found) != 1:
            supported = ", ".join(sorted(c.__qualname__ for c in PREFIX_FORWARDS))
            raise ValueError(f"prefix tuning: block {i} of {backbone.name} has {len(found)} attention modules it "
                             f"knows how to extend (it needs exactly one; supported: {supported}). "
                             f"{'' if backbone.token_sequence else 'This backbone has no token sequence (a CNN or a windowed transformer). '}"
                             f"Register the block's attention with peftlab.methods.prompts.register_prefix_attention.")
        return found[0]

    def apply(self, backbone: Backbone) -> None:
        freeze(backbone)
        for i in select_layers(backbone.num_blocks, self.layers):
            attention = self._attention(backbone, i)
            if "prefix" in attention._modules:
                raise ValueError("prefix tuning is already applied to this backbone")
            attention.add_module("prefix", KVPrefix(self.num_tokens, backbone.embed_dim, self.init_std))
            # an instance attribute shadows the class's forward; nn.Module.__call__ calls it
            attention.forward = types.MethodType(_prefixed_forward, attention)

def _toy_attention(self, prefix: KVPrefix, x: Tensor, attn_mask: Tensor) -> Tensor:
    b, t, d = x.shape
    q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
    y = attend_with_prefix(prefix, q, k, v, attn_mask[:, None, None, :])
    return self.proj(y.transpose(1, 2).reshape(b, t, d))

def _register_toy() -> None:
    from peftlab.toy import ToyAttention

    register_prefix_attention(ToyAttention, _toy_attention)


_register_toy()
