"""Train on the real FSDD (a small random-init encoder, a few steps) for both
tasks and test on the official test takes: split sizes, and accuracy on the test split."""

from __future__ import annotations

import lightning as L
import pytest

from peftlab import PeftModule, build_method
from peftlab_speech import TorchaudioEncoder
from peftlab_speech.data import FSDDDataModule
from peftlab_speech.metrics import benchmark_metric


@pytest.mark.parametrize("task,classes", [("digit", 10), ("speaker", 6)])
def test_lora_encoder_on_real_fsdd_reports_test_accuracy(task, classes, data_root, tmp_path):
    data = FSDDDataModule(path=str(data_root / "fsdd"), task=task, batch_size=50, seed=0)
    sizes = data.split_sizes()
    assert sizes["train"] + sizes["val"] == 2700 and sizes["test"] == 300
    assert data.num_outputs == classes

    L.seed_everything(0)
    encoder = TorchaudioEncoder("hubert_base", num_layers=2, embed_dim=64, num_heads=4, ff_dim=128, conv_channels=32)
    module = PeftModule(encoder, build_method("lora", r=4), task_type=data.task_type,
                        num_outputs=data.num_outputs, label_names=data.label_names, lr=3e-3)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    results = trainer.test(module, datamodule=data, verbose=False)[0]
    assert 0.0 <= results[benchmark_metric(f"fsdd_{task}")] <= 1.0
    assert {"test/balanced_accuracy", "test/f1", "test/auroc"} <= set(results)
    assert len([k for k in results if k.startswith("test/auroc_per_class/")]) == classes
    assert trainer.test_loop.max_batches == [300 // 50]  # every test recording, once
