"""MONAI's SwinUNETR (Hatamizadeh et al., BrainLes 2021; ``monai.networks.nets.SwinUNETR``), 2D or 3D, as a
peftlab backbone for ``task_type: segmentation`` (:class:`MonaiSwinUNETRBackbone`, exported as
``peftlab_medical.MonaiSwinUNETRBackbone``).

The split follows :mod:`peftlab_medical.backbones.monai_networks` (UNETR): the backbone is the Swin
encoder (``swinViT``: patch embedding, four stages of shifted-window transformer blocks each ending in
patch merging), the PEFT target; the head is SwinUNETR's own convolutional decoder (``encoder1``-``4``,
``encoder10``, ``decoder5``-``1``, ``out``: MONAI's modules), built by
:meth:`MonaiSwinUNETRBackbone.segmentation_head`, always trained and counted as head parameters
(``linear_probe`` trains the decoder alone).

Swin is hierarchical: the width doubles and the grid halves at every stage, and attention runs inside
(shifted) local windows with a learned relative-position bias. There is no one token sequence that
every block reads, so the backbone runs MONAI's own ``SwinTransformer.forward`` instead of the shared
block loop (``token_sequence = False``, as for timm's Swin): methods that act on modules of the blocks
(LoRA and its relatives, IA3, SSF, BitFit, LN tuning, partial, bottleneck adapters at the attention and
MLP outputs, full fine-tuning) work; those that insert or edit tokens between blocks (prompt tuning,
LoReFT) or prepend keys to every attention (prefix tuning) refuse, saying why.

Weights: random (seeded) by default; ``checkpoint_path`` loads a MONAI bundle ``models/model.pt`` (a state
dict of the whole SwinUNETR, e.g. the ``swin_unetr_btcv_segmentation`` bundle), read as UNETR's is.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from peftlab.backbone import Backbone, Features
from peftlab_medical.backbones.monai_networks import _load_into, _read_bundle_weights

SWIN_PRESETS = {
    "attention": ("attn.qkv", "attn.proj"),
    "qkv": ("attn.qkv",),
    "mlp": ("mlp.linear1", "mlp.linear2"),
    "attention+mlp": ("attn.qkv", "attn.proj", "mlp.linear1", "mlp.linear2"),
    "all-linear": ("attn.qkv", "attn.proj", "mlp.linear1", "mlp.linear2"),
    "ia3": ("attn.qkv", "mlp.linear2"),
    "mlp_out": ("mlp.linear2",),
}
SWIN_SITES = {"attention_out": "attn.proj", "mlp_in": "mlp.linear1", "mlp_out": "mlp.linear2"}
SWIN_DECODER = ("encoder1", "encoder2", "encoder3", "encoder4", "encoder10",
                "decoder5", "decoder4", "decoder3", "decoder2", "decoder1", "out")
SWIN_SHAPE_ARGS = "spatial dims (img_size), feature_size, depths, num_heads, window_size, in_channels, use_v2"
DIVISOR = 32  # MONAI's SwinUNETR: patch size 2, and 4 patch mergings: inputs divisible by 2 ** 5


class SwinUNETRDecoder(nn.Module):
    """SwinUNETR's decoder (MONAI's modules, the wiring of ``SwinUNETR.forward``) on
    :class:`MonaiSwinUNETRBackbone`'s features: ``skips`` = ``[input image, stage 0..4 outputs]`` (channels
    first). Returns logits ``[B, num_classes, *spatial]``."""

    def __init__(self, parts: dict[str, nn.Module]) -> None:
        super().__init__()
        for name in SWIN_DECODER:
            self.add_module(name, parts[name])

    def forward(self, f: Features) -> Tensor:
        if f.skips is None or len(f.skips) != 6:
            raise ValueError("SwinUNETRDecoder needs the features of MonaiSwinUNETRBackbone "
                             "(the input image and the 5 encoder outputs)")
        x_in, h0, h1, h2, h3, h4 = f.skips
        enc0, enc1 = self.encoder1(x_in), self.encoder2(h0)
        enc2, enc3 = self.encoder3(h1), self.encoder4(h2)
        dec3 = self.decoder5(self.encoder10(h4), h3)
        dec0 = self.decoder2(self.decoder3(self.decoder4(dec3, enc3), enc2), enc1)
        return self.out(self.decoder1(dec0, enc0))


class MonaiSwinUNETRBackbone(Backbone):
    """MONAI's SwinUNETR: its Swin encoder as the backbone, its decoder as the segmentation head.

    Args:
        img_size: the crop size the network trains on and the sliding window of whole-volume
            inference (the ``input_size`` the segmentation task reads): 2 sizes (2D) or 3 (3D), each
            a multiple of 32. Swin has no position embedding, so any input whose sizes are multiples
            of 32 runs.
        in_channels: input channels.
        out_channels: classes of the checkpoint's output layer (``None``: read from
            ``checkpoint_path``; random init: the task's class count).
        feature_size, depths, num_heads, window_size, qkv_bias, mlp_ratio, norm_name, drop_rate,
        attn_drop_rate, dropout_path_rate, normalize, use_v2: MONAI's ``SwinUNETR`` arguments (defaults:
            MONAI's; the offline config uses a tiny one). ``feature_size`` must be a multiple of 12.
        checkpoint_path: a MONAI bundle ``model.pt`` (state dict of the whole SwinUNETR).
        seed: seed of the random initialisation (torch's global random state is left as it was).
        gradient_checkpointing: recompute each Swin block's activations in the backward (MONAI's
            ``use_checkpoint``, switched on while training with gradients).

    Batch input: ``images`` ``[B, C, *spatial]``. Features: the last stage's states as tokens
    ``[B, T, 16 * feature_size]``; ``skips`` = ``[images, stage 0..4 outputs]``.
    """

    input_keys = ("images",)
    token_sequence = False
    target_presets, adapter_sites = SWIN_PRESETS, SWIN_SITES
    preset_notes = {"conv": "SwinUNETR's encoder has only its patch embedding as a convolution; "
                            "its convolutions are in the decoder, which always trains"}

    def __init__(self, img_size: list[int] = (96, 96, 96), in_channels: int = 1, out_channels: int | None = None,
                 feature_size: int = 24, depths: list[int] = (2, 2, 2, 2), num_heads: list[int] = (3, 6, 12, 24),
                 window_size: int = 7, qkv_bias: bool = True, mlp_ratio: float = 4.0, norm_name: str = "instance",
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, dropout_path_rate: float = 0.0,
                 normalize: bool = True, use_v2: bool = False, checkpoint_path: str | None = None, seed: int = 0,
                 gradient_checkpointing: bool = False) -> None:
        super().__init__()
        img_size = [int(s) for s in img_size]
        if len(img_size) not in (2, 3) or any(s < DIVISOR or s % DIVISOR for s in img_size):
            raise ValueError(f"SwinUNETR img_size must be 2 or 3 sizes, each a multiple of {DIVISOR} (patch size 2 "
                             f"and four patch mergings), got {img_size}")
        if norm_name == "instance" and all(s == DIVISOR for s in img_size):
            raise ValueError(f"SwinUNETR img_size {img_size} leaves one voxel at the deepest stage (1/{DIVISOR} of the "
                             f"input), and the decoder's instance norm cannot train on one voxel: make a size 64 or "
                             f"more, or set norm_name: batch")
        if feature_size % 12:
            raise ValueError(f"SwinUNETR feature_size must be a multiple of 12 (MONAI's rule), got {feature_size}")
        self.init_args = dict(img_size=img_size, in_channels=in_channels, out_channels=out_channels,
                              feature_size=feature_size, depths=[int(d) for d in depths],
                              num_heads=[int(h) for h in num_heads], window_size=int(window_size),
                              qkv_bias=qkv_bias, mlp_ratio=mlp_ratio, norm_name=norm_name, drop_rate=drop_rate,
                              attn_drop_rate=attn_drop_rate, dropout_path_rate=dropout_path_rate,
                              normalize=normalize, use_v2=use_v2, checkpoint_path=checkpoint_path, seed=seed,
                              gradient_checkpointing=gradient_checkpointing)
        self.gradient_checkpointing = gradient_checkpointing
        state = _read_bundle_weights(checkpoint_path, "SwinUNETR") if checkpoint_path is not None else None
        if out_channels is None:
            weight = (state or {}).get("out.conv.conv.weight")
            out_channels = int(weight.shape[0]) if weight is not None else 2
        net = self._build(out_channels)
        _register_prefix_refusal()
        if state is not None:
            _load_into(net, state, checkpoint_path, "SwinUNETR", SWIN_SHAPE_ARGS)
        self.swinViT = net.swinViT
        self.embed_dim = 16 * feature_size
        self.input_size, self.out_channels = tuple(img_size), out_channels
        # the decoder is the head (module docstring): a plain dict keeps it out of this module's parameters
        self._decoder = {name: getattr(net, name) for name in SWIN_DECODER}

    def _build(self, out_channels: int, seed_offset: int = 0) -> nn.Module:
        from monai.networks.nets import SwinUNETR

        a = self.init_args
        with torch.random.fork_rng():
            torch.manual_seed(a["seed"] + seed_offset)
            return SwinUNETR(in_channels=a["in_channels"], out_channels=out_channels, feature_size=a["feature_size"],
                             depths=a["depths"], num_heads=a["num_heads"], window_size=a["window_size"],
                             qkv_bias=a["qkv_bias"], mlp_ratio=a["mlp_ratio"], norm_name=a["norm_name"],
                             drop_rate=a["drop_rate"], attn_drop_rate=a["attn_drop_rate"],
                             dropout_path_rate=a["dropout_path_rate"], normalize=a["normalize"],
                             use_v2=a["use_v2"], spatial_dims=len(a["img_size"]))

    @property
    def name(self) -> str:
        return f"SwinUNETR ({'checkpoint' if self.init_args['checkpoint_path'] else 'random init'})"

    def config(self) -> dict[str, Any]:
        a = self.init_args
        return {"family": "swin_unetr", "blocks": self.num_blocks, "embed_dim": self.embed_dim,
                "img_size": a["img_size"], "in_channels": a["in_channels"], "feature_size": a["feature_size"],
                "depths": a["depths"], "num_heads": a["num_heads"], "window_size": a["window_size"],
                "source": "checkpoint" if a["checkpoint_path"] else "random"}

    def block_names(self) -> list[str]:
        """The Swin blocks of the four stages, in order (patch merging sits between stages, outside them)."""
        return [f"swinViT.layers{s + 1}.0.blocks.{b}" for s, depth in enumerate(self.init_args["depths"])
                for b in range(depth)]

    def segmentation_head(self, num_classes: int) -> SwinUNETRDecoder:
        """SwinUNETR's decoder (a copy, so the backbone can serve several heads) with ``num_classes``
        outputs: the checkpoint's ``out`` layer when it has as many classes, else a new seeded one."""
        parts = copy.deepcopy(self._decoder)
        if num_classes != self.out_channels:
            parts["out"] = self._build(num_classes, seed_offset=1).out
        return SwinUNETRDecoder(parts)

    # ---- MONAI's own hierarchical forward (no shared block loop) -----------------------------------
    def _check_input(self, images: Tensor) -> None:
        spatial = list(images.shape[2:])
        if len(spatial) != len(self.input_size) or any(s % DIVISOR for s in spatial):
            raise ValueError(f"SwinUNETR ({len(self.input_size)}D) needs inputs of {len(self.input_size)} spatial "
                             f"sizes, each a multiple of {DIVISOR}; got {spatial} (crop or pad to img_size "
                             f"{list(self.input_size)}; whole volumes run in sliding windows of it)")

    def forward(self, batch: dict[str, Any], output_layers: bool = False) -> Features:
        if output_layers:
            raise ValueError("per-layer token states are not available for SwinUNETR: its stages differ in width "
                             "and grid (Features.skips holds each stage's output)")
        images = batch["images"]
        self._check_input(images)
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            block.use_checkpoint = checkpointing
        stages = self.swinViT(images, self.init_args["normalize"])  # patch embedding, then each stage's output
        hidden = stages[-1].flatten(2).transpose(1, 2)
        mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        return Features(hidden=hidden, mask=mask, skips=[images, *stages])


def _register_prefix_refusal() -> None:
    """Tell prefix tuning why MONAI's window attention cannot take a prefix (called when a SwinUNETR is
    built: importing ``monai.networks`` at import time would break ``tests/test_lean_imports.py``)."""
    from monai.networks.nets.swin_unetr import WindowAttention

    from peftlab.methods.prompts import register_prefix_attention

    register_prefix_attention(WindowAttention, refuse="Swin attends within shifted local windows with a relative "
                              "position bias table; a global prefix has no place in a window (use lora or adapters)")
