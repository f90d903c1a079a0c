"""The segmentation task kind and MONAI's UNETR as a backbone: Dice / HD95 / NSD numbers on
hand-built masks, cases cut back to their own size, sliding-window inference, the
encoder / decoder split (bit-identical to MONAI's own UNETR), and loading a MONAI
bundle ``model.pt`` written here with a random-init network."""

from __future__ import annotations

import math

import pytest
import torch
from monai.networks.nets import UNETR

from peftlab import PeftModule, build_method
from peftlab.errors import CheckpointFileError
from peftlab.model.loading import load_adapter
from peftlab.model.segmentation import SegmentationScores, cases
from peftlab.model.task_kinds import task_kind
from peftlab.persistence.adapter import save_adapter
from peftlab_medical import MonaiUNETRBackbone

TINY = dict(img_size=[32, 32, 32], feature_size=4, hidden_size=48, mlp_dim=96, num_heads=4)


def tiny(**kw) -> MonaiUNETRBackbone:
    return MonaiUNETRBackbone(**{**TINY, **kw})


def cube(at: int, size: int = 12, side: int = 4, value: int = 1) -> torch.Tensor:
    m = torch.zeros(size, size, size, dtype=torch.long)
    m[at:at + side, 2:2 + side, 2:2 + side] = value
    return m


def test_dice_and_hd95_of_a_shifted_cube():
    """Target: a 4^3 cube of class 1; prediction: the same cube one voxel further along x.
    Overlap 3x4x4 = 48 of 64 voxels each: Dice 2*48/128 = 0.75; the surfaces lie at most one
    voxel apart, so HD95 = 1. Class 2 is in neither mask: NaN per class, left out of the means."""
    scores = SegmentationScores(num_classes=3)
    scores.update(cube(3)[None], cube(2)[None])
    out = scores.compute()
    assert out["dice"].item() == pytest.approx(0.75)
    assert out["dice_per_class"][1].item() == pytest.approx(0.75)
    assert math.isnan(out["dice_per_class"][2].item())
    assert out["hd95"].item() == pytest.approx(1.0)
    assert out["dice_per_class"][0].item() > 0.98  # background, 1728 - 80 voxels agreeing


def test_nsd_of_a_shifted_cube_within_and_beyond_the_tolerance():
    """The same cubes, one voxel apart. Surface voxels of a 4^3 cube: 64 - 2^3 = 56 each. Tolerance 1:
    every surface voxel lies within one voxel of the other surface, NSD 1. Tolerance 0.5: only voxels on
    both surfaces count: in the 3 shared x-slices, x=3 (the prediction's face: 16, of which the target's
    surface has the 12 on its y/z rim), x=4 (the rim, 12 in both), x=5 (the target's face, 12 of the
    prediction's): 36 of 56 each way, NSD (36 + 36) / (56 + 56) = 9/14."""
    within = SegmentationScores(num_classes=3, nsd_tolerance=1.0)
    within.update(cube(3)[None], cube(2)[None])
    assert within.compute()["nsd"].item() == pytest.approx(1.0)
    beyond = SegmentationScores(num_classes=3, nsd_tolerance=0.5)
    beyond.update(cube(3)[None], cube(2)[None])
    out = beyond.compute()
    assert out["nsd"].item() == pytest.approx(9 / 14) and out["nsd_per_class"][1].item() == pytest.approx(9 / 14)
    assert math.isnan(out["nsd_per_class"][2].item())  # in neither mask: left out of the mean
    off = SegmentationScores(num_classes=3, nsd_tolerance=None)
    off.update(cube(3)[None], cube(2)[None])
    assert math.isnan(off.compute()["nsd"].item()) and off.compute()["dice"].item() == pytest.approx(0.75)


def test_nsd_is_zero_for_a_structure_predicted_nowhere():
    scores = SegmentationScores(num_classes=2)
    scores.update([torch.zeros(12, 12, 12, dtype=torch.long)], [cube(2)])
    assert scores.compute()["nsd"].item() == 0.0


def test_nsd_options_reach_the_metric_and_are_checked():
    kind = task_kind("segmentation")
    assert kind.options["nsd"] is True and kind.options["nsd_tolerance"] == 1.0
    metric = kind.with_options({"nsd_tolerance": 0.5}).build_metrics(3)["dice"]
    metric.update(cube(3)[None], cube(2)[None])
    assert metric.compute()["nsd"].item() == pytest.approx(9 / 14)
    assert kind.with_options({"nsd": False}).build_metrics(3)["dice"].nsd_tolerance is None
    with pytest.raises(ValueError, match="nsd_tolerance must be a finite number of voxels >= 0, got -1"):
        kind.with_options({"nsd_tolerance": -1})


def test_all_background_scores_zero_dice_and_cases_average():
    """The chance level of the real-data test: predicting background everywhere gives foreground
    Dice 0 (HD95 undefined: no predicted surface, left out). Two cases average per class."""
    scores = SegmentationScores(num_classes=2)
    scores.update([torch.zeros(12, 12, 12, dtype=torch.long)], [cube(2)])
    assert scores.compute()["dice"].item() == 0.0 and math.isnan(scores.compute()["hd95"].item())
    scores.update([cube(2)], [cube(2)])
    assert scores.compute()["dice"].item() == pytest.approx(0.5)
    scores.reset()
    scores.update([cube(2)], [cube(2)])
    assert scores.compute()["dice"].item() == 1.0  # reset forgot the first two cases


def test_cases_are_cut_back_to_their_own_size():
    padded = torch.zeros(2, 1, 6, 7)
    padded[0, :, :4, :5] = 1
    out = cases(padded, torch.tensor([[4, 5], [6, 7]]))
    assert [tuple(c.shape) for c in out] == [(1, 4, 5), (1, 6, 7)] and out[0].min() == 1


def test_padding_does_not_count_in_scores_or_loss():
    """A padded case is scored on its own voxels: the padding (where this prediction is wrong) is cut off."""
    kind = task_kind("segmentation")
    labels = torch.zeros(1, 1, 8, 8, 8, dtype=torch.long)
    labels[0, 0, :4, :4, :4] = 1
    logits = torch.zeros(1, 2, 8, 8, 8)
    logits[0, 1, :4, :4, :4] = 10.0  # right inside the case
    logits[0, 1, 4:, :, :] = 10.0  # wrong, but in the padding
    batch = {"labels": labels, "shapes": torch.tensor([[4, 4, 4]])}
    loss, preds, target = kind.loss_and_predictions(logits, batch)
    metric = SegmentationScores(2)
    metric.update(preds, target)
    assert metric.compute()["dice"].item() == 1.0
    _, full_preds, full_target = kind.loss_and_predictions(logits, {"labels": labels})
    metric.reset()
    metric.update(full_preds, full_target)
    assert metric.compute()["dice"].item() < 0.5  # the same logits, scored with the padding


def test_task_options_are_checked():
    with pytest.raises(ValueError, match="no option.*roi; its options: roi_size"):
        task_kind("segmentation").with_options({"roi": [32, 32, 32]})
    with pytest.raises(ValueError, match="loss must be one of dice_ce"):
        task_kind("segmentation").with_options({"loss": "bce"})
    assert task_kind("segmentation").with_options({"overlap": 0.5}).options["overlap"] == 0.5
    assert task_kind("segmentation").options["overlap"] == 0.25  # the registered kind is unchanged


def test_segmentation_refuses_a_backbone_without_a_decoder():
    from types import SimpleNamespace

    with pytest.raises(ValueError, match="needs a backbone with a segmentation decoder.*which ESM-2 has not"):
        task_kind("segmentation").build_head(SimpleNamespace(name="ESM-2"), 3)


@pytest.mark.parametrize("img_size", [[32, 32, 32], [32, 48]])
def test_backbone_and_decoder_are_monais_unetr(img_size):
    """Encoder (backbone) + decoder (head) compute exactly MONAI's UNETR forward, 3D and 2D; the
    decoder's parameters are exactly what UNETR has beyond its ViT (no copy of a layer is lost)."""
    backbone = tiny(img_size=img_size, out_channels=3, seed=7).eval()
    head = backbone.segmentation_head(3).eval()
    with torch.random.fork_rng():
        torch.manual_seed(7)
        net = UNETR(in_channels=1, out_channels=3, img_size=img_size, feature_size=4, hidden_size=48, mlp_dim=96,
                    num_heads=4, spatial_dims=len(img_size)).eval()
    x = torch.randn(2, 1, *img_size)
    with torch.no_grad():
        assert torch.equal(head(backbone({"images": x})), net(x))
    vit = sum(p.numel() for p in net.vit.parameters()) - 12 * 2 * 48  # less the unused cross-attention norms
    assert sum(p.numel() for p in backbone.parameters()) == vit
    assert sum(p.numel() for p in head.parameters()) == sum(p.numel() for p in net.parameters()) - \
        sum(p.numel() for p in net.vit.parameters())


def test_decoder_trains_as_the_head():
    """linear_probe trains the decoder only (the head); lora adds only the encoder's low-rank factors."""
    probe = PeftModule(tiny(), build_method("linear_probe"), task_type="segmentation", num_outputs=3)
    decoder = sum(p.numel() for p in probe.head.parameters())
    assert probe.parameter_summary()["trainable_params"] == decoder
    assert probe.parameter_summary()["backbone_trainable_params"] == 0
    lora = PeftModule(tiny(), build_method("lora", r=4), task_type="segmentation", num_outputs=3)
    assert lora.parameter_summary()["backbone_trainable_params"] == 12 * 4 * ((48 + 144) + (48 + 48))
    assert lora.parameter_summary()["trainable_params"] == decoder + 12 * 4 * ((48 + 144) + (48 + 48))


def test_sliding_window_covers_whole_volumes():
    """Evaluation runs on whole volumes of any size (windows of the backbone's input size); a volume of
    exactly one window gives the plain forward's logits."""
    module = PeftModule(tiny(), build_method("lora", r=2), task_type="segmentation", num_outputs=3,
                        task_options={"overlap": 0.25, "sw_batch_size": 8}).eval()
    with torch.no_grad():
        big = module.task.infer(module, {"images": torch.randn(1, 1, 36, 40, 30)})
        assert big.shape == (1, 3, 36, 40, 30)
        one = {"images": torch.randn(2, 1, 32, 32, 32)}
        torch.testing.assert_close(module.task.infer(module, one), module(one), rtol=1e-5, atol=1e-5)
    module.train()
    with pytest.raises(ValueError, match="built for inputs of \\[32, 32, 32\\], got \\[36, 40, 30\\]"):
        module.task.infer(module, {"images": torch.randn(1, 1, 36, 40, 30)})  # training takes crops


def test_segmentation_adapter_round_trip_keeps_task_options(tmp_path):
    module = PeftModule(tiny(), build_method("lora", r=2), task_type="segmentation", num_outputs=3,
                        label_names=["background", "a", "b"], task_options={"overlap": 0.5, "hd95": False})
    with torch.no_grad():
        for p in module.head.parameters():
            p.add_(0.01)
    save_adapter(module, tmp_path / "adapter")
    back = load_adapter(tmp_path / "adapter")
    assert back.task.options["overlap"] == 0.5 and back.task.options["hd95"] is False
    x = {"images": torch.randn(1, 1, 32, 32, 32)}
    with torch.no_grad():
        assert torch.equal(back(x), module.eval()(x))


def write_bundle(net, tmp_path, wrap: str | None):
    """``net``'s state dict as a MONAI bundle's ``models/model.pt``: plain, under ``"model"`` or with
    DDP's ``module.`` prefix (``wrap``: None, ``model``, ``ddp``); its path."""
    state = net.state_dict()
    if wrap == "model":
        state = {"model": state}
    elif wrap == "ddp":
        state = {f"module.{k}": v for k, v in state.items()}
    path = tmp_path / "model.pt"
    torch.save(state, path)
    return path


def _bundle(tmp_path, wrap: str | None, **kw):
    with torch.random.fork_rng():
        torch.manual_seed(123)
        net = UNETR(in_channels=1, out_channels=kw.pop("out", 3), img_size=[32, 32, 32], feature_size=4,
                    hidden_size=48, mlp_dim=96, num_heads=4, **kw).eval()
    return net, write_bundle(net, tmp_path, wrap)


@pytest.mark.parametrize("wrap", [None, "model", "ddp"])
def test_loads_a_monai_bundle_model_pt(tmp_path, wrap):
    """A bundle's models/model.pt (a state dict, as MONAI's bundles save it; also under 'model' or
    with DDP's 'module.' prefix): encoder and decoder weights both come from it."""
    net, path = _bundle(tmp_path, wrap)
    backbone = tiny(checkpoint_path=str(path)).eval()
    assert backbone.out_channels == 3 and backbone.config()["source"] == "checkpoint"
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(backbone.segmentation_head(3).eval()(backbone({"images": x})), net(x))
        other = backbone.segmentation_head(5).eval()(backbone({"images": x}))  # another task: a new out layer
    assert other.shape == (1, 5, 32, 32, 32)


def test_a_bundle_of_another_architecture_is_refused_naming_the_file(tmp_path):
    _, path = _bundle(tmp_path, None, qkv_bias=True)
    with pytest.raises(CheckpointFileError, match=f"{path}: does not fit this UNETR.*unexpected.*qkv.bias"):
        tiny(checkpoint_path=str(path))
    path.write_bytes(path.read_bytes()[:2000])  # truncated
    with pytest.raises(CheckpointFileError, match="not a readable MONAI bundle weights file"):
        tiny(checkpoint_path=str(path))
