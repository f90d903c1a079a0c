"""Image backbones from timm: ViT / DeiT (token sequences with a class token),
Swin (hierarchical windows) and ResNet (a CNN), behind one class
(:class:`TimmBackbone`, exported as ``peftlab_medical.TimmBackbone`` and
``peftlab_medical.backbones.TimmBackbone``, the paths configs and saved adapters name).

``pretrained: true`` loads timm's weights by name (its hub download), or a
local file through timm's own mechanism (``pretrained_cfg_overlay={"file":
...}``), so timm adapts them exactly as for hub weights: the input
convolution is summed or repeated for other channel counts (``in_chans``), the
position embedding is resized for other input sizes (``img_size``), and the
classifier is dropped. Without ``pretrained`` the architecture is built with
random weights; ``depth`` shrinks a ViT for offline tests and demos.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models.resnet import ResNet
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer_sam import VisionTransformerSAM
from torch import Tensor, nn

from peftlab.backbone import Backbone, Features
from peftlab.hub import hf_cache_dir, hf_offline_when_unreachable, weights_unavailable
from peftlab.persistence.safe_load import refusing_unsafe_pickles
from peftlab_medical.backbones.timm_decoders import ProgressiveUpsamplingDecoder, SAMUpscalingDecoder, seeded

TRANSFORMER_PRESETS = {
    "attention": ("attn.qkv", "attn.proj"),
    "qkv": ("attn.qkv",),
    "mlp": ("mlp.fc1", "mlp.fc2"),
    "attention+mlp": ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"),
    "all-linear": ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"),
    "ia3": ("attn.qkv", "mlp.fc2"),
    "mlp_out": ("mlp.fc2",),
}
TRANSFORMER_SITES = {"attention_out": "attn.proj", "mlp_in": "mlp.fc1", "mlp_out": "mlp.fc2"}
QV_NOTE = {"qv": "timm fuses q, k and v into one Linear (attn.qkv), so LoRA cannot reach q and v alone; "
                  "targets: qkv puts LoRA on the fused layer (all three: a superset of the q/v placement)"}
RESNET_PRESETS = {
    "conv": ("conv1", "conv2", "conv3"),
    "conv3x3": ("conv2",),
    "ia3": ("conv2", "conv3"),
    "mlp_out": ("conv3",),
}


class TimmBackbone(Backbone):
    """A timm image model as a peftlab backbone.

    Args:
        name: a timm model name (``vit_small_patch16_224``, ``deit_small_patch16_224``,
            ``swin_tiny_patch4_window7_224``, ``resnet50``, ...).
        pretrained: load timm's weights (hub by name, or ``checkpoint_path``).
        checkpoint_path: a local weights file in timm's format (``.safetensors``,
            ``.bin`` or ``.pth`` state dict), adapted by timm like hub weights.
        in_chans: input channels (1 for grayscale scans).
        img_size: input size for ViT / DeiT / Swin (position embeddings are
            resized); CNNs take any size.
        depth: number of blocks of a ViT / SAM (random init, or a local checkpoint of that depth).
        embed_dim, num_heads, window_size: sizes of a random-init ViT / SAM (window_size: SAM's
            windowed attention) for offline tests.
        input_size: SAM only: the segmentation crop and window size when it differs from the size the
            weights were built for (``img_size``); SAMed trains SAM ViT-B (1024) at 512.
        patch_size: patch size of a ViT (e.g. 4 for 28 px MedMNIST images with a
            random-init model; timm resamples pretrained patch filters to it).
        drop_path_rate: stochastic depth.
        freeze_batchnorm_stats: keep batch norms whose weights are frozen in
            eval mode while training, so their running statistics stay those
            of the frozen backbone.
        seed: seed of the random initialisation.
        decoder_channels: width of the segmentation decoder a ViT / DeiT gives ``task_type: segmentation``
            (SETR-PUP, :mod:`peftlab_medical.backbones.timm_decoders`; SETR uses 256).
        gradient_checkpointing: recompute each block's activations in the backward instead of
            keeping them (less memory, more time). ViT / DeiT: the shared block loop's
            (:mod:`peftlab.backbone`); Swin / ResNet run timm's own forward, so timm's
            ``set_grad_checkpointing`` (non-reentrant unless ``TIMM_REENTRANT_CKPT`` is set; a
            batch norm that trains, as with ``full`` or ``bitfit`` on a ResNet, updates its running
            statistics once more in the recomputation).

    Segmentation (``task_type: segmentation``): ViT / DeiT get SETR's progressive upsampling decoder
    over the final patch tokens as the trained head (:meth:`segmentation_head`); SAM's image encoder
    (``samvit_base_patch16``: windowed + global attention, a 256-channel neck, run by timm's forward) gets a
    light decoder over its neck; training crops and sliding windows have ``input_size``.

    Batch input: ``images`` ``[B, C, H, W]``. Features: the token sequence
    (ViT: class/register tokens then patches; Swin / CNN: the last stage's
    feature map flattened to ``[B, H*W, C]``); content = patches / positions.
    """

    input_keys = ("images",)

    def __init__(self, name: str = "vit_small_patch16_224", pretrained: bool = False,
                 checkpoint_path: str | None = None, in_chans: int = 3, img_size: int | None = None,
                 depth: int | None = None, patch_size: int | None = None, drop_path_rate: float = 0.0, freeze_batchnorm_stats: bool = True,
                 seed: int = 0, decoder_channels: int = 256, embed_dim: int | None = None, num_heads: int | None = None,
                 window_size: int | None = None, input_size: int | None = None,
                 gradient_checkpointing: bool = False) -> None:
        super().__init__()
        self.init_args = dict(name=name, pretrained=pretrained, checkpoint_path=checkpoint_path, in_chans=in_chans,
                              img_size=img_size, depth=depth, patch_size=patch_size, drop_path_rate=drop_path_rate,
                              freeze_batchnorm_stats=freeze_batchnorm_stats, seed=seed,
                              decoder_channels=decoder_channels, embed_dim=embed_dim, num_heads=num_heads,
                              window_size=window_size, input_size=input_size,
                              gradient_checkpointing=gradient_checkpointing)
        self.gradient_checkpointing = gradient_checkpointing
        kwargs = _create_options(name, pretrained, checkpoint_path, in_chans, img_size, depth, patch_size,
                                 drop_path_rate, dict(embed_dim=embed_dim, num_heads=num_heads, window_size=window_size))
        model = _create_model(name, pretrained or checkpoint_path is not None, checkpoint_path, seed, kwargs)
        self.model = model
        self.embed_dim = model.num_features
        self.freeze_batchnorm_stats = freeze_batchnorm_stats
        self._set_family(model, name)
        self._set_input_size(model, input_size)
        if gradient_checkpointing and not self.token_sequence:  # timm's forward runs these blocks, not ours
            model.set_grad_checkpointing(True)

    def _set_family(self, model: nn.Module, name: str) -> None:
        """The family of a timm model (``vit``, ``swin``, ``cnn``): its block names, target presets and
        adapter sites, and whether the shared block loop runs it (a ViT's token sequence)."""
        if isinstance(model, VisionTransformer):
            self.family, self.token_sequence = "vit", True
            self.blocks_path = "model.blocks"
            self.num_prefix_tokens = model.num_prefix_tokens
            self.target_presets, self.adapter_sites = TRANSFORMER_PRESETS, TRANSFORMER_SITES
            self._block_names = [f"model.blocks.{i}" for i in range(len(model.blocks))]
            self.preset_notes = QV_NOTE
        elif isinstance(model, VisionTransformerSAM):
            # SAM's blocks run on [B, H, W, C] maps with windowed and global attention: timm's forward runs them
            self.family, self.token_sequence = "sam", False
            self.target_presets, self.adapter_sites, self.preset_notes = TRANSFORMER_PRESETS, TRANSFORMER_SITES, QV_NOTE
            self._block_names = [f"model.blocks.{i}" for i in range(len(model.blocks))]
        elif isinstance(model, SwinTransformer):
            self.family, self.token_sequence = "swin", False
            self.target_presets, self.adapter_sites = TRANSFORMER_PRESETS, TRANSFORMER_SITES
            self._block_names = [f"model.layers.{s}.blocks.{b}" for s, stage in enumerate(model.layers)
                                 for b in range(len(stage.blocks))]
        elif isinstance(model, ResNet):
            self.family, self.token_sequence = "cnn", False
            self.target_presets, self.adapter_sites = RESNET_PRESETS, {}
            self.default_targets = "conv"
            self._block_names = [f"model.layer{s}.{b}" for s in range(1, 5)
                                 for b in range(len(getattr(model, f"layer{s}")))]
        else:
            raise ValueError(f"timm model {name!r} ({type(model).__name__}) is not supported yet; "
                             f"supported families: ViT / DeiT, SAM, Swin, ResNet")

    def _set_input_size(self, model: nn.Module, input_size: int | None) -> None:
        """``input_size``: the segmentation crops and windows. ViT: its ``img_size`` (timm's patch embedding
        takes no other). SAM: ``input_size`` if given (timm resamples SAM's position embedding and relative
        positions to it, so weights built at 1024 take 512 px inputs, as SAMed does), else ``img_size``."""
        if input_size is not None and self.family != "sam":
            raise ValueError(f"input_size applies to SAM encoders only; {self.init_args['name']} ({self.family}) "
                             f"takes its img_size")
        if self.family in ("vit", "sam"):
            patch = model.patch_embed.patch_size[0]
            size = (input_size, input_size) if input_size is not None else tuple(model.patch_embed.img_size)
            if any(s % patch for s in size):
                raise ValueError(f"input_size {list(size)} must be a multiple of the patch size {patch}")
            self.input_size = size

    @property
    def name(self) -> str:
        source = "pretrained" if self.init_args["pretrained"] or self.init_args["checkpoint_path"] else "random init"
        return f"{self.init_args['name']} ({source})"

    def config(self) -> dict[str, Any]:
        return {"family": self.family, "blocks": self.num_blocks, "embed_dim": self.embed_dim,
                "in_chans": self.init_args["in_chans"], "img_size": self.init_args["img_size"],
                "source": "pretrained" if self.init_args["pretrained"] or self.init_args["checkpoint_path"]
                else "random"}

    def segmentation_head(self, num_classes: int) -> nn.Module:
        """The 2D segmentation decoder, a new seeded module (the task head, see
        :mod:`peftlab_medical.backbones.timm_decoders`): SETR-PUP for ViT / DeiT, SAM's mask-decoder
        upscaling over the neck for SAM."""
        m, seed = self.model, self.init_args["seed"] + 1
        if self.family == "sam":
            patch = m.patch_embed.patch_size[0]
            grid = tuple(s // patch for s in self.input_size)
            return seeded(lambda: SAMUpscalingDecoder(self.embed_dim, grid, patch, num_classes), seed)
        if self.family == "vit":
            patch = m.patch_embed.patch_size
            if patch[0] != patch[1]:
                raise ValueError(f"segmentation decoder: {self.init_args['name']} has non-square patches {patch}")
            return seeded(lambda: ProgressiveUpsamplingDecoder(
                self.embed_dim, m.patch_embed.grid_size, patch[0], self.num_prefix_tokens, num_classes,
                self.init_args["decoder_channels"]), seed)
        raise ValueError(f"{self.name}: timm segmentation decoders exist for ViT / DeiT and SAM, not {self.family} "
                         f"(for a Swin encoder use peftlab_medical.MonaiSwinUNETRBackbone)")

    def block_names(self) -> list[str]:
        return list(self._block_names)

    def train(self, mode: bool = True) -> "TimmBackbone":
        super().train(mode)
        if mode and self.freeze_batchnorm_stats:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(
                        p.requires_grad for p in m.parameters(recurse=False)):
                    m.eval()
        return self

    # ---- ViT: the shared block loop (prompts, per-layer states) --------------------------
    def embed(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        m = self.model
        x = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(batch["images"]))))
        attend = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        content = attend.clone()
        content[:, : self.num_prefix_tokens] = False
        return x, attend, content

    def run_block(self, block: nn.Module, x: Tensor, attn_mask: Tensor) -> Tensor:
        return block(x)  # images have no padding: every token attends to every token

    def final_norm(self, x: Tensor) -> Tensor:
        return self.model.norm(x)

    # ---- Swin / CNN: timm's own forward, last stage flattened to tokens -------------------
    def forward(self, batch: dict[str, Any], output_layers: bool = False) -> Features:
        if self.token_sequence:
            return super().forward(batch, output_layers=output_layers)
        if output_layers:
            raise ValueError(f"per-layer states are only available for ViT backbones, not {self.family}")
        fmap = self.model.forward_features(batch["images"])
        tokens = fmap.flatten(1, 2) if self.family == "swin" else fmap.flatten(2).transpose(1, 2)  # NHWC / NCHW
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return Features(hidden=tokens, mask=mask, cls=None)


def _create_options(name: str, pretrained: bool, checkpoint_path: str | None, in_chans: int, img_size: int | None,
                    depth: int | None, patch_size: int | None, drop_path_rate: float,
                    shape: dict[str, int | None]) -> dict[str, Any]:
    """The keyword arguments of ``timm.create_model`` for :class:`TimmBackbone`'s options (checked);
    ``shape``: architecture sizes (``embed_dim``, ``num_heads``, ``window_size``) for random-init models."""
    kwargs: dict[str, Any] = dict(num_classes=0, in_chans=in_chans, drop_path_rate=drop_path_rate)
    for key, value in shape.items():
        if value is not None:
            if pretrained and checkpoint_path is None:
                raise ValueError(f"{key} only applies to random-init models or local checkpoints of that shape "
                                 f"(hub weights fix it)")
            kwargs[key] = value
    if img_size is not None and not name.startswith("resnet"):
        kwargs["img_size"] = img_size
    if depth is not None:
        if pretrained and checkpoint_path is None:
            raise ValueError("depth only applies to random-init models or local checkpoints of that depth "
                             "(hub weights fix it)")
        kwargs["depth"] = depth
    if patch_size is not None:
        kwargs["patch_size"] = patch_size
    if name.startswith("resnet") and not (pretrained or checkpoint_path):
        # timm zero-initialises each block's last batch norm, so a frozen random-init ResNet would
        # ignore everything inside its residual branches (and PEFT there could not learn)
        kwargs["zero_init_last"] = False
    if checkpoint_path is not None:
        if not Path(checkpoint_path).is_file():
            raise FileNotFoundError(f"timm checkpoint {checkpoint_path} does not exist")
        kwargs["pretrained_cfg_overlay"] = {"file": str(checkpoint_path)}
    return kwargs


def _create_model(name: str, pretrained: bool, checkpoint_path: str | None, seed: int,
                  kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model``, its random initialisation seeded with ``seed`` (torch's global random state is
    left as it was), weights read safely, and hub weights that cannot be had explained."""
    # timm reads safetensors as they are and .pth / .bin files (local, or from the hub) in torch's
    # weights-only mode (with argparse.Namespace allowed); a refusal is named here
    weights = str(checkpoint_path) if checkpoint_path is not None else f"timm's pretrained weights for {name!r}"
    from_hub = pretrained and checkpoint_path is None
    with torch.random.fork_rng(), refusing_unsafe_pickles(weights, "timm weights file", [argparse.Namespace]), \
            (hf_offline_when_unreachable() if from_hub else contextlib.nullcontext(False)) as offline:
        torch.manual_seed(seed)
        try:
            return timm.create_model(name, pretrained=pretrained, **kwargs)
        except (OSError, RuntimeError) as e:
            if not offline:
                raise
            raise weights_unavailable(
                f"timm weights {name!r}", f"the Hugging Face Hub cannot be reached, and they are not in its "
                f"cache ({hf_cache_dir()}); {type(e).__name__}",
                f"download the model's weights file (model.safetensors of the Hub repository timm names for "
                f"{name!r}) on a connected machine and pass it as "
                f"--model.backbone.init_args.checkpoint_path FILE") from None


# ---- prefix tuning: timm's ViT attention with learned keys/values prepended ----------------------

def _timm_attention_with_prefix(self, prefix, x: Tensor, attn_mask: Tensor | None = None,
                                is_causal: bool = False) -> Tensor:
    """timm.layers.Attention.forward (fused qkv, q/k norms, optional gate), attending over the prefix too."""
    from peftlab.methods.prompts import attend_with_prefix

    if is_causal:
        raise ValueError("prefix tuning: causal attention is not supported")
    b, n, _ = x.shape
    gate = self.gate(x).sigmoid() if getattr(self, "gate", None) is not None else None
    q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    x = attend_with_prefix(prefix, q, k, v, attn_mask, dropout=self.attn_drop.p if self.training else 0.0,
                           scale=self.scale)
    x = self.norm(x.transpose(1, 2).reshape(b, n, -1))
    if gate is not None:
        x = x * gate
    return self.proj_drop(self.proj(x))


def _register_prefix_attention() -> None:
    from timm.layers.attention import Attention
    from timm.models.swin_transformer import WindowAttention

    from peftlab.methods.prompts import register_prefix_attention

    register_prefix_attention(Attention, _timm_attention_with_prefix)
    register_prefix_attention(WindowAttention, refuse="Swin attends within shifted local windows with a relative "
                              "position bias table; a global prefix has no place in a window (use lora or adapters)")


_register_prefix_attention()
