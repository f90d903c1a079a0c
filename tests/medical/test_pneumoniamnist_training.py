"""Train on the real PneumoniaMNIST (a small random-init ViT, a few steps) and
test on its whole test split: split sizes, and AUROC computed on the test split."""

from __future__ import annotations

import lightning as L

from peftlab import PeftModule, build_method
from peftlab_medical import TimmBackbone
from peftlab_medical.data import MedMNISTDataModule
from peftlab_medical.metrics import benchmark_metric


def test_lora_vit_on_real_pneumoniamnist_reports_test_auroc(data_root, tmp_path):
    data = MedMNISTDataModule(path=str(data_root / "pneumoniamnist" / "pneumoniamnist.npz"), batch_size=64)
    assert data.task_type == "binary" and data.num_outputs == 1
    assert data.split_sizes() == {"train": 3882, "val": 524, "test": 624}

    L.seed_everything(0)
    backbone = TimmBackbone(name="vit_tiny_patch16_224", img_size=28, patch_size=4, depth=2, in_chans=1)
    module = PeftModule(backbone, build_method("lora", r=4), task_type=data.task_type,
                        num_outputs=data.num_outputs, pooling="cls", lr=3e-3)
    trainer = L.Trainer(max_steps=5, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    results = trainer.test(module, datamodule=data, verbose=False)[0]
    assert {"test/auroc", "test/accuracy", "test/balanced_accuracy", "test/f1"} <= set(results)
    assert 0.0 <= results[benchmark_metric("pneumoniamnist")] <= 1.0
    assert trainer.test_loop.max_batches == [-(-624 // 64)]  # every test image, once
