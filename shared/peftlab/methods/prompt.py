"""Prompt tuning: learnable tokens inserted before the first block (shallow) or
fresh ones at every block (deep, as in VPT-deep and P-tuning v2).

peft's prompt learning only works on HF models through their embedding
inputs, so this is written here once, as a token hook of the Backbone
contract. Tokens go right after the backbone's prefix tokens (class token,
BOS) and respect its token layout; the backbone strips them from its outputs.
"""

from __future__ import annotations

import torch
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
