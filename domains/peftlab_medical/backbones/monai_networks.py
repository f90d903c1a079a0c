"""MONAI's transformer segmentation network UNETR (Hatamizadeh et al., WACV 2022;
``monai.networks.nets.UNETR``) as a peftlab backbone for ``task_type: segmentation``
(:class:`MonaiUNETRBackbone`, exported as ``peftlab_medical.MonaiUNETRBackbone``).

The split between backbone and head, and why: the backbone is UNETR's ViT
encoder (patch embedding, 12 transformer blocks, final norm), run by the shared
block loop of :mod:`peftlab.backbone`, so every PEFT method targets its
attention and MLP linears exactly as on a timm ViT (LoRA, DoRA, adapters,
prompts, prefix tuning, ...). The head is UNETR's own convolutional decoder
(``encoder1``-``encoder4``, ``decoder2``-``decoder5``, ``out``: MONAI's modules,
not a copy) built by :meth:`MonaiUNETRBackbone.segmentation_head`; it reads the
input image and the states of blocks 3, 6 and 9 and the final states that the
backbone returns in :attr:`peftlab.backbone.Features.skips`. The decoder is a
head because it is task-specific and always trained (as in the LoRA-on-UNETR
papers): it counts in the run's trainable parameters as head parameters, it
is saved in the adapter, and ``linear_probe`` trains the decoder alone.
Keeping it out of the backbone keeps the method matrix's guarantees about the
encoder (frozen weights unchanged, exact counts) meaningful.

Weights: random (seeded) by default; ``checkpoint_path`` loads a state dict of
the whole UNETR in the format MONAI's bundles save (``models/model.pt``:
``torch.save(net.state_dict())``, optionally under ``"model"`` or
``"state_dict"``, optionally with DDP's ``module.`` prefix), read in torch's
weights-only mode. Encoder and decoder weights both come from it; a task with
another number of classes than the checkpoint's ``out`` layer gets a new,
seeded ``out`` layer.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from peftlab.backbone import Backbone, Features
from peftlab.errors import CheckpointFileError
from peftlab.persistence.safe_load import load_weights_file

VIT_PRESETS = {
    "attention": ("attn.qkv", "attn.out_proj"),
    "qkv": ("attn.qkv",),
    "mlp": ("mlp.linear1", "mlp.linear2"),
    "attention+mlp": ("attn.qkv", "attn.out_proj", "mlp.linear1", "mlp.linear2"),
    "all-linear": ("attn.qkv", "attn.out_proj", "mlp.linear1", "mlp.linear2"),
    "ia3": ("attn.qkv", "mlp.linear2"),
    "mlp_out": ("mlp.linear2",),
}
VIT_SITES = {"attention_out": "attn.out_proj", "mlp_in": "mlp.linear1", "mlp_out": "mlp.linear2"}
UNETR_DECODER = ("encoder1", "encoder2", "encoder3", "encoder4", "decoder5", "decoder4", "decoder3", "decoder2", "out")
UNETR_SKIP_BLOCKS = (3, 6, 9)  # 0-based blocks whose outputs MONAI's UNETR decodes (hidden_states_out[3, 6, 9])


class UNETRDecoder(nn.Module):
    """UNETR's decoder (MONAI's modules and forward) on :class:`MonaiUNETRBackbone`'s features:
    ``skips`` = ``[input image, block 3, block 6, block 9 states]``, ``hidden`` = the final states.
    Returns logits ``[B, num_classes, *img_size]``."""

    def __init__(self, parts: dict[str, nn.Module], feat_size: tuple[int, ...], hidden_size: int) -> None:
        super().__init__()
        for name in UNETR_DECODER:
            self.add_module(name, parts[name])
        self.feat_size, self.hidden_size = tuple(feat_size), hidden_size

    def proj_feat(self, x: Tensor) -> Tensor:
        """Tokens ``[B, T, D]`` -> the patch grid ``[B, D, *feat_size]`` (MONAI's ``UNETR.proj_feat``)."""
        return x.reshape(x.shape[0], *self.feat_size, self.hidden_size).movedim(-1, 1).contiguous()

    def forward(self, f: Features) -> Tensor:
        if f.skips is None or len(f.skips) != 4:
            raise ValueError("UNETRDecoder needs the features of MonaiUNETRBackbone (input image and 3 skip states)")
        x_in, x2, x3, x4 = f.skips
        enc1 = self.encoder1(x_in)
        enc2 = self.encoder2(self.proj_feat(x2))
        enc3 = self.encoder3(self.proj_feat(x3))
        enc4 = self.encoder4(self.proj_feat(x4))
        dec3 = self.decoder5(self.proj_feat(f.hidden), enc4)
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        return self.out(self.decoder2(dec1, enc1))


class MonaiUNETRBackbone(Backbone):
    """MONAI's UNETR: its ViT encoder as the backbone, its decoder as the segmentation head.

    Args:
        img_size: the input size the network is built for (2 or 3 sizes, each divisible by
            16, UNETR's patch size); training crops have this size and whole volumes are
            evaluated in sliding windows of it (the ``input_size`` the segmentation task reads).
        in_channels: input channels (1 for a CT or MR modality).
        out_channels: classes of the checkpoint's output layer (``None``: read from
            ``checkpoint_path``; random init: the task's class count).
        feature_size, hidden_size, mlp_dim, num_heads, norm_name, res_block, conv_block,
        qkv_bias, dropout_rate, proj_type: MONAI's ``UNETR`` arguments (defaults: MONAI's, the
            published network; the offline configs use a tiny one). UNETR always has 12 blocks.
        checkpoint_path: a MONAI bundle ``model.pt`` (state dict of the whole UNETR).
        seed: seed of the random initialisation (torch's global random state is left as it was).
        gradient_checkpointing: recompute each block's activations in the backward.

    Batch input: ``images`` ``[B, C, *img_size]``. Features: the final token states
    ``[B, T, D]`` (T = patches), ``skips`` = ``[images, block 3, block 6, block 9 states]``.
    """

    input_keys = ("images",)
    blocks_path = "vit.blocks"
    target_presets, adapter_sites = VIT_PRESETS, VIT_SITES

    def __init__(self, img_size: list[int] = (96, 96, 96), in_channels: int = 1, out_channels: int | None = None,
                 feature_size: int = 16, hidden_size: int = 768, mlp_dim: int = 3072, num_heads: int = 12,
                 norm_name: str = "instance", res_block: bool = True, conv_block: bool = True,
                 qkv_bias: bool = False, dropout_rate: float = 0.0, proj_type: str = "conv",
                 checkpoint_path: str | None = None, seed: int = 0, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        img_size = [int(s) for s in img_size]
        if len(img_size) not in (2, 3) or any(s < 16 or s % 16 for s in img_size):
            raise ValueError(f"UNETR img_size must be 2 or 3 sizes, each a multiple of 16 (its patch size), "
                             f"got {img_size}")
        self.init_args = dict(img_size=img_size, in_channels=in_channels, out_channels=out_channels,
                              feature_size=feature_size, hidden_size=hidden_size, mlp_dim=mlp_dim,
                              num_heads=num_heads, norm_name=norm_name, res_block=res_block, conv_block=conv_block,
                              qkv_bias=qkv_bias, dropout_rate=dropout_rate, proj_type=proj_type,
                              checkpoint_path=checkpoint_path, seed=seed,
                              gradient_checkpointing=gradient_checkpointing)
        self.gradient_checkpointing = gradient_checkpointing
        state = _read_bundle_weights(checkpoint_path) if checkpoint_path is not None else None
        if out_channels is None:
            weight = (state or {}).get("out.conv.conv.weight")
            out_channels = int(weight.shape[0]) if weight is not None else 2
        net = self._build(out_channels)
        _register_prefix_attention()
        if state is not None:
            _load_into(net, state, checkpoint_path)
        for block in net.vit.blocks:
            # MONAI builds this norm in every TransformerBlock but uses it only with cross-attention,
            # which UNETR never has: gone, so that no method counts or trains a layer that never runs
            if not block.with_cross_attention:
                block.norm_cross_attn = nn.Identity()
        self.vit = net.vit
        self.embed_dim, self.input_size = hidden_size, tuple(img_size)
        self.feat_size = tuple(s // 16 for s in img_size)
        self.out_channels = out_channels
        # the decoder is not part of the backbone (see the module docstring): a plain dict keeps it
        # out of this module's parameters until segmentation_head hands a copy to the task head
        self._decoder = {name: getattr(net, name) for name in UNETR_DECODER}

    def _build(self, out_channels: int, seed_offset: int = 0) -> nn.Module:
        from monai.networks.nets import UNETR

        a = self.init_args
        with torch.random.fork_rng():
            torch.manual_seed(a["seed"] + seed_offset)
            return UNETR(in_channels=a["in_channels"], out_channels=out_channels, img_size=a["img_size"],
                         feature_size=a["feature_size"], hidden_size=a["hidden_size"], mlp_dim=a["mlp_dim"],
                         num_heads=a["num_heads"], proj_type=a["proj_type"], norm_name=a["norm_name"],
                         conv_block=a["conv_block"], res_block=a["res_block"], dropout_rate=a["dropout_rate"],
                         spatial_dims=len(a["img_size"]), qkv_bias=a["qkv_bias"])

    @property
    def name(self) -> str:
        return f"UNETR ({'checkpoint' if self.init_args['checkpoint_path'] else 'random init'})"

    def config(self) -> dict[str, Any]:
        a = self.init_args
        return {"family": "unetr", "blocks": self.num_blocks, "embed_dim": self.embed_dim, "img_size": a["img_size"],
                "in_channels": a["in_channels"], "mlp_dim": a["mlp_dim"], "num_heads": a["num_heads"],
                "source": "checkpoint" if a["checkpoint_path"] else "random"}

    def segmentation_head(self, num_classes: int) -> UNETRDecoder:
        """UNETR's decoder (a copy, so the backbone can serve several heads) with ``num_classes``
        outputs: the checkpoint's ``out`` layer when it has as many classes, else a new seeded one."""
        parts = copy.deepcopy(self._decoder)
        if num_classes != self.out_channels:
            parts["out"] = self._build(num_classes, seed_offset=1).out
        return UNETRDecoder(parts, self.feat_size, self.embed_dim)

    # ---- the shared block loop -----------------------------------------------------------
    def embed(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        images = batch["images"]
        if tuple(images.shape[2:]) != self.input_size:
            raise ValueError(f"UNETR was built for inputs of {list(self.input_size)}, got {list(images.shape[2:])} "
                             f"(crop to img_size for training; whole volumes run in sliding windows)")
        x = self.vit.patch_embedding(images)
        attend = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        return x, attend, attend.clone()

    def run_block(self, block: nn.Module, x: Tensor, attn_mask: Tensor) -> Tensor:
        return block(x)  # every patch attends to every patch

    def final_norm(self, x: Tensor) -> Tensor:
        return self.vit.norm(x)

    def forward(self, batch: dict[str, Any], output_layers: bool = False) -> Features:
        f = super().forward(batch, output_layers=True)
        layers = f.layers  # the embeddings, then each block's output
        f.skips = [batch["images"]] + [layers[i + 1] for i in UNETR_SKIP_BLOCKS]
        if not output_layers:
            f.layers = None
        return f


def _read_bundle_weights(path: str, network: str = "UNETR") -> dict[str, Tensor]:
    """The state dict of a MONAI bundle weights file (see the module docstring), keys as the network names them."""
    from pathlib import Path

    if not Path(path).is_file():
        raise FileNotFoundError(f"{network} checkpoint {path} does not exist")
    state = load_weights_file(path, "MONAI bundle weights file")
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointFileError(f"{path}: not a MONAI bundle weights file (a state dict of tensors, or one under "
                                  f"'model' / 'state_dict')")
    return {k.removeprefix("module."): v for k, v in state.items()}


UNETR_SHAPE_ARGS = "img_size, feature_size, hidden_size, mlp_dim, num_heads, in_channels, qkv_bias"


def _load_into(net: nn.Module, state: dict[str, Tensor], path: str, network: str = "UNETR",
               shape_args: str = UNETR_SHAPE_ARGS) -> None:
    """Load ``state`` into the whole ``network`` (UNETR, SwinUNETR); keys of cross-attention layers that older
    MONAI versions always created are dropped (as MONAI's ``ViT.load_old_state_dict`` does); anything else that
    does not fit names the file and the arguments (``shape_args``) that decide the shapes."""
    expected = net.state_dict()
    state = {k: v for k, v in state.items() if k in expected or "cross_attn" not in k}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise CheckpointFileError(f"{path}: does not fit this {network} (check {shape_args}): missing {missing[:3]}, "
                                  f"unexpected {unexpected[:3]}, shapes {wrong[:3]}")
    net.load_state_dict(state)


# ---- prefix tuning: MONAI's SABlock with learned keys/values prepended ----------------------------

def _sablock_with_prefix(self, prefix, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
    """monai.networks.blocks.SABlock.forward (combined qkv), attending over the prefix too."""
    from peftlab.methods.prompts import attend_with_prefix

    if not self.use_combined_linear or self.rel_positional_embedding is not None or self.causal:
        raise ValueError("prefix tuning supports MONAI's SABlock with a combined qkv layer, without relative "
                         "position embeddings or causal masks")
    q, k, v = self.input_rearrange(self.qkv(x))  # each [B, heads, T, head_dim]
    mask = None if attn_mask is None else attn_mask[:, None, None, :].bool()
    y = attend_with_prefix(prefix, q, k, v, mask, dropout=self.dropout_rate if self.training else 0.0,
                           scale=self.scale)
    y = self.out_rearrange(y)
    if self.include_fc:
        y = self.out_proj(y)
    return self.drop_output(y)


def _register_prefix_attention() -> None:
    """Teach prefix tuning MONAI's SABlock. Called when a UNETR is built, not at import: importing
    ``monai.networks`` imports transformers and torchaudio (MONAI's other networks), which a bare
    ``import peftlab_medical`` must not (``tests/test_lean_imports.py``)."""
    from monai.networks.blocks.selfattention import SABlock

    from peftlab.methods.prompts import register_prefix_attention

    register_prefix_attention(SABlock, _sablock_with_prefix)
