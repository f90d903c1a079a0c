"""The method x backbone matrix on MONAI's SwinUNETR encoder (``swinViT``: four stages of one
shifted-window block each, widths 24, 48, 96, 192, patch merging between stages; MONAI's layer
names ``attn.qkv``, ``attn.proj``, ``mlp.linear1`` / ``linear2``). Every registered method keeps the
foundation's guarantees on it (exact trainable count, frozen weights unchanged, changed output,
adapter save/load identity, merge equivalence) or refuses, saying why; the decoder is the task head
and is not counted here (tests/medical/test_swin_unetr.py counts it)."""

from __future__ import annotations

import pytest

from peftlab import METHODS, build_method
from peftlab_medical import MonaiSwinUNETRBackbone

from tests.method_checks import (SMALL_OPTIONS, TARGET_SHAPE_METHODS, adapter_family_count,
                                  check_method_guarantees, linear, target_shape_count, volume_batch)

# 32^3 leaves one voxel at the deepest stage, which the decoder's instance norm cannot train on: the matrix
# never runs the decoder (its head is a linear regression head), and norm_name only concerns the decoder
SWIN = dict(img_size=[32, 32, 32], feature_size=24, depths=[1, 1, 1, 1], window_size=4, norm_name="batch")
WIDTHS = [24, 48, 96, 192]  # one block per stage
HEADS = [3, 6, 12, 24]
TABLE = (2 * 4 - 1) ** 3  # relative-position bias rows of a 4^3 window


def make(seed: int = 0) -> MonaiSwinUNETRBackbone:
    return MonaiSwinUNETRBackbone(**SWIN, seed=seed)


def block(d: int, heads: int) -> int:
    """norm1, relative-position bias table, qkv, proj, norm2, MLP (ratio 4)."""
    return 2 * d + TABLE * heads + linear(d, 3 * d) + linear(d, d) + 2 * d + linear(d, 4 * d) + linear(4 * d, d)


def per_block(count) -> int:
    return sum(count(d) for d in WIDTHS)


PATCH_EMBED = linear(2 ** 3, 24)  # a 2x2x2 convolution, one input channel
MERGING = sum(linear(8 * d, 2 * d, bias=False) + 2 * 8 * d for d in WIDTHS)  # reduction + norm after every stage
BITFIT = 24 + per_block(lambda d: 11 * d) + sum(8 * d for d in WIDTHS)  # patch bias; blocks; merging norm biases
EXPECTED = {
    "full": PATCH_EMBED + sum(block(d, h) for d, h in zip(WIDTHS, HEADS)) + MERGING,
    "linear_probe": 0,
    "bitfit": BITFIT,
    "lora": per_block(lambda d: 4 * ((d + 3 * d) + (d + d))),
    "ia3": per_block(lambda d: 3 * d + 4 * d),  # qkv outputs, linear2 inputs
    "adapter": per_block(lambda d: 2 * (linear(d, 8) + linear(8, d))),
    "adaptformer": per_block(lambda d: linear(d, 8) + linear(8, d)),
    "ssf": per_block(lambda d: 2 * (7 * d + 4 * d)),  # after norm1, qkv, proj, norm2, linear1, linear2
    **{m: per_block(lambda d, m=m: target_shape_count(m, SMALL_OPTIONS[m], [(d, 3 * d), (d, d)]))
       for m in TARGET_SHAPE_METHODS},
    "compacter": sum(adapter_family_count("compacter", SMALL_OPTIONS["compacter"], d, 1) for d in WIDTHS)
    - 3 * 2 * 4 ** 3,  # the PHM rules are shared by all blocks: counted once
    "ln_tuning": per_block(lambda d: 2 * 2 * d) + sum(2 * 8 * d for d in WIDTHS),  # blocks' and mergings' norms
    "partial": block(192, 24),  # the last block
    "combined": per_block(lambda d: target_shape_count("lora", {"r": 2}, [(d, 3 * d), (d, d)])) + BITFIT,
}
OPTIONS = {"lora": {"r": 4}, "adapter": {"bottleneck": 8}, "adaptformer": {"bottleneck": 8}, **SMALL_OPTIONS}
REFUSED = {  # method -> why it cannot apply to a windowed, hierarchical encoder
    "prompt": "has no such sequence",
    "loreft": "edits the token states that flow between blocks",
    "prefix": "shifted local windows",
}


def test_every_registered_method_is_in_the_swin_unetr_matrix():
    assert set(METHODS) == set(EXPECTED) | set(REFUSED)
    assert not set(EXPECTED) & set(REFUSED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_methods_on_swin_unetr_encoder(name, tmp_path):
    check_method_guarantees(make, volume_batch(), name, OPTIONS.get(name, {}), EXPECTED[name], 16 * 24, tmp_path)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_token_methods_refuse_swin_unetr_saying_why(name):
    with pytest.raises(ValueError, match=REFUSED[name]):
        build_method(name, **SMALL_OPTIONS.get(name, {})).apply(make())
