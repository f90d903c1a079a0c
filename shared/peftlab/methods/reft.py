"""LoReFT (Wu et al. 2024): low-rank linear subspace representation
fine-tuning. The backbone's weights stay untouched; the hidden states
themselves are edited inside an ``r``-dimensional subspace:

    h  ->  h + R^T (W h + b - R h),      R: r x D with orthonormal rows.

pyreft implements it for HF models only, so it is written here as a token
hook of the Backbone contract: the residual stream entering each chosen block
is edited (the stream entering block ``i`` is block ``i-1``'s output), at
every token position.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from peftlab.backbone import Backbone, TokenHook, select_layers
from peftlab.methods.base import Method, freeze, register_method

HOOK_NAME = "loreft"


class LoReFTIntervention(nn.Module):
    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        # R is orthonormalised from a free matrix by QR on every call, a deterministic function
        # of the stored tensor (torch's orthogonal parametrisation keeps a hidden buffer that
        # an adapter holding only trained tensors would lose).
        self.rotation = nn.Parameter(torch.linalg.qr(torch.randn(dim, rank)).Q.T.contiguous())
        self.source = nn.Linear(dim, rank)

    def orthonormal_rotation(self) -> Tensor:
        return torch.linalg.qr(self.rotation.T).Q.T  # [r, D]

    def forward(self, h: Tensor) -> Tensor:
        rot = self.orthonormal_rotation().to(h.dtype)
        return h + (self.source(h) - h @ rot.T) @ rot


class LoReFTHook(TokenHook):
    def __init__(self, dim: int, rank: int, blocks: list[int]) -> None:
        super().__init__()
        self.slot = {b: k for k, b in enumerate(blocks)}
        self.interventions = nn.ModuleList(LoReFTIntervention(dim, rank) for _ in blocks)

    def forward(self, block_index: int, x: Tensor, attn_mask: Tensor, backbone: Backbone) -> tuple[Tensor, Tensor]:
        if block_index not in self.slot:
            return x, attn_mask
        return self.interventions[self.slot[block_index]](x), attn_mask


@register_method("loreft")
class LoReFT(Method):
    """LoReFT interventions on the residual stream.

    Args:
        rank: ``r``, the dimension of the edited subspace (the paper uses 4).
        layers: blocks whose input stream is edited (``None`` = all).
    """

    size_option = "rank"

    trains = "low-rank edit of the hidden states (R, W, b)"

    family = "representation"

    def __init__(self, rank: int = 4, layers: list[int] | str | None = None) -> None:
        self.rank, self.layers = rank, layers

    def apply(self, backbone: Backbone) -> None:
        if not backbone.token_sequence:
            raise ValueError(f"loreft edits the token states that flow between blocks; {backbone.name} "
                             f"({type(backbone).__name__}) has none (a CNN or a windowed/hierarchical transformer)")
        if HOOK_NAME in backbone.token_hooks:
            raise ValueError("loreft is already applied to this backbone")
        freeze(backbone)
        backbone.token_hooks[HOOK_NAME] = LoReFTHook(backbone.embed_dim, self.rank,
                                                     select_layers(backbone.num_blocks, self.layers))
