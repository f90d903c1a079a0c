"""2D segmentation with timm encoders (TimmBackbone.segmentation_head): a tiny random-init ViT with
SETR's progressive upsampling decoder, and a tiny SAM image encoder with a light mask decoder, give
per-pixel logits, the decoder trains as the head (exact
counts), a LoRA adapter reloads to identical logits, larger images run in sliding windows, and the
model learns bright squares above the all-background baseline."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from peftlab import PeftModule, build_method
from peftlab_medical import TimmBackbone

from tests.medical.segmentation_checks import check_adapter_round_trip_and_windows, fit_and_validate_dice
from tests.medical.test_image_mask_data import data, pairs_folder

# vit_tiny: 192 wide, 3 heads; 8 px patches over 32 px images: a 4 x 4 grid, 3 upsampling stages
TINY_VIT = dict(name="vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, in_chans=1, decoder_channels=16)


# SAM's architecture shrunk: 32 wide, 2 heads, 2 windowed blocks (2 x 2 windows), 8 px patches, neck 256
TINY_SAM = dict(name="samvit_base_patch16", img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2,
                window_size=2, in_chans=1)


def tiny_vit(**kw) -> TimmBackbone:
    return TimmBackbone(**{**TINY_VIT, **kw})


def tiny_sam(**kw) -> TimmBackbone:
    return TimmBackbone(**{**TINY_SAM, **kw})


def test_a_vit_segments_at_its_input_size():
    backbone = tiny_vit()
    assert backbone.input_size == (32, 32)
    head = backbone.segmentation_head(3)
    with torch.no_grad():
        logits = head(backbone({"images": torch.randn(2, 1, 32, 32)}))
    assert logits.shape == (2, 3, 32, 32)


def test_the_class_token_is_not_decoded():
    """The decoder reads the 16 patch tokens only: changing the class token's final state changes nothing,
    changing one patch token changes the logits."""
    backbone, head = tiny_vit(), tiny_vit().segmentation_head(2).eval()
    with torch.no_grad():
        f = backbone({"images": torch.randn(1, 1, 32, 32)})
        before = head(f)
        f.hidden[:, 0] += 5.0
        assert torch.equal(head(f), before)
        f.hidden[:, 1] += 5.0  # the top-left patch
        assert not torch.equal(head(f), before)


def test_decoder_trains_as_the_head_with_exact_counts():
    # LayerNorm(192) + conv 192->16 3x3 + BN(16) + 2 x (conv 16->16 3x3 + BN(16)) + 1x1 conv 16->3 with bias
    decoder = 2 * 192 + (192 * 16 * 9 + 32) + 2 * (16 * 16 * 9 + 32) + (16 * 3 + 3)
    probe = PeftModule(tiny_vit(), build_method("linear_probe"), task_type="segmentation", num_outputs=3)
    assert probe.parameter_summary()["trainable_params"] == decoder
    assert probe.parameter_summary()["backbone_trainable_params"] == 0
    lora = PeftModule(tiny_vit(), build_method("lora", r=4), task_type="segmentation", num_outputs=3)
    factors = 2 * 4 * ((192 + 3 * 192) + (192 + 192))  # qkv and proj of each of 2 blocks
    assert lora.parameter_summary()["backbone_trainable_params"] == factors
    assert lora.parameter_summary()["trainable_params"] == decoder + factors


def test_sam_decoder_trains_as_the_head_with_exact_counts_and_lora_reaches_the_fused_qkv():
    # ConvT 256->64 2x2 + LayerNorm2d(64) + ConvT 64->32 2x2 + 1x1 conv 32->3, all with biases
    decoder = (256 * 64 * 4 + 64) + 2 * 64 + (64 * 32 * 4 + 32) + (32 * 3 + 3)
    probe = PeftModule(tiny_sam(), build_method("linear_probe"), task_type="segmentation", num_outputs=3)
    assert probe.parameter_summary()["trainable_params"] == decoder
    lora = PeftModule(tiny_sam(), build_method("lora", r=4, targets="qkv"), task_type="segmentation", num_outputs=3)
    assert lora.parameter_summary()["backbone_trainable_params"] == 2 * 4 * (32 + 3 * 32)
    assert lora.parameter_summary()["trainable_params"] == decoder + 2 * 4 * (32 + 3 * 32)
    with pytest.raises(ValueError, match="no target preset 'qv': timm fuses q, k and v into one Linear"):
        PeftModule(tiny_sam(), build_method("lora", targets="qv"), task_type="segmentation", num_outputs=3)


def test_sam_takes_another_input_size_than_its_weights_were_built_for():
    """SAMed's 512 px inputs on SAM's 1024 px weights, shrunk: built at 64, run at 32 (timm resamples the
    position embedding and relative positions); crops and windows then have input_size."""
    backbone = tiny_sam(img_size=64, input_size=32)
    assert backbone.input_size == (32, 32)
    with torch.no_grad():
        assert backbone.segmentation_head(3)(backbone({"images": torch.randn(2, 1, 32, 32)})).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="input_size applies to SAM encoders only"):
        tiny_vit(input_size=64)
    with pytest.raises(ValueError, match="must be a multiple of the patch size 8"):
        tiny_sam(input_size=36)


@pytest.mark.parametrize("build", [tiny_vit, tiny_sam])
def test_segmentation_adapter_round_trip_and_sliding_windows(tmp_path, build):
    module = PeftModule(build(), build_method("lora", r=2), task_type="segmentation", num_outputs=3)
    check_adapter_round_trip_and_windows(module, tmp_path, (2, 1, 32, 32))


def test_families_without_a_timm_decoder_are_refused():
    with pytest.raises(ValueError, match="timm segmentation decoders exist for ViT / DeiT.*not cnn"):
        PeftModule(TimmBackbone(name="resnet18", in_chans=1), build_method("linear_probe"), task_type="segmentation",
                   num_outputs=2)


@pytest.mark.parametrize("build, method, lr, epochs", [(tiny_vit, "full", 3e-3, 3), (tiny_sam, "lora", 3e-3, 12)])
def test_a_tiny_encoder_learns_bright_squares_above_the_all_background_baseline(tmp_path, build, method, lr, epochs):
    """Baselines (the squares of test_image_mask_data): all-background scores foreground Dice 0,
    all-foreground about 0.15. Setup: 30 images of 48 x 48, 32 x 32 crops (half centred on a square),
    batches of 8 (3 per epoch); validation Dice on 6 held-out whole images in sliding windows.
    * The tiny ViT (8 px patches) with SETR-PUP, full fine-tuning, lr 3e-3, 3 epochs: 0.68 (with the decoder
      blind to the tokens, multiplied by 0: 0.14, the all-foreground level).
    * The tiny SAM (8 px patches, 256-channel neck) with its upscaling decoder, LoRA r 8 on qkv and proj,
      lr 3e-3, 12 epochs: 0.85 (lr 1e-2: 0.88). It needs more steps than the ViT: its decoder has no batch
      norm, and it predicts all background (Dice 0) for the first epochs; full fine-tuning at lr 3e-3
      collapses to all background (the 256 x 256 x 3 x 3 neck conv), at 1e-3 it reaches 0.68 in 8 epochs.
    The test asks for 0.3."""
    module = data(pairs_folder(tmp_path, n=24 + 6), crop_size=[32, 32], val_fraction=0.2, test_fraction=0.0,
                  batch_size=8, pos_fraction=0.5, augment=False)
    L.seed_everything(0)
    model = PeftModule(build(), build_method(method), task_type="segmentation", num_outputs=2,
                       label_names=module.label_names, lr=lr, task_options={"hd95": False, "nsd": False})
    dice = fit_and_validate_dice(model, module, tmp_path, epochs=epochs)
    assert dice > 0.3, dice  # all-background: 0


def test_the_samed_setup_composes_with_the_papers_recipe(tmp_path, capsys):
    """SAMed's setup needs SAM's weights and Synapse: checked at the --print_config level (nothing is built);
    the smoke tests in tests/test_training.py run it with a tiny random-init SAM."""
    import yaml

    from peftlab.cli import main
    from tests.test_training import cfg

    with pytest.raises(SystemExit) as exit_:
        main(["fit", *cfg("medical/setups/samed_synapse.yaml", "medical/data/image_masks.yaml"),
              f"--data.path={tmp_path}", "--data.crop_size=[512,512]", "--print_config"])
    assert exit_.value.code in (0, None)
    model = yaml.safe_load(capsys.readouterr().out)["model"]
    assert {"name": "samvit_base_patch16.sa1b", "pretrained": True, "input_size": 512}.items() \
        <= model["backbone"]["init_args"].items()
    assert model["method"]["init_args"]["r"] == 4 and model["method"]["init_args"]["targets"] == "qkv"
    assert model["task_options"]["lambda_dice"] == 0.8 and model["task_options"]["lambda_other"] == 0.2


def test_an_original_sam_checkpoint_file_loads_through_checkpoint_path(tmp_path):
    """SAM's own checkpoint format (sam_vit_b_01ec64.pth: the whole SAM, the image encoder under
    ``image_encoder.`` with ``mlp.lin1`` / ``lin2``, beside ``prompt_encoder.`` and ``mask_decoder.``),
    written here from a random tiny SAM, loads through ``checkpoint_path`` (timm's SAM filter keeps the
    encoder): the same features as the model it came from; with ``in_chans: 1`` timm sums the RGB
    patch filters (a gray slice = the slice repeated 3 times, as SAMed feeds CT)."""
    source = tiny_sam(in_chans=3, seed=7).eval()
    encoder = {k: v for k, v in source.model.state_dict().items() if not k.startswith("head.")}
    sam = {"image_encoder." + k.replace("mlp.fc", "mlp.lin"): v for k, v in encoder.items()}
    sam |= {"prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": torch.randn(2, 128),
            "mask_decoder.iou_token.weight": torch.randn(1, 256)}
    assert any(".mlp.lin1." in k for k in sam)
    torch.save(sam, tmp_path / "sam_vit_tiny.pth")
    loaded = tiny_sam(in_chans=3, seed=0, checkpoint_path=str(tmp_path / "sam_vit_tiny.pth")).eval()
    x = {"images": torch.randn(2, 3, 32, 32)}
    with torch.no_grad():
        assert torch.equal(loaded(x).hidden, source(x).hidden)
        gray = tiny_sam(seed=0, checkpoint_path=str(tmp_path / "sam_vit_tiny.pth")).eval()
        slice_ = torch.randn(2, 1, 32, 32)
        torch.testing.assert_close(gray({"images": slice_}).hidden, source({"images": slice_.repeat(1, 3, 1, 1)}).hidden,
                                   rtol=1e-5, atol=1e-5)
