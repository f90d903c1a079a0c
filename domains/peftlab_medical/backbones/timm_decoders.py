"""2D segmentation decoders for :class:`~peftlab_medical.backbones.timm_models.TimmBackbone`, built by its
``segmentation_head`` for ``task_type: segmentation``. Like UNETR's decoder
(:mod:`peftlab_medical.backbones.monai_networks`), each is the task head: always trained, counted in the
trainable total, saved in the adapter, trained alone by ``linear_probe``; the timm encoder stays the
PEFT target.

* :class:`ProgressiveUpsamplingDecoder` (ViT / DeiT): SETR's progressive upsampling decoder, "SETR-PUP"
  (Zheng et al., "Rethinking Semantic Segmentation from a Sequence-to-Sequence Perspective with
  Transformers", CVPR 2021, section 3.3; mmsegmentation's ``SETRUPHead``): the final patch tokens (class
  and register tokens dropped) are layer-normed, reshaped to the patch grid, and upsampled 2x per stage
  (3x3 conv, batch norm, ReLU, bilinear 2x) until the input resolution, then a 1x1 conv gives the class
  logits. Chosen over a UNETR-style decoder because it reads only the final tokens: it needs no
  intermediate block states (so every method, prompts included, sees the usual forward) and stays light
  (SETR uses 4 stages of 256 channels for 16 px patches; here log2(patch size) stages of
  ``channels``).
* :class:`SAMUpscalingDecoder` (SAM's image encoder): a light conv decoder over the encoder's 256-channel
  neck map: SAM's own mask-decoder upscaling (Kirillov et al. 2023, ``MaskDecoder.output_upscaling``:
  transposed conv 2x, LayerNorm2d, GELU, transposed conv 2x, GELU) followed by a 1x1 conv to the class
  logits and a bilinear 4x resize to the input size. SAMed (Zhang & Liu 2023) keeps SAM's whole
  prompt-free mask decoder (a two-way transformer with one mask token per class, whose hypernetwork MLPs
  make the per-class 1x1 weights); this decoder keeps its upscaling path but replaces the token
  transformer and hypernetworks by a learned 1x1 conv, so it is lighter and not SAMed's exact head.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from peftlab.backbone import Features


def _token_grid(f: Features, skip: int, grid: tuple[int, int], who: str) -> Tensor:
    """The content tokens of ``f.hidden`` (the first ``skip`` dropped) as a map ``[B, D, *grid]``."""
    tokens = f.hidden[:, skip:]
    if tokens.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"{who}: expected {grid[0]} x {grid[1]} = {grid[0] * grid[1]} patch tokens after "
                         f"{skip} prefix tokens, got {tokens.shape[1]} (inputs must have the backbone's input_size)")
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


class ProgressiveUpsamplingDecoder(nn.Module):
    """SETR-PUP (see the module docstring) over a ViT's final tokens ``[B, prefix + h*w, D]``;
    returns logits ``[B, num_classes, h * patch, w * patch]``."""

    def __init__(self, embed_dim: int, grid: tuple[int, int], patch_size: int, num_prefix_tokens: int,
                 num_classes: int, channels: int = 256) -> None:
        super().__init__()
        self.grid, self.patch_size, self.num_prefix_tokens = tuple(grid), int(patch_size), num_prefix_tokens
        self.norm = nn.LayerNorm(embed_dim)
        stages, width = [], embed_dim
        for _ in range(max(1, math.ceil(math.log2(self.patch_size)))):
            stages += [nn.Conv2d(width, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                       nn.ReLU(inplace=True), nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)]
            width = channels
        self.upsample = nn.Sequential(*stages)
        self.classify = nn.Conv2d(channels, num_classes, 1)

    def forward(self, f: Features) -> Tensor:
        tokens = self.norm(f.hidden)
        x = _token_grid(Features(hidden=tokens, mask=f.mask), self.num_prefix_tokens, self.grid,
                        "ProgressiveUpsamplingDecoder")
        logits = self.classify(self.upsample(x))
        size = (self.grid[0] * self.patch_size, self.grid[1] * self.patch_size)
        if tuple(logits.shape[2:]) != size:  # patch sizes that are not powers of 2 (e.g. 14)
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits


class SAMUpscalingDecoder(nn.Module):
    """SAM's mask-decoder upscaling + a 1x1 class conv (see the module docstring) over the neck map, given as
    tokens ``[B, h*w, C]``; returns logits ``[B, num_classes, h * patch, w * patch]``."""

    def __init__(self, neck_channels: int, grid: tuple[int, int], patch_size: int, num_classes: int) -> None:
        super().__init__()
        from timm.layers import LayerNorm2d

        self.grid, self.patch_size = tuple(grid), int(patch_size)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(neck_channels, neck_channels // 4, 2, stride=2), LayerNorm2d(neck_channels // 4),
            nn.GELU(), nn.ConvTranspose2d(neck_channels // 4, neck_channels // 8, 2, stride=2), nn.GELU())
        self.classify = nn.Conv2d(neck_channels // 8, num_classes, 1)

    def forward(self, f: Features) -> Tensor:
        x = _token_grid(f, 0, self.grid, "SAMUpscalingDecoder")
        logits = self.classify(self.output_upscaling(x))
        size = (self.grid[0] * self.patch_size, self.grid[1] * self.patch_size)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def seeded(build, seed: int) -> nn.Module:
    """``build()`` with torch's random state seeded by ``seed`` (the global state is left as it was)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()
