"""A tiny batch-first transformer over token ids with a class token.

It implements the Backbone contract differently from fair-esm's ESM-2
(batch-first states, a learned class token, fused ``qkv`` projection, timm
ViT's module names), so that every method is proven on two layouts. It is
also the smallest example of writing a backbone for peftlab.

Batch input: ``tokens`` ``[B, T]`` int ids, 0 = padding.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peftlab.backbone import Backbone

PAD = 0


class ToyAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask[:, None, None, :])
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class ToyMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ToyBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), ToyAttention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), ToyMlp(dim, mlp_ratio * dim)

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), attn_mask)
        return x + self.mlp(self.norm2(x))


class ToyTransformer(Backbone):
    """A tiny batch-first transformer over token ids (tests, and an example of the Backbone contract).

    Args: vocab_size, dim, depth, heads, mlp_ratio, max_len, seed (random init),
    gradient_checkpointing (see :mod:`peftlab.backbone`)."""

    input_keys = ("tokens",)
    seq_dim = 1
    num_prefix_tokens = 1
    blocks_path = "layers"  # (not "blocks": that name is the contract's accessor)
    target_presets = {
        "attention": ("attn.qkv", "attn.proj"),
        "qkv": ("attn.qkv",),
        "mlp": ("mlp.fc1", "mlp.fc2"),
        "attention+mlp": ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"),
        "all-linear": ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"),
        "ia3": ("attn.qkv", "mlp.fc2"),
        "mlp_out": ("mlp.fc2",),
    }
    adapter_sites = {"attention_out": "attn.proj", "mlp_in": "mlp.fc1", "mlp_out": "mlp.fc2"}
    resumes_at_blocks = True  # run_block keeps no state between blocks
    input_padding = {"tokens": PAD}
    after_block_paths = ("norm",)

    def __init__(self, vocab_size: int = 33, dim: int = 32, depth: int = 2, heads: int = 4,
                 mlp_ratio: int = 2, max_len: int = 128, seed: int = 0, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        self.init_args = dict(vocab_size=vocab_size, dim=dim, depth=depth, heads=heads,
                              mlp_ratio=mlp_ratio, max_len=max_len, seed=seed,
                              gradient_checkpointing=gradient_checkpointing)
        self.gradient_checkpointing = gradient_checkpointing
        self.embed_dim = dim
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.tokens = nn.Embedding(vocab_size, dim, padding_idx=PAD)
            self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
            self.pos = nn.Parameter(torch.randn(1, max_len + 1, dim) * 0.02)
            self.layers = nn.ModuleList(ToyBlock(dim, heads, mlp_ratio) for _ in range(depth))
            self.norm = nn.LayerNorm(dim)

    def config(self) -> dict[str, Any]:  # the architecture; gradient checkpointing changes no weight
        return {k: v for k, v in self.init_args.items() if k != "gradient_checkpointing"}

    def embed(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        tokens = batch["tokens"]
        content = tokens != PAD
        x = torch.cat([self.cls_token.expand(len(tokens), -1, -1), self.tokens(tokens)], dim=1)
        x = x + self.pos[:, : x.shape[1]]
        attn = torch.cat([content.new_ones(len(tokens), 1), content], dim=1)
        return x, attn, torch.cat([content.new_zeros(len(tokens), 1), content], dim=1)

    def run_block(self, block: nn.Module, x: Tensor, attn_mask: Tensor) -> Tensor:
        return block(x, attn_mask)

    def final_norm(self, x: Tensor) -> Tensor:
        return self.norm(x)
