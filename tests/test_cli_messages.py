"""What a newcomer sees: errors in one paragraph with suggestions, a backbone /
data mismatch caught before training, missing pretrained weights explained the
same way for every backbone family, every command and class discoverable, and
no library noise."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest
import torch

from peftlab.catalog import known_classes
from peftlab.cli import COMMANDS, console_main, main
from peftlab.errors import ConfigError, WeightsUnavailableError
from peftlab.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TINY = ["--model.backbone.init_args.num_layers=2", "--model.backbone.init_args.embed_dim=32",
        "--model.backbone.init_args.attention_heads=4", "--data.init_args.num_sequences=40",
        "--data.init_args.batch_size=4", "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false"]
PROTEIN = ["--config", str(CONFIGS / "protein/backbones/esm2_tiny.yaml"), "--config", str(CONFIGS / "methods/lora.yaml"),
           "--config", str(CONFIGS / "protein/data/synthetic_motif.yaml"), *TINY]


# ---- errors: one paragraph, suggestions ---------------------------------------------------------

def test_a_mistyped_method_class_is_named_with_the_close_match(tmp_path):
    with pytest.raises(ConfigError, match=r"the command line: model\.method: no class 'peftlab\.methods\.LoRa'; "
                                          r"did you mean peftlab\.methods\.LoRA\? \('peftlab list methods'"):
        main(["fit", *PROTEIN, "--model.method=peftlab.methods.LoRa", f"--trainer.default_root_dir={tmp_path}"])
    config = tmp_path / "method.yaml"
    config.write_text("model:\n  method:\n    class_path: peftlab.methods.Dora\n    init_args: {r: 4}\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(config))}: model\.method: no class 'peftlab\.methods\."
                                          r"Dora'; did you mean peftlab\.methods\.DoRA\?"):
        main(["fit", *PROTEIN, "--config", str(config)])
    with pytest.raises(ConfigError, match=r"data: no class 'SyntheticMotifDataModul'; did you mean "
                                          r"peftlab_protein\.synthetic\.SyntheticMotifDataModule\?"):
        main(["fit", *PROTEIN, "--data=SyntheticMotifDataModul"])
    with pytest.raises(ConfigError, match=r"unknown command 'fti'; did you mean 'fit'\?"):
        main(["fti", *PROTEIN])


def test_the_console_script_prints_one_paragraph_and_the_traceback_only_on_request(tmp_path, capsys):
    args = ["fit", *PROTEIN, "--model.method=peftlab.methods.LoRa", f"--trainer.default_root_dir={tmp_path}"]
    assert console_main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("peftlab: error: the command line: model.method: no class 'peftlab.methods.LoRa'; did "
                          "you mean peftlab.methods.LoRA?")
    assert len(err.strip().splitlines()) == 2 and "Traceback" not in err and "usage:" not in err
    assert console_main([*args, "--traceback"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_a_bad_option_value_is_a_short_error_not_the_usage_text(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *PROTEIN, "--trainer.max_epochs=many"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" not in err and ": error: " in err and "max_epochs" in err and "--help lists the options" in err


def test_a_backbone_that_cannot_read_the_data_is_caught_before_training(tmp_path):
    args = ["fit", "--config", str(CONFIGS / "medical/backbones/vit_tiny.yaml"), "--config", str(CONFIGS / "methods/lora.yaml"),
            "--config", str(CONFIGS / "protein/data/synthetic_motif.yaml"), "--data.init_args.num_sequences=40",
            "--trainer.accelerator=cpu", f"--run_dir={tmp_path / 'run'}"]
    with pytest.raises(ConfigError) as error:
        main(args)
    message = str(error.value)
    assert "peftlab_medical.TimmBackbone (vit_tiny_patch16_224 (random init)) reads 'images'" in message
    assert "peftlab_protein.synthetic.SyntheticMotifDataModule gives 'tokens'" in message
    assert not (tmp_path / "run" / "checkpoints").exists()  # no step was taken


def test_predict_adapters_refuses_an_adapter_whose_backbone_cannot_read_the_data(tmp_path, capsys):
    from peftlab import PeftModule, build_method
    from peftlab.persistence.adapter import save_adapter
    from peftlab_medical import TimmBackbone

    backbone = TimmBackbone(name="vit_tiny_patch16_224", img_size=28, patch_size=4, depth=1, in_chans=1)
    save_adapter(PeftModule(backbone, build_method("lora", r=2), task_type="binary"), tmp_path / "scan")
    status = main(["predict-adapters", "--adapters", f"scan={tmp_path / 'scan'}", "--data-config",
                   str(CONFIGS / "protein/data/synthetic_motif.yaml"), "--data.init_args.num_sequences=20",
                   "--output-dir", str(tmp_path / "out"), "--accelerator", "cpu"])
    assert status == 2
    err = capsys.readouterr().err
    assert "reads 'images'" in err and "SyntheticMotifDataModule gives 'tokens'" in err
    assert not (tmp_path / "out").exists()


OFFLINE = r": not on this machine and could not be downloaded \(.+\)\. Offline: .*--model\.backbone\.init_args\.(checkpoint_path|name)"


def test_missing_pretrained_weights_are_explained_the_same_way_for_every_family(monkeypatch):
    """Offline (the hosts cannot be reached, forced here so that the test never
    touches a network), each family names what it looked for and the option that
    takes a local copy, at once instead of after a minute of retries."""
    import peftlab.hub
    from peftlab_medical import TimmBackbone
    from peftlab_protein import ESM2Backbone
    from peftlab_speech import HFSpeechEncoder, TorchaudioEncoder

    monkeypatch.setattr(peftlab.hub, "host_reachable", lambda url, timeout=3.0: False)

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-peftlab-test-cache")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", "/nonexistent-peftlab-test-cache")
    cases = [("timm weights 'vit_base_patch16_224.augreg2_in21k_ft_in1k'",
              lambda: TimmBackbone("vit_base_patch16_224.augreg2_in21k_ft_in1k", pretrained=True)),
             ("transformers model 'facebook/hubert-base-ls960'",
              lambda: HFSpeechEncoder("facebook/hubert-base-ls960", pretrained=True)),
             ("ESM-2 weights esm2_t12_35M_UR50D.pt", lambda: ESM2Backbone("esm2_t12_35M_UR50D", pretrained=True)),
             ("torchaudio HUBERT_BASE weights", lambda: TorchaudioEncoder("hubert_base", pretrained=True))]
    for what, build in cases:
        start = time.monotonic()
        with pytest.raises(WeightsUnavailableError, match=rf"^{re.escape(what)}.*{OFFLINE}"):
            build()
        assert time.monotonic() - start < 20, f"{what}: the offline failure took too long"


# ---- discoverability --------------------------------------------------------------------------------

def test_peftlab_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "sweep", "predict-adapters", "list"):
        assert re.search(rf"^  {re.escape(command)} +\S", out, re.M), command
    assert set(COMMANDS) == {"fit", "validate", "test", "predict", "sweep", "predict-adapters", "list"}


def test_peftlab_list_names_every_method_backbone_and_data_module_with_a_line_each(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name, cls in METHODS.items():
        assert re.search(rf"^  {name} +peftlab\.methods\.{cls.__name__} +\S", out, re.M), name
    backbones, data = known_classes("backbones"), known_classes("data")
    assert {"peftlab_protein.ESM2Backbone", "peftlab_medical.TimmBackbone", "peftlab_speech.TorchaudioEncoder",
            "peftlab_speech.HFSpeechEncoder"} <= set(backbones)
    assert {"peftlab_medical.data.MedMNISTDataModule", "peftlab_speech.data.FSDDDataModule",
            "peftlab_protein.data.ProteinDataModule"} <= set(data)
    for path in [*backbones, *data]:
        assert re.search(rf"^  {re.escape(path)} +\w", out, re.M), path
    with pytest.raises(ConfigError, match="unknown kind"):
        main(["list", "recipes"])


def test_data_help_with_a_short_class_name(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--data.help", "MedMNISTDataModule"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--data.path PATH" in out and "MedMNIST v2" in out


def test_fit_help_names_the_domain_backbones_and_data_modules(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = capsys.readouterr().out
    assert "peftlab_protein.ESM2Backbone" in out or "ESM2Backbone" in out
    assert "MedMNISTDataModule" in out and "FSDDDataModule" in out


def test_short_class_names_work_on_the_command_line(tmp_path):
    main(["fit", *PROTEIN, "--model.backbone=ESM2Backbone", "--model.backbone.init_args.num_layers=2",
          "--model.backbone.init_args.embed_dim=32", "--model.backbone.init_args.attention_heads=4",
          "--data=SyntheticMotifDataModule", "--data.init_args.num_sequences=40", "--model.method=LoRA",
          "--trainer.fast_dev_run=1", f"--trainer.default_root_dir={tmp_path}"])


# ---- noise ----------------------------------------------------------------------------------------------

NOISE = ("💡 Tip", "GPU available:", "TPU available:", "LeafSpec", "tensorboardX", "No seed found",
         "Loading `train_dataloader`", "smaller than the logging interval", "does not have many workers")


def test_a_run_prints_no_library_noise(tmp_path):
    script = Path(sys.executable).with_name("peftlab")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "peftlab.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([*command, "fit", *PROTEIN, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                          f"--run_dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, capture_output=True, text=True)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert [n for n in NOISE if n in text] == []
    assert "peftlab: fit done after 2 step(s); selected checkpoints/last.ckpt" in text
