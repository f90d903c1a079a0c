"""The method x backbone matrix on imaging backbones: a ViT (timm
VisionTransformer: class token, batch-first) and ResNet-50 (a CNN). Every
registered method either keeps the foundation's guarantees or fails with a
message that says why it cannot apply."""

from __future__ import annotations

import pytest
import torch

from peftlab import METHODS, build_method
from peftlab_medical import TimmBackbone

from tests.method_checks import (SMALL_OPTIONS, TARGET_SHAPE_METHODS, adapter_family_count,
                                  check_empty_prefix_matches_library, check_method_guarantees, target_shape_count)

VIT = dict(name="vit_tiny_patch16_224", img_size=32, depth=2, in_chans=1)  # D=192, 4 patches + class token
D, F, L = 192, 768, 2
RESNET_STAGES = [(64, 3), (128, 4), (256, 6), (512, 3)]  # (width, blocks) of ResNet-50


def make(kind: str, seed: int = 0) -> TimmBackbone:
    return TimmBackbone(**VIT, seed=seed) if kind == "vit" else TimmBackbone(name="resnet50", in_chans=1, seed=seed)


def batch(kind: str) -> dict:
    g = torch.Generator().manual_seed(0)
    size = 32 if kind == "vit" else 64
    return {"images": torch.randn(3, 1, size, size, generator=g), "labels": torch.tensor([0.5, -1.0, 2.0]),
            "ids": ["a", "b", "c"]}


def linear(i: int, o: int) -> int:
    return i * o + o


def resnet_blocks():
    """(input channels, width) of every bottleneck block of ResNet-50."""
    c_in = 64
    for width, blocks in RESNET_STAGES:
        for _ in range(blocks):
            yield c_in, width
            c_in = 4 * width


VIT_EXPECTED = {
    "full": (16 * 16 * 1 * D + D) + D + 5 * D + L * (2 * D + linear(D, 3 * D) + linear(D, D) + 2 * D
                                                   + linear(D, F) + linear(F, D)) + 2 * D,
    "linear_probe": 0,
    "bitfit": D + L * (D + 3 * D + D + D + F + D) + D,  # patch-embedding bias, blocks, final norm
    "lora": L * 4 * ((D + 3 * D) + (D + D)),
    "ia3": L * (3 * D + F),
    "adapter": L * 2 * (linear(D, 8) + linear(8, D)),
    "adaptformer": L * (linear(D, 8) + linear(8, D)),
    "prompt": 3 * D * L,
    "ssf": L * 2 * (7 * D + F),
    **{m: L * target_shape_count(m, SMALL_OPTIONS[m], [(D, 3 * D), (D, D)]) for m in TARGET_SHAPE_METHODS},
    **{m: adapter_family_count(m, SMALL_OPTIONS[m], D, L) for m in ("compacter", "loreft", "prefix")},
    "ln_tuning": L * 2 * 2 * D + 2 * D,  # norm1 and norm2 of every block, the final norm
    "partial": 2 * D + linear(D, 3 * D) + linear(D, D) + 2 * D + linear(D, F) + linear(F, D),  # the top block
}
VIT_EXPECTED["combined"] = L * target_shape_count("lora", {"r": 2}, [(D, 3 * D), (D, D)]) + VIT_EXPECTED["bitfit"]


def resnet_convs(c_in: int, w: int) -> list[tuple[int, int]]:
    """(flattened input width in x k x k, output channels) of a bottleneck block's three convolutions."""
    return [(c_in, w), (9 * w, w), (w, 4 * w)]


# channels of the batch norms inside the bottleneck blocks: bn1, bn2 (w each) and bn3 (4w) of every block, and
# the downsample branch's (4w) in the first block of every stage; each follows a conv with as many channels
BLOCK_BN_CHANNELS = sum(w + w + 4 * w for _, w in resnet_blocks()) + sum(4 * w for w, _ in RESNET_STAGES)
STEM_BN_CHANNELS = 64

RESNET_EXPECTED = {
    "full": 23_508_032 - 3 * 7 * 7 * 64 + 1 * 7 * 7 * 64,  # published ResNet-50 (no classifier), 1 input channel
    "linear_probe": 0,
    "bitfit": STEM_BN_CHANNELS + BLOCK_BN_CHANNELS,  # every batch-norm bias; ResNet convolutions have none
    "lora": sum(4 * (c_in + w) + 4 * (9 * w + w) + 4 * (w + 4 * w) for c_in, w in resnet_blocks()),
    "ia3": sum(2 * w for _, w in resnet_blocks()),  # conv2 output scale + conv3 input scale
    "ssf": 2 * (BLOCK_BN_CHANNELS + BLOCK_BN_CHANNELS),  # scale + shift after every conv and batch norm in the blocks
    **{m: sum(target_shape_count(m, SMALL_OPTIONS[m], resnet_convs(c, w)) for c, w in resnet_blocks())
       for m in ("dora", "lora_plus")},
    "ln_tuning": 2 * (STEM_BN_CHANNELS + BLOCK_BN_CHANNELS),  # scale and shift of every batch norm
    "partial": 2048 * 512 + 9 * 512 * 512 + 512 * 2048 + 2 * (512 + 512 + 2048),  # the last block
    "combined": sum(target_shape_count("lora", {"r": 2}, resnet_convs(c, w)) for c, w in resnet_blocks())
    + STEM_BN_CHANNELS + BLOCK_BN_CHANNELS,  # LoRA r=2 and bitfit
}
OPTIONS = {"lora": {"r": 4}, "adapter": {"bottleneck": 8}, "adaptformer": {"bottleneck": 8},
           "prompt": {"num_tokens": 3, "deep": True}, **SMALL_OPTIONS}
CANNOT_APPLY = {  # method -> why it refuses a CNN
    "adapter": "bottleneck adapters act on token states",
    "adaptformer": "bottleneck adapters act on token states",
    "compacter": "bottleneck adapters act on token states",
    "prompt": "has no such sequence",
    "loreft": "edits the token states that flow between blocks",
    "prefix": "has no token sequence",
    "pissa": "decomposes linear weights",
    "olora": "decomposes linear weights",
    "vera": "linear layers only",
    "oft": "linear layers only",
    "fourierft": "linear layers only",
}


# Convolutional LoHa / LoKr / AdaLoRA / BOFT work on ResNet-50 (peft adapts Conv2d), but one check costs
# 10 s to 7 min on 2 CPU cores (BOFT builds a 4608-wide block-diagonal rotation for every 3x3 conv); their
# counts follow the same formulas as LoRA's on the flattened kernels. The ViT runs them all.
TOO_SLOW_ON_RESNET = {"loha", "lokr", "adalora", "boft"}


def test_every_registered_method_is_in_the_imaging_matrix():
    assert set(METHODS) == set(VIT_EXPECTED) == set(RESNET_EXPECTED) | set(CANNOT_APPLY) | TOO_SLOW_ON_RESNET


@pytest.mark.parametrize("name", sorted(VIT_EXPECTED))
def test_methods_on_vit(name, tmp_path):
    check_method_guarantees(lambda: make("vit"), batch("vit"), name, OPTIONS.get(name, {}), VIT_EXPECTED[name],
                            D, tmp_path)


@pytest.mark.parametrize("name", sorted(RESNET_EXPECTED))
def test_methods_on_resnet50(name, tmp_path):
    check_method_guarantees(lambda: make("resnet"), batch("resnet"), name, OPTIONS.get(name, {}),
                            RESNET_EXPECTED[name], 2048, tmp_path)


def test_prefix_attention_without_tokens_is_timms_own_attention():
    check_empty_prefix_matches_library(lambda: make("vit"), batch("vit"))


def test_prefix_tuning_refuses_swin_windows_saying_why():
    swin = TimmBackbone(name="swin_tiny_patch4_window7_224", img_size=64, in_chans=1)
    with pytest.raises(ValueError, match="shifted local windows"):
        build_method("prefix").apply(swin)


@pytest.mark.parametrize("name", sorted(CANNOT_APPLY))
def test_token_methods_refuse_a_cnn_clearly(name):
    with pytest.raises(ValueError, match=CANNOT_APPLY[name]):
        build_method(name, **OPTIONS.get(name, {})).apply(make("resnet"))
