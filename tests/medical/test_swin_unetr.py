"""MONAI's SwinUNETR as a segmentation backbone: the Swin encoder (backbone) + decoder (head)
compute exactly MONAI's own SwinUNETR forward in 3D and 2D, the decoder trains as the head,
segmentation adapters round-trip, a MONAI bundle ``model.pt`` written here loads (and a bundle of
another shape is refused naming the file), inputs of the wrong size get a located error, and
gradient checkpointing changes nothing but memory."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import SwinUNETR

from peftlab import PeftModule, build_method
from peftlab.errors import CheckpointFileError
from peftlab_medical import MonaiSwinUNETRBackbone

from tests.medical.segmentation_checks import check_adapter_round_trip_and_windows
from tests.medical.test_segmentation import write_bundle

TINY_3D = dict(img_size=[32, 32, 32], feature_size=12, depths=[1, 1, 1, 1], window_size=4, norm_name="batch")
TINY_2D = dict(img_size=[64, 64], feature_size=12, depths=[1, 1, 1, 1], window_size=4)
MONAI_ARGS = ("feature_size", "depths", "window_size", "norm_name")


def tiny(shape: dict = TINY_3D, **kw) -> MonaiSwinUNETRBackbone:
    return MonaiSwinUNETRBackbone(**{**shape, **kw})


def monai_net(shape: dict, out: int = 3, seed: int = 7) -> SwinUNETR:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return SwinUNETR(in_channels=1, out_channels=out, spatial_dims=len(shape["img_size"]),
                         **{k: shape[k] for k in MONAI_ARGS if k in shape}).eval()


@pytest.mark.parametrize("shape", [TINY_3D, TINY_2D], ids=["3d", "2d"])
def test_backbone_and_decoder_are_monais_swin_unetr(shape):
    """Encoder + decoder compute exactly MONAI's SwinUNETR forward; the backbone's parameters are
    exactly swinViT's and the decoder's exactly the rest (no layer lost or doubled)."""
    backbone = tiny(shape, out_channels=3, seed=7).eval()
    head = backbone.segmentation_head(3).eval()
    net = monai_net(shape)
    x = torch.randn(2, 1, *shape["img_size"])
    with torch.no_grad():
        assert torch.equal(head(backbone({"images": x})), net(x))
    encoder = sum(p.numel() for p in net.swinViT.parameters())
    assert sum(p.numel() for p in backbone.parameters()) == encoder
    assert sum(p.numel() for p in head.parameters()) == sum(p.numel() for p in net.parameters()) - encoder
    assert backbone.num_blocks == 4 and backbone.embed_dim == 16 * 12


def test_decoder_trains_as_the_head():
    """linear_probe trains the decoder only; lora adds only the encoder's low-rank factors to it."""
    probe = PeftModule(tiny(TINY_2D), build_method("linear_probe"), task_type="segmentation", num_outputs=3)
    decoder = sum(p.numel() for p in probe.head.parameters())
    assert probe.parameter_summary()["trainable_params"] == decoder
    assert probe.parameter_summary()["backbone_trainable_params"] == 0
    lora = PeftModule(tiny(TINY_2D), build_method("lora", r=4), task_type="segmentation", num_outputs=3)
    factors = sum(4 * ((d + 3 * d) + (d + d)) for d in (12, 24, 48, 96))  # qkv and proj of one block per stage
    assert lora.parameter_summary()["backbone_trainable_params"] == factors
    assert lora.parameter_summary()["trainable_params"] == decoder + factors


def test_segmentation_adapter_round_trip_and_sliding_windows(tmp_path):
    """A LoRA segmentation adapter reloads to identical logits; whole images of any size are segmented
    in windows of img_size (the training forward takes only multiples of 32)."""
    module = PeftModule(tiny(TINY_2D), build_method("lora", r=2), task_type="segmentation", num_outputs=3,
                        task_options={"overlap": 0.25})
    check_adapter_round_trip_and_windows(module, tmp_path, (1, 1, 64, 64))


def _bundle(tmp_path, wrap: str | None, shape: dict = TINY_3D, out: int = 3):
    net = monai_net(shape, out=out, seed=123)
    return net, write_bundle(net, tmp_path, wrap)


@pytest.mark.parametrize("wrap", [None, "model", "ddp"])
def test_loads_a_monai_bundle_model_pt(tmp_path, wrap):
    """A bundle's models/model.pt (as MONAI's bundles save it; also under 'model' or with DDP's 'module.'
    prefix): encoder and decoder weights both come from it, and out_channels is read from it."""
    net, path = _bundle(tmp_path, wrap, out=4)
    backbone = tiny(checkpoint_path=str(path)).eval()
    assert backbone.out_channels == 4 and backbone.config()["source"] == "checkpoint"
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(backbone.segmentation_head(4).eval()(backbone({"images": x})), net(x))
        assert backbone.segmentation_head(2).eval()(backbone({"images": x})).shape == (1, 2, 32, 32, 32)


def test_a_bundle_of_another_shape_is_refused_naming_the_file(tmp_path):
    _, path = _bundle(tmp_path, None)
    with pytest.raises(CheckpointFileError, match=f"{path}: does not fit this SwinUNETR.*feature_size.*shapes"):
        tiny(feature_size=24, checkpoint_path=str(path))
    with pytest.raises(FileNotFoundError, match="SwinUNETR checkpoint .*missing.pt does not exist"):
        tiny(checkpoint_path=str(tmp_path / "missing.pt"))


def test_sizes_that_cannot_run_are_refused_saying_why():
    with pytest.raises(ValueError, match="multiple of 32"):
        tiny(img_size=[48, 48, 48])
    with pytest.raises(ValueError, match="one voxel at the deepest stage.*norm_name: batch"):
        tiny(norm_name="instance")
    with pytest.raises(ValueError, match="feature_size must be a multiple of 12"):
        tiny(feature_size=16)
    with pytest.raises(ValueError, match=r"\(3D\) needs inputs of 3 spatial sizes.*got \[32, 40, 32\]"):
        tiny()({"images": torch.randn(1, 1, 32, 40, 32)})


def test_gradient_checkpointing_changes_no_value_or_gradient(monkeypatch):
    """With gradient_checkpointing, MONAI's blocks run under torch's checkpoint while training (two calls
    per block: attention and MLP) and not in evaluation; the gradients are the same."""
    import monai.networks.nets.swin_unetr as swin

    calls = []
    original = swin.checkpoint.checkpoint
    monkeypatch.setattr(swin.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k))
    x = {"images": torch.randn(2, 1, 64, 64)}
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same LoRA factors both times
        module = PeftModule(tiny(TINY_2D, gradient_checkpointing=checkpointing), build_method("lora", r=2),
                            task_type="segmentation", num_outputs=2).train()
        module(x).square().mean().backward()
        grads.append([p.grad for p in module.parameters() if p.requires_grad])
        assert len(calls) == (2 * 4 if checkpointing else 0)
    with torch.no_grad():
        module.eval()(x)
    assert len(calls) == 2 * 4
    assert len(grads[0]) == len(grads[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
