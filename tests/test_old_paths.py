"""Files written before the restructuring still work: adapters whose
adapter_config.json names the old modules (``peftlab_protein.backbones.ESM2Backbone``,
``peftlab.methods.peft_methods.LoRA`` ...) load and give the outputs they gave
then, and YAML configs with the old class paths still parse and run.

The fixtures in tests/fixtures/pre_restructure/ were written by
tests/fixtures/pre_restructure/make_fixtures.py with the code before the move
(commit 4122827): the adapter, a batch, and the model's outputs on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peftlab.checkpoint import load_adapter
from peftlab.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "pre_restructure"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
OLD_PATHS = {"esm2_lora": ("peftlab_protein.backbones.ESM2Backbone", "peftlab.methods.peft_methods.LoRA"),
             "vit_bitfit": ("peftlab_medical.backbones.TimmBackbone", "peftlab.methods.simple.BitFit"),
             "hubert_adapter": ("peftlab_speech.backbones.TorchaudioEncoder", "peftlab.methods.adapters.Adapter")}


@pytest.mark.parametrize("name", sorted(OLD_PATHS))
def test_an_adapter_written_with_the_old_module_paths_loads_and_gives_the_same_outputs(name):
    folder = FIXTURES / name
    config = json.loads((folder / "adapter_config.json").read_text())
    backbone_path, method_path = OLD_PATHS[name]
    assert config["backbone"]["class_path"] == backbone_path == config["backbone_identity"]["class_path"]
    assert config["method"]["class_path"] == method_path  # the files really are in the old form
    module = load_adapter(folder)
    batch = {**load_file(folder / "batch.safetensors"), "ids": ["a", "b", "c"][: 2 if name != "esm2_lora" else 3]}
    with torch.no_grad():
        outputs = module(batch).float()
    assert torch.allclose(outputs, load_file(folder / "expected_outputs.safetensors")["outputs"], atol=1e-6)


def test_a_config_with_the_old_module_paths_still_runs(tmp_path):
    config = tmp_path / "old.yaml"
    config.write_text("""
model:
  backbone:
    class_path: peftlab_protein.backbones.ESM2Backbone
    init_args: {num_layers: 2, embed_dim: 32, attention_heads: 4}
  method:
    class_path: peftlab.methods.peft_methods.LoRA
    init_args: {r: 2}
data:
  class_path: peftlab_protein.synthetic.SyntheticMotifDataModule
  init_args: {num_sequences: 40, batch_size: 4}
""")
    main(["fit", "--config", str(config), "--trainer.fast_dev_run=1", "--trainer.accelerator=cpu",
          f"--trainer.default_root_dir={tmp_path}"])
    for data_path in ("peftlab_medical.data.MedMNISTDataModule", "peftlab_speech.data.FSDDDataModule",
                      "peftlab_protein.data.ProteinDataModule"):
        with pytest.raises(SystemExit) as exit_:
            main(["fit", "--data.help", data_path])
        assert exit_.value.code == 0
