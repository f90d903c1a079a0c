"""The method x backbone matrix on SAM's image encoder (timm ``samvit_base_patch16`` shrunk: 2 windowed
blocks 32 wide with 2 heads, relative positions, 8 px patches, then SAM's neck: 1x1 conv to 256 channels,
LayerNorm2d, 3x3 conv, LayerNorm2d). Every registered method keeps the foundation's guarantees on it
(exact trainable count, frozen weights unchanged, changed output, adapter save/load identity, merge
equivalence) or refuses, saying why. The features are the neck's 256-channel map as 16 tokens; the mask
decoder is the task head and is not counted here (tests/medical/test_timm_segmentation.py counts it)."""

from __future__ import annotations

import pytest
import torch

from peftlab import METHODS, build_method
from peftlab_medical import TimmBackbone

from tests.method_checks import (SMALL_OPTIONS, TARGET_SHAPE_METHODS, adapter_family_count,
                                  check_method_guarantees, linear, target_shape_count)
from tests.medical.test_timm_segmentation import TINY_SAM

D, F, L, HEAD_DIM, WINDOW, NECK = 32, 128, 2, 16, 2, 256
GRID = 32 // 8  # 4 x 4 patches


def make(seed: int = 0) -> TimmBackbone:
    return TimmBackbone(**TINY_SAM, seed=seed)


def batch() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"images": torch.randn(3, 1, 32, 32, generator=g), "labels": torch.tensor([0.5, -1.0, 2.0]),
            "ids": ["a", "b", "c"]}


REL_POS = 2 * (2 * WINDOW - 1) * HEAD_DIM  # rel_pos_h and rel_pos_w of a window's attention
BLOCK = 2 * D + linear(D, 3 * D) + linear(D, D) + REL_POS + 2 * D + linear(D, F) + linear(F, D)
NECK_PARAMS = D * NECK + 2 * NECK + NECK * NECK * 9 + 2 * NECK  # the convolutions have no bias
BITFIT = D + L * (D + 3 * D + D + D + F + D) + 2 * NECK  # patch bias; blocks; the neck's two norm biases
EXPECTED = {
    "full": linear(8 * 8, D) + GRID * GRID * D + L * BLOCK + NECK_PARAMS,  # patches, absolute positions
    "linear_probe": 0,
    "bitfit": BITFIT,
    "lora": L * 4 * ((D + 3 * D) + (D + D)),
    "ia3": L * (3 * D + F),  # qkv outputs, fc2 inputs
    "adapter": L * 2 * (linear(D, 8) + linear(8, D)),
    "adaptformer": L * (linear(D, 8) + linear(8, D)),
    "ssf": L * 2 * (7 * D + F),  # after norm1, qkv, proj, norm2, fc1, fc2
    **{m: L * target_shape_count(m, SMALL_OPTIONS[m], [(D, 3 * D), (D, D)]) for m in TARGET_SHAPE_METHODS},
    "compacter": adapter_family_count("compacter", SMALL_OPTIONS["compacter"], D, L),
    "ln_tuning": L * 2 * 2 * D + 2 * 2 * NECK,  # norm1 and norm2 of every block, the neck's two norms
    "partial": BLOCK,  # the top block
    "combined": L * target_shape_count("lora", {"r": 2}, [(D, 3 * D), (D, D)]) + BITFIT,
}
OPTIONS = {"lora": {"r": 4}, "adapter": {"bottleneck": 8}, "adaptformer": {"bottleneck": 8}, **SMALL_OPTIONS}
REFUSED = {  # SAM's blocks read a 2D grid of patches split into windows, not one token sequence
    "prompt": "has no such sequence",
    "loreft": "edits the token states that flow between blocks",
    "prefix": "no token sequence",
}


def test_every_registered_method_is_in_the_sam_matrix():
    assert set(METHODS) == set(EXPECTED) | set(REFUSED)
    assert not set(EXPECTED) & set(REFUSED)


def test_the_encoder_gives_the_necks_map_as_tokens():
    with torch.no_grad():
        assert make()(batch()).hidden.shape == (3, GRID * GRID, NECK)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_methods_on_sam_image_encoder(name, tmp_path):
    check_method_guarantees(make, batch(), name, OPTIONS.get(name, {}), EXPECTED[name], NECK, tmp_path)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_token_methods_refuse_sam_saying_why(name):
    with pytest.raises(ValueError, match=REFUSED[name]):
        build_method(name, **SMALL_OPTIONS.get(name, {})).apply(make())
