"""timm backbones: each family's features, and the real local-file path
(timm's pretrained_cfg_overlay) with a small random-init checkpoint written
in timm's format, including channel adaptation and position-embedding resizing."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from peftlab_medical import TimmBackbone


@pytest.mark.parametrize("name,size,tokens,dim,cls", [
    ("vit_tiny_patch16_224", 32, 1 + 4, 192, True),
    ("deit_tiny_distilled_patch16_224", 32, 2 + 4, 192, True),  # class + distillation tokens
    ("swin_tiny_patch4_window7_224", 64, 4, 768, False),  # last stage 2x2 at 64 px
    ("resnet50", 64, 4, 2048, False),
])
def test_families_give_token_features(name, size, tokens, dim, cls):
    kwargs = dict(depth=2) if name.startswith(("vit", "deit")) else {}
    bb = TimmBackbone(name=name, img_size=size, in_chans=3, **kwargs).eval()
    with torch.no_grad():
        f = bb({"images": torch.randn(2, 3, size, size)})
    assert f.hidden.shape == (2, tokens, dim) and bb.embed_dim == dim
    assert (f.cls is not None) == cls
    if cls:  # prefix tokens are not content
        assert f.mask.sum(1).tolist() == [4, 4]


def test_unsupported_family_and_depth_misuse_are_clear():
    with pytest.raises(ValueError, match="not supported yet; supported families"):
        TimmBackbone(name="convnext_atto")
    with pytest.raises(ValueError, match="depth only applies to random-init models or local checkpoints"):
        TimmBackbone(name="vit_tiny_patch16_224", pretrained=True, depth=2)


def test_local_timm_checkpoint_is_adapted_like_hub_weights(tmp_path):
    # a checkpoint as timm publishes it: RGB, 224 px, with its 1000-class head
    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2).eval()
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))

    same = TimmBackbone(name="vit_tiny_patch16_224", checkpoint_path=str(path), depth=2).eval()
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(same({"images": images}).hidden, source.forward_features(images))
    assert same.config()["source"] == "pretrained"

    # grayscale at 64 px: timm sums the RGB input filters and resizes the position embedding
    gray = TimmBackbone(name="vit_tiny_patch16_224", checkpoint_path=str(path), depth=2, in_chans=1,
                        img_size=64)
    torch.testing.assert_close(gray.model.patch_embed.proj.weight,
                               source.patch_embed.proj.weight.sum(dim=1, keepdim=True))
    assert gray.model.pos_embed.shape == (1, 1 + 4 * 4, 192)
    torch.testing.assert_close(gray.model.pos_embed[:, 0], source.pos_embed[:, 0])  # class token position kept
    assert "head.weight" not in gray.state_dict() and gray.embed_dim == 192

    with pytest.raises(FileNotFoundError, match="does not exist"):
        TimmBackbone(name="vit_tiny_patch16_224", checkpoint_path=str(tmp_path / "missing.safetensors"))


def test_visual_prompts_go_after_class_and_register_tokens():
    from peftlab import build_method

    bb = TimmBackbone(name="vit_small_patch14_reg4_dinov2", img_size=28, depth=2).eval()
    assert bb.num_prefix_tokens == 5  # class token + 4 registers
    images = {"images": torch.randn(2, 3, 28, 28)}
    with torch.no_grad():
        plain = bb(images)
    seen = []
    bb.model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    build_method("prompt", num_tokens=3, deep=True).apply(bb)
    with torch.no_grad():
        prompted = bb(images)
    tokens = bb.token_hooks["prompt"].tokens[0]
    torch.testing.assert_close(seen[0][0, 5:8], tokens)  # right after the 5 prefix tokens
    assert seen[0].shape[1] == plain.hidden.shape[1] + 3
    assert prompted.hidden.shape == plain.hidden.shape and torch.equal(prompted.mask, plain.mask)
    assert plain.mask[0].tolist() == [False] * 5 + [True] * 4
