"""The method x backbone matrix on MONAI's UNETR encoder (12 transformer blocks over 3D
patches, MONAI's own layer names: ``attn.qkv`` without bias, ``attn.out_proj``,
``mlp.linear1`` / ``linear2``). Every registered method keeps the foundation's
guarantees on it (exact trainable count, frozen weights unchanged, changed output,
adapter save/load identity, merge equivalence); the decoder is the task head and is
not counted here (tests/medical/test_segmentation.py counts it)."""

from __future__ import annotations

import pytest

from peftlab import METHODS
from peftlab_medical import MonaiUNETRBackbone

from tests.method_checks import (SMALL_OPTIONS, TARGET_SHAPE_METHODS, adapter_family_count,
                                  check_empty_prefix_matches_library, check_method_guarantees, linear,
                                  target_shape_count, volume_batch)

UNETR = dict(img_size=[32, 32, 32], feature_size=4, hidden_size=48, mlp_dim=96, num_heads=4)
D, F, L, T = 48, 96, 12, 8  # width, MLP width, blocks (UNETR always has 12), patches of a 32^3 input
PATCH = 16 ** 3  # one input channel, 16^3 patches


def make(seed: int = 0) -> MonaiUNETRBackbone:
    return MonaiUNETRBackbone(**UNETR, seed=seed)


BLOCK = 2 * D + linear(D, 3 * D, bias=False) + linear(D, D) + 2 * D + linear(D, F) + linear(F, D)
EXPECTED = {
    "full": linear(PATCH, D) + T * D + L * BLOCK + 2 * D,  # patch embedding, position embeddings, blocks, norm
    "linear_probe": 0,
    "bitfit": D + L * (D + D + D + F + D) + D,  # patch bias; norm1, out_proj, norm2, linear1, linear2; final norm
    "lora": L * 4 * ((D + 3 * D) + (D + D)),
    "ia3": L * (3 * D + F),
    "adapter": L * 2 * (linear(D, 8) + linear(8, D)),
    "adaptformer": L * (linear(D, 8) + linear(8, D)),
    "prompt": 3 * D * L,
    "ssf": L * 2 * (7 * D + F),  # after norm1, qkv, out_proj, norm2, linear1, linear2
    **{m: L * target_shape_count(m, SMALL_OPTIONS[m], [(D, 3 * D), (D, D)]) for m in TARGET_SHAPE_METHODS},
    **{m: adapter_family_count(m, SMALL_OPTIONS[m], D, L) for m in ("compacter", "loreft", "prefix")},
    "ln_tuning": L * 2 * 2 * D + 2 * D,
    "partial": BLOCK,
}
EXPECTED["combined"] = L * target_shape_count("lora", {"r": 2}, [(D, 3 * D), (D, D)]) + EXPECTED["bitfit"]
OPTIONS = {"lora": {"r": 4}, "adapter": {"bottleneck": 8}, "adaptformer": {"bottleneck": 8},
           "prompt": {"num_tokens": 3, "deep": True}, **SMALL_OPTIONS}


def test_every_registered_method_is_in_the_unetr_matrix():
    assert set(METHODS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_methods_on_unetr_encoder(name, tmp_path):
    check_method_guarantees(make, volume_batch(), name, OPTIONS.get(name, {}), EXPECTED[name], D, tmp_path)


def test_prefix_attention_without_tokens_is_monais_own_attention():
    check_empty_prefix_matches_library(make, volume_batch())
