"""Training through Lightning and the real CLI: every YAML in configs/ runs
(with a tiny backbone where it names published weights), checkpoints hold only
trained state, resuming continues the same run, predictions land in a CSV.

The ``test_smoke_*`` tests are smoke tests: each runs one ``fast_dev_run``
batch of ``peftlab fit`` with a config and passes when nothing raises (a QLoRA
config must refuse clearly without CUDA). They show that every config parses,
builds and takes a step, not that it learns: learning is tested on real data in
tests/*/test_*_training.py, the methods' behaviour in tests/test_methods.py."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from peftlab import BackboneMismatchError, PeftModule, build_method
from peftlab.cli import main
from peftlab_protein import ESM2Backbone
from peftlab_protein.synthetic import SyntheticMotifDataModule

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TINY_BACKBONE = ["--model.backbone.init_args.pretrained=false", "--model.backbone.init_args.num_layers=2",
                 "--model.backbone.init_args.embed_dim=32", "--model.backbone.init_args.attention_heads=4"]
SMALL_DATA = ["--data.init_args.num_sequences=40", "--data.init_args.batch_size=8"]
FAST = ["--trainer.fast_dev_run=1", "--trainer.accelerator=cpu"]


def cfg(*names: str) -> list[str]:
    return [a for n in names for a in ("--config", str(CONFIGS / n))]


def write_flip_csv(path: Path, n: int = 30) -> Path:
    g = torch.Generator().manual_seed(0)
    letters = "ACDEFGHIKLMNPQRSTVWY"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sequence", "target", "set", "validation"])
        for i in range(n):
            seq = "".join(letters[j] for j in torch.randint(0, 20, (12,), generator=g).tolist())
            w.writerow([seq, f"{i / n:.3f}", "test" if i % 5 == 0 else "train", "True" if i % 5 == 1 else "False"])
    return path


def method_configs() -> list[str]:
    return sorted(p.name for p in (CONFIGS / "methods").glob("*.yaml"))


def fit_method_config(method_yaml: str, args: list[str]) -> None:
    """``peftlab fit`` with a method config; a QLoRA config, on a machine without CUDA
    and bitsandbytes, must stop before training with the message that says so."""
    if "quantize:" in (CONFIGS / "methods" / method_yaml).read_text():
        from peftlab.quantize import QuantizationUnavailableError, require_bitsandbytes

        try:
            require_bitsandbytes()
        except QuantizationUnavailableError:
            with pytest.raises(QuantizationUnavailableError, match="needs bitsandbytes and a CUDA GPU"):
                main(args)
            return
    main(args)


def model_configs(field: str) -> list[str]:
    """A field's backbone configs and its paper setups (which name a backbone and a method)."""
    return sorted(str(p.relative_to(CONFIGS / field)) for kind in ("backbones", "setups")
                  for p in (CONFIGS / field / kind).glob("*.yaml"))


def backbone_configs() -> list[str]:
    return model_configs("protein")


@pytest.mark.parametrize("method_yaml", method_configs())
def test_smoke_cli_fast_dev_run_every_method_config(method_yaml, tmp_path):
    fit_method_config(method_yaml, ["fit", *cfg("protein/backbones/esm2_tiny.yaml", f"methods/{method_yaml}", "protein/data/synthetic_motif.yaml"),
                                    *TINY_BACKBONE, *SMALL_DATA, *FAST, f"--trainer.default_root_dir={tmp_path}"])


@pytest.mark.parametrize("backbone_yaml", backbone_configs())
def test_smoke_cli_fast_dev_run_every_backbone_and_paper_config(backbone_yaml, tmp_path):
    # configs that name published weights run here with a tiny random-init model of the same family
    # (8 thin blocks where a paper setup adapts "the last 8")
    text = (CONFIGS / "protein" / backbone_yaml).read_text()
    extra = [] if "method:" in text else cfg("methods/lora.yaml")
    size = ["--model.backbone.init_args.num_layers=8", "--model.backbone.init_args.embed_dim=16",
            "--model.backbone.init_args.attention_heads=2"] if "last:8" in text else []
    main(["fit", *cfg(f"protein/{backbone_yaml}"), *extra, *cfg("protein/data/synthetic_motif.yaml"),
          *TINY_BACKBONE, *size, *SMALL_DATA, *FAST, f"--trainer.default_root_dir={tmp_path}"])


def test_smoke_cli_fast_dev_run_the_flip_config_on_a_csv_given_on_the_command_line(tmp_path):
    data = write_flip_csv(tmp_path / "tiny_flip.csv")
    main(["fit", *cfg("protein/backbones/esm2_tiny.yaml", "methods/lora.yaml", "protein/data/flip_gb1.yaml", "trainer/gpu.yaml"),
          *TINY_BACKBONE, f"--data.init_args.path={data}", "--data.init_args.batch_size=4", *FAST,
          "--trainer.precision=32-true", f"--trainer.default_root_dir={tmp_path}"])


# ---- medical imaging configs ------------------------------------------------------------
TINY_VIT = ["--model.backbone.init_args.pretrained=false", "--model.backbone.init_args.depth=2",
            "--model.backbone.init_args.img_size=28", "--model.backbone.init_args.patch_size=4"]
SMALL_IMAGES = ["--data.init_args.num_images=40", "--data.init_args.batch_size=8"]


def imaging_backbone_configs() -> list[str]:
    """The classification backbones and setups (segmentation: :func:`segmentation_backbone_configs`,
    :func:`image_segmentation_configs`)."""
    segmentation = set(segmentation_backbone_configs()) | set(image_segmentation_configs())
    return [c for c in model_configs("medical") if c not in segmentation]


def segmentation_backbone_configs() -> list[str]:
    """MONAI's 3D-capable networks (UNETR, SwinUNETR), run on an MSD task folder."""
    return [c for c in model_configs("medical") if "unetr" in c]


def image_segmentation_configs() -> list[str]:
    """2D segmentation with timm encoders and their decoders (``*_seg.yaml``, SAM), run on image + mask pairs."""
    return [c for c in model_configs("medical") if c.endswith("_seg.yaml") or "sam" in Path(c).name]


@pytest.mark.parametrize("method_yaml", method_configs())
def test_smoke_cli_fast_dev_run_every_method_config_on_a_vit(method_yaml, tmp_path):
    fit_method_config(method_yaml, ["fit", *cfg("medical/backbones/vit_tiny.yaml", f"methods/{method_yaml}", "medical/data/synthetic_lesion.yaml"),
                                    *TINY_VIT, *SMALL_IMAGES, *FAST, f"--trainer.default_root_dir={tmp_path}"])


@pytest.mark.parametrize("backbone_yaml", imaging_backbone_configs())
def test_smoke_cli_fast_dev_run_every_imaging_backbone_config(backbone_yaml, tmp_path):
    # configs that name published weights run here with random init (and fewer blocks for ViTs) at 28 px
    text = (CONFIGS / "medical" / backbone_yaml).read_text()
    extra = [] if "method:" in text else cfg("methods/lora.yaml")
    shrink = ["--model.backbone.init_args.pretrained=false"]
    if "vit_" in text or "deit_" in text:
        shrink += ["--model.backbone.init_args.depth=2", "--model.backbone.init_args.img_size=28",
                   "--model.backbone.init_args.patch_size=4"]
    elif "swin_" in text:
        shrink += ["--model.backbone.init_args.img_size=32", "--data.init_args.image_size=32",
                   "--model.backbone.init_args.in_chans=1"]
    main(["fit", *cfg(f"medical/{backbone_yaml}"), *extra, *cfg("medical/data/synthetic_lesion.yaml"), *shrink,
          *SMALL_IMAGES, *FAST, f"--trainer.default_root_dir={tmp_path}"])


@pytest.mark.parametrize("backbone_yaml", segmentation_backbone_configs())
def test_smoke_cli_fast_dev_run_every_segmentation_backbone_config_on_an_msd_folder(backbone_yaml, tmp_path):
    # a tiny MSD task folder (NIfTI written with nibabel); configs that name a bundle file run with random
    # init at the tiny config's sizes
    from tests.medical.test_msd_data import task_folder

    root = task_folder(tmp_path, n=5)
    if "SwinUNETR" in (CONFIGS / "medical" / backbone_yaml).read_text():
        size = "[32,32,32]"  # SwinUNETR takes multiples of 32
        shrink = ["--model.backbone.init_args.feature_size=12", "--model.backbone.init_args.depths=[1,1,1,1]",
                  "--model.backbone.init_args.window_size=4", "--model.backbone.init_args.norm_name=batch"]
    else:
        size = "[16,16,16]"
        shrink = ["--model.backbone.init_args.feature_size=4", "--model.backbone.init_args.hidden_size=48",
                  "--model.backbone.init_args.mlp_dim=96", "--model.backbone.init_args.num_heads=4"]
    shrink += ["--model.backbone.init_args.checkpoint_path=null", f"--model.backbone.init_args.img_size={size}"]
    main(["fit", *cfg(f"medical/{backbone_yaml}", "methods/lora.yaml", "medical/data/msd_hippocampus.yaml"), *shrink,
          f"--data.root={root}", f"--data.crop_size={size}", "--data.val_fraction=0.2", "--data.test_fraction=0.2",
          "--data.cache=false", *FAST, f"--trainer.default_root_dir={tmp_path}"])


@pytest.mark.parametrize("backbone_yaml", image_segmentation_configs())
def test_smoke_cli_fast_dev_run_every_image_segmentation_config_on_image_mask_pairs(backbone_yaml, tmp_path):
    # configs that name published weights run with a tiny random-init encoder of the same family at 32 px
    from tests.medical.test_image_mask_data import npz_slices, pairs_folder

    text = (CONFIGS / "medical" / backbone_yaml).read_text()
    extra = [] if "method:" in text else cfg("methods/lora.yaml")
    shrink = ["--model.backbone.init_args.pretrained=false", "--model.backbone.init_args.checkpoint_path=null",
              "--model.backbone.init_args.depth=2", "--model.backbone.init_args.img_size=32",
              "--model.backbone.init_args.in_chans=1", "--data.crop_size=[32,32]"]
    if "samvit" in text:
        shrink += ["--model.backbone.init_args.input_size=null", "--model.backbone.init_args.embed_dim=32",
                   "--model.backbone.init_args.num_heads=2", "--model.backbone.init_args.window_size=2"]
    # SAMed's setup reads Synapse as TransUNet's .npz slices, split by scan (data_cards/synapse.md)
    data = ([f"--data.path={npz_slices(tmp_path, n=12, cases=4)}", r"--data.split_by=(case\d+)_slice\d+"]
            if "samed" in backbone_yaml else [f"--data.path={pairs_folder(tmp_path, n=6)}"])
    main(["fit", *cfg(f"medical/{backbone_yaml}"), *extra, *cfg("medical/data/image_masks.yaml"),
          *data, *shrink, "--data.val_fraction=0.2",
          "--data.test_fraction=0.2", "--data.cache=false", *FAST, f"--trainer.default_root_dir={tmp_path}"])


def test_smoke_cli_fast_dev_run_the_image_masks_config_with_a_2d_swin_unetr(tmp_path):
    from tests.medical.test_image_mask_data import pairs_folder

    main(["fit", *cfg("medical/backbones/swin_unetr_tiny.yaml", "methods/lora.yaml", "medical/data/image_masks.yaml"),
          f"--data.path={pairs_folder(tmp_path, n=6)}", "--model.backbone.init_args.img_size=[64,64]",
          "--model.backbone.init_args.norm_name=instance", "--data.val_fraction=0.2", "--data.test_fraction=0.2",
          *FAST, f"--trainer.default_root_dir={tmp_path}"])


def test_smoke_cli_fast_dev_run_the_dicom_series_config_with_a_tiny_unetr(tmp_path):
    from tests.medical.test_dicom_series_data import manifest

    main(["fit", *cfg("medical/backbones/unetr_tiny.yaml", "methods/lora.yaml", "medical/data/dicom_series.yaml"),
          f"--data.manifest={manifest(tmp_path, n=5)}", "--model.backbone.init_args.img_size=[16,16,16]",
          "--data.crop_size=[16,16,16]", "--data.val_fraction=0.2", "--data.test_fraction=0.2",
          *FAST, f"--trainer.default_root_dir={tmp_path}"])


def test_smoke_cli_fast_dev_run_the_medmnist_config_on_an_npz_given_on_the_command_line(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 16), ("val", 8), ("test", 8)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1).astype(np.uint8)
    np.savez(tmp_path / "tiny.npz", **arrays)
    main(["fit", *cfg("medical/backbones/vit_tiny.yaml", "methods/lora.yaml", "medical/data/medmnist.yaml"), *TINY_VIT,
          "--data.path", str(tmp_path / "tiny.npz"), "--data.init_args.batch_size=8", *FAST,
          f"--trainer.default_root_dir={tmp_path}"])


# ---- speech configs -------------------------------------------------------------------------
TINY_ENCODER = ["--model.backbone.init_args.pretrained=false", "--model.backbone.init_args.num_layers=2",
                "--model.backbone.init_args.embed_dim=64", "--model.backbone.init_args.num_heads=4",
                "--model.backbone.init_args.ff_dim=128", "--model.backbone.init_args.conv_channels=32"]
SMALL_CLIPS = ["--data.init_args.num_clips=40", "--data.init_args.batch_size=8"]
SPEECH_DATA = tuple(sorted(p.name for p in (CONFIGS / "speech" / "data").glob("*.yaml")))


def speech_backbone_configs() -> list[str]:
    return model_configs("speech")


@pytest.mark.parametrize("method_yaml", method_configs())
def test_smoke_cli_fast_dev_run_every_method_config_on_a_speech_encoder(method_yaml, tmp_path):
    fit_method_config(method_yaml, ["fit", *cfg("speech/backbones/hubert_tiny.yaml", f"methods/{method_yaml}", "speech/data/synthetic_tones.yaml"),
                                    *SMALL_CLIPS, *FAST, f"--trainer.default_root_dir={tmp_path}"])


@pytest.mark.parametrize("backbone_yaml", speech_backbone_configs())
def test_smoke_cli_fast_dev_run_every_speech_backbone_config(backbone_yaml, tmp_path):
    text = (CONFIGS / "speech" / backbone_yaml).read_text()
    extra = [] if "method:" in text else cfg("methods/lora.yaml")
    tiny = TINY_ENCODER
    if "HFSpeechEncoder" in text:  # transformers' names for the same sizes, random init from the family defaults
        tiny = ["--model.backbone.init_args.pretrained=false", "--model.backbone.init_args.num_layers=2",
                "--model.backbone.init_args.hidden_size=64", "--model.backbone.init_args.num_heads=4",
                "--model.backbone.init_args.intermediate_size=128", "--model.backbone.init_args.conv_dim=32"]
    main(["fit", *cfg(f"speech/{backbone_yaml}"), *extra, *cfg("speech/data/synthetic_tones.yaml"), *tiny,
          *SMALL_CLIPS, *FAST, f"--trainer.default_root_dir={tmp_path}"])


@pytest.mark.parametrize("data_yaml", ["fsdd.yaml", "speech_commands.yaml", "emotion_csv.yaml"])
def test_smoke_cli_fast_dev_run_every_speech_data_config_on_files_given_on_the_command_line(data_yaml, tmp_path):
    import soundfile as sf
    rate, tone = 16000, np.sin(np.linspace(0, 800 * np.pi, 8000)).astype("float32")
    if data_yaml == "fsdd.yaml":
        root = tmp_path / "fsdd" / "recordings"
        root.mkdir(parents=True)
        for digit in range(2):
            for take in (0, 1, 5, 6, 7, 8):
                sf.write(root / f"{digit}_alice_{take}.wav", tone * (digit + 1) / 2, 8000)
        path = tmp_path / "fsdd"
    elif data_yaml == "speech_commands.yaml":
        path = tmp_path / "sc"
        for word in ("yes", "no", "cat"):
            (path / word).mkdir(parents=True)
            for i in range(4):
                sf.write(path / word / f"spk{i}_nohash_0.wav", tone, rate)
        (path / "_background_noise_").mkdir()
        sf.write(path / "_background_noise_" / "white.wav", np.random.default_rng(0).normal(size=12 * rate) * 0.1, rate)  # 10 % of it >= 1 s
        (path / "validation_list.txt").write_text("yes/spk0_nohash_0.wav\nno/spk0_nohash_0.wav\n")
        (path / "testing_list.txt").write_text("yes/spk1_nohash_0.wav\nno/spk1_nohash_0.wav\n")
    else:
        rows = ["path,label"]
        for i in range(12):
            sf.write(tmp_path / f"clip{i}.wav", tone, rate)
            rows.append(f"clip{i}.wav,{'happy' if i % 2 else 'sad'}")
        path = tmp_path / "emotion.csv"
        path.write_text("\n".join(rows) + "\n")
    main(["fit", *cfg("speech/backbones/hubert_tiny.yaml", "methods/lora.yaml", f"speech/data/{data_yaml}"),
          "--data.path", str(path), "--data.init_args.batch_size=4", *FAST, f"--trainer.default_root_dir={tmp_path}"])


def test_every_yaml_is_covered_by_a_cli_test():
    covered = {f"methods/{m}" for m in method_configs()} | {f"protein/{b}" for b in backbone_configs()}
    covered |= {"protein/backbones/esm2_tiny.yaml", "protein/data/synthetic_motif.yaml", "protein/data/flip_gb1.yaml", "trainer/gpu.yaml"}
    covered |= {"protein/data/ppi_dscript.yaml", "protein/data/synthetic_motif_pairs.yaml"}  # tests/protein/test_pairs.py
    covered |= {"protein/data/chezod.yaml"}  # the README's CheZOD commands (tests/test_readme.py)
    covered |= {"trainer/ddp.yaml", "trainer/fsdp.yaml", "trainer/deepspeed.yaml"}  # parsed (and DDP run) in tests/test_scaling.py
    covered |= {f"medical/{b}" for b in imaging_backbone_configs()} | {"medical/data/medmnist.yaml",
                                                                        "medical/data/synthetic_lesion.yaml"}
    covered |= {f"medical/{b}" for b in segmentation_backbone_configs()} | {"medical/data/msd_hippocampus.yaml",
                                                                              "medical/data/image_masks.yaml",
                                                                              "medical/data/dicom_series.yaml"}
    covered |= {f"medical/{b}" for b in image_segmentation_configs()}  # run on image + mask pairs above
    covered |= {f"speech/{b}" for b in speech_backbone_configs()} | {f"speech/data/{d}" for d in SPEECH_DATA}
    covered |= {f"paper/{p.name}" for p in (CONFIGS / "paper").glob("*.yaml")}  # dry-run and parse-checked in tests/test_sweep.py
    found = {str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml")}
    assert found <= covered, f"configs without a CLI test: {sorted(found - covered)}"


# ---- checkpoints, resume, predict ---------------------------------------------------------

def tiny_module(seed: int = 0, method: str = "lora") -> PeftModule:
    backbone = ESM2Backbone(num_layers=2, embed_dim=32, attention_heads=4, seed=seed)
    return PeftModule(backbone, build_method(method, r=2) if method == "lora" else build_method(method),
                      task_type="binary", num_outputs=1, lr=1e-2)


def tiny_data() -> SyntheticMotifDataModule:
    return SyntheticMotifDataModule(num_sequences=48, batch_size=8, seed=0)


def trainer(tmp_path: Path, epochs: int, **kw) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="cpu", default_root_dir=tmp_path, logger=False,
                     enable_progress_bar=False, enable_model_summary=False, deterministic=True, **kw)


def test_checkpoint_holds_only_trained_state_and_run_metadata(tmp_path):
    L.seed_everything(0)
    module = tiny_module()
    t = trainer(tmp_path, 1)
    t.fit(module, datamodule=tiny_data())
    ckpt = torch.load(next((tmp_path / "checkpoints").glob("*.ckpt")), weights_only=True)
    assert set(ckpt["state_dict"]) == set(module.trainable_state_dict())
    assert all("lora_" in k or k.startswith("head.") for k in ckpt["state_dict"])
    meta = ckpt["peftlab"]
    assert meta["method"]["name"] == "lora" and meta["backbone_identity"] == module.backbone_identity
    assert meta["backbone"]["class_path"] == "peftlab_protein.ESM2Backbone"  # the public path, stable across moves


def test_resume_continues_the_same_run(tmp_path):
    L.seed_everything(0)
    straight = tiny_module()
    trainer(tmp_path / "a", 2).fit(straight, datamodule=tiny_data())

    class StopAfterFirstEpoch(L.Callback):  # an interruption: the run was planned for two epochs
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = True

    L.seed_everything(0)
    first = tiny_module()
    trainer(tmp_path / "b", 2, callbacks=[StopAfterFirstEpoch()]).fit(first, datamodule=tiny_data())
    ckpt = next((tmp_path / "b" / "checkpoints").glob("*.ckpt"))
    L.seed_everything(0)
    resumed = tiny_module()
    t = trainer(tmp_path / "b", 2)
    t.fit(resumed, datamodule=tiny_data(), ckpt_path=ckpt)
    assert t.global_step == 2 * 5  # 38 training sequences / 8 per batch, two epochs
    for name, value in straight.trainable_state_dict().items():
        torch.testing.assert_close(resumed.trainable_state_dict()[name], value, msg=f"{name} differs after resume")


def test_checkpoint_refuses_another_backbone(tmp_path):
    trainer(tmp_path, 1).fit(tiny_module(), datamodule=tiny_data())
    ckpt = next((tmp_path / "checkpoints").glob("*.ckpt"))
    with pytest.raises(BackboneMismatchError, match="trained on a different backbone.*fingerprint"):
        trainer(tmp_path, 1).test(tiny_module(seed=1), datamodule=tiny_data(), ckpt_path=ckpt)


def test_predict_writes_a_csv_row_per_test_sequence(tmp_path):
    args = [*cfg("protein/backbones/esm2_tiny.yaml", "methods/lora.yaml", "protein/data/synthetic_motif.yaml"), *TINY_BACKBONE,
            *SMALL_DATA, "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path}"]
    main(["fit", *args, "--trainer.max_epochs=1"])
    ckpt = next(tmp_path.rglob("*.ckpt"))
    out = tmp_path / "predictions.csv"
    main(["predict", *args, f"--ckpt_path={ckpt}", f"--predictions.output={out}"])
    rows = list(csv.DictReader(open(out)))
    data = SyntheticMotifDataModule(num_sequences=40, batch_size=8)
    assert sorted(r["id"] for r in rows) == sorted(r.id for r in data.splits["test"])
    assert all(0.0 <= float(r["probability"]) <= 1.0 for r in rows)
    # fit also exported the adapter
    assert (next(tmp_path.rglob("adapter")) / "adapter.safetensors").is_file()
